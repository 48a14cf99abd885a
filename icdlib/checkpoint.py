"""Model folders: what a trained coder is on disk, and how it comes back.

A model folder holds only what training changed, in Hugging Face formats, plus what is needed
to rebuild the rest:

    icdlib.json          backbone reference (hub name or path), head, segmenting, label codes, config
    adapter/             the peft LoRA adapter (train_backbone: lora)
    backbone/            the whole backbone + tokenizer (train_backbone: full)
    head.safetensors     the label head
    trainer_state.pt     optimizer, scheduler, step, RNG states (checkpoints only, for resume)

Folders are written under a temporary name and renamed, so a killed run never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from icdlib import backbones
from icdlib.config import Config
from icdlib.errors import IcdlibError
from icdlib.models import ICDCoder
from icdlib.runfolder import atomic_path

MANIFEST = "icdlib.json"


def _unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "encoder") else model


def save(folder: Path, coder: ICDCoder, cfg: Config, labels: pd.DataFrame, backbone_path: str,
         tokenizer, trainer_state: dict | None = None) -> Path:
    """Write a model folder (see the module docstring); `labels` is the label table of step 01."""
    coder = _unwrap(coder)
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        if cfg.train_backbone == "lora":
            coder.encoder.save_pretrained(tmp / "adapter")
        elif cfg.train_backbone == "full":
            coder.encoder.save_pretrained(tmp / "backbone", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "backbone")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in coder.head.state_dict().items()},
                  tmp / "head.safetensors")
        manifest = {"backbone": _portable(backbone_path, folder), "labels": labels["code"].tolist(),
                    "kinds": labels["kind"].tolist(), "titles": labels["short_title"].tolist(),
                    "config": cfg.to_dict()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    return folder


def _portable(path: str, folder: Path) -> str:
    """A local backbone path relative to the model folder (run folders can move); hub names as is."""
    p = Path(path)
    if p.exists():
        return os.path.relpath(p.resolve(), folder.resolve())
    return str(path)


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise IcdlibError(f"{folder} is not an icdlib model folder (no {MANIFEST})")
    manifest = json.loads((folder / MANIFEST).read_text())
    for part, needed in (("head.safetensors", True),
                         ("adapter", manifest["config"]["train_backbone"] == "lora"),
                         ("backbone", manifest["config"]["train_backbone"] == "full")):
        if needed and not (folder / part).exists():
            raise IcdlibError(f"model folder {folder} lacks {part}")
    return manifest


def backbone_location(folder: Path, manifest: dict) -> str:
    ref = manifest["backbone"]
    local = (Path(folder) / ref)
    return str(local.resolve()) if local.exists() else ref


def load(folder: Path, dtype: torch.dtype = torch.float32, trainable: bool = False,
         expect_labels: list[str] | None = None):
    """(coder, tokenizer, manifest, config) rebuilt from a model folder."""
    from peft import PeftModel

    folder = Path(folder)
    manifest = read_manifest(folder)
    labels = manifest["labels"]
    if expect_labels is not None and list(expect_labels) != labels:
        raise IcdlibError(
            f"checkpoint {folder} was trained on another label space ({len(labels)} labels, "
            f"this run has {len(expect_labels)}): use a new run folder or the same preprocessing"
        )
    cfg = Config(**{k: v for k, v in manifest["config"].items()})
    if cfg.train_backbone == "full":
        encoder, tokenizer = backbones.load(folder / "backbone", dtype)
        encoder.requires_grad_(trainable)
    else:
        encoder, tokenizer = backbones.load(backbone_location(folder, manifest), dtype)
        encoder.requires_grad_(False)
        if cfg.train_backbone == "lora":
            encoder = PeftModel.from_pretrained(encoder, str(folder / "adapter"), is_trainable=trainable)
    coder = ICDCoder(encoder, len(labels), cfg.head, cfg.attention_dim)
    coder.head.load_state_dict(load_file(folder / "head.safetensors"))
    return coder, tokenizer, manifest, cfg


def load_trainer_state(folder: Path) -> dict:
    return torch.load(Path(folder) / "trainer_state.pt", weights_only=False)

