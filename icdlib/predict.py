"""Coding new notes with a trained model folder (`03_train/best/`).

    coder = icdlib.predict.load("outputs/tiny/03_train/best")
    coder.predict(["Discharge Diagnosis: CHF, afib ..."], top_k=15)[0]   # code, kind, title, score

The text goes through the preprocessing of training (same cleaning, tokenizer, segmenting);
batched, on the GPU when there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icdlib import checkpoint
from icdlib.data import tokenize
from icdlib.errors import IcdlibError
from icdlib.preprocess import clean_caml
from icdlib.train import Env, pick_device, score, weights_dtype


class Coder:
    """A loaded model: `predict(texts)` returns one DataFrame of codes per text, best first."""

    def __init__(self, model_dir: Path, device: str = "auto", batch_size: int = 8, model_path: str = "",
                 base_model_path: str = ""):
        self.env = Env(pick_device(device))
        probe = checkpoint.read_manifest(model_dir)
        self.cfg = checkpoint.Config(**{k: v for k, v in probe["config"].items() if k in checkpoint.Config.__dataclass_fields__})
        self.model, self.tokenizer, manifest, _ = checkpoint.load(
            model_dir, predict_dtype(self.cfg, self.env.device), model_path=_absolute(model_path),
            base_model_path=_absolute(base_model_path), device=self.env.device)
        self.model.to(self.env.device).eval()
        self.fmt = checkpoint.input_format(manifest)
        self.labels = pd.DataFrame({"code": manifest["labels"], "kind": manifest["kinds"], "title": manifest["titles"]})
        self.batch_size = batch_size

    def scores(self, texts: list[str]) -> np.ndarray:
        """(n_texts, n_labels) probabilities."""
        texts = [_checked(t, i) for i, t in enumerate(texts)]
        if self.cfg.text_cleaning == "caml":
            texts = [clean_caml(t) for t in texts]
        tokens = tokenize(texts, self.tokenizer, self.fmt.body(self.cfg.segment_length) * self.cfg.max_segments)
        return score(self.model, tokens, self.cfg, self.env, self.tokenizer.pad_token_id, self.batch_size, fmt=self.fmt)

    def predict(self, texts: list[str] | str, top_k: int | None = None, threshold: float | None = None) -> list[pd.DataFrame]:
        """Per text: code, kind, title, score sorted by score; cut to top_k and/or score >= threshold."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for row in self.scores(list(texts)):
            table = self.labels.assign(score=row).sort_values("score", ascending=False, kind="stable")
            if threshold is not None:
                table = table[table["score"] >= threshold]
            if top_k is not None:
                table = table.head(top_k)
            out.append(table.reset_index(drop=True))
        return out


def predict_dtype(cfg, device) -> torch.dtype:
    """The training dtype on accelerators; on a CPU, bf16 for real backbones (an 8B model in fp32
    needs ~30 GB of RAM) where the CPU computes bf16, fp32 for tiny ones."""
    if device.type == "cpu" and cfg.model_path and cfg.train_backbone != "full" and _cpu_bf16():
        return torch.bfloat16
    return weights_dtype(cfg, device)


def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _absolute(path: str) -> str:
    """A local folder given relative to the caller's working directory, made absolute; hub names as is."""
    from icdlib.backbones import is_local

    return str(Path(path).expanduser().resolve()) if path and is_local(path) else path


def _checked(text, i: int) -> str:
    if not isinstance(text, str):
        raise IcdlibError(f"text {i} is a {type(text).__name__}, expected str")
    if not text.strip():
        raise IcdlibError(f"text {i} is empty: nothing to code")
    return text


def read_text_file(path: Path) -> str:
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise IcdlibError(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise IcdlibError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def load(model_dir: str | Path, device: str = "auto", batch_size: int = 8, model_path: str = "",
         base_model_path: str = "") -> Coder:
    """A model folder ready to code notes; `model_path` / `base_model_path` say where its backbone is
    when the run folder moved away from it (local folders or hub names)."""
    return Coder(Path(model_dir), device, batch_size, model_path, base_model_path)
