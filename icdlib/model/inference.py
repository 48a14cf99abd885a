"""Where and in which precision a coder runs, and scoring notes with it: what training and
`predict` share.

Why this module exists: coding new notes needs a device, a dtype and the scoring loop, not the
training loop, its optimiser or its data pipeline; keeping these here lets `icdlib.predict` run
without importing `icdlib.model.train`. Under torchrun `score` splits the notes over the ranks and
gathers the whole matrix on every rank.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from icdlib.run.config import Config
from icdlib.model.encoding import PLAIN, SegmentFormat, Tokenized, collate
from icdlib.run.errors import IcdlibError


@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise IcdlibError("device=cuda but no CUDA GPU is visible (try device=auto)")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise IcdlibError("device=mps but MPS is not available (try device=auto)")
    return torch.device(choice)


def compute_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA GPUs that have it (A100, H100, RTX 30xx+), fp16 with loss scaling on
    those that do not (V100, T4), fp32 on CPU and MPS. bf16 asked for on a GPU without it is refused."""
    # without including_emulation=False a V100 or T4 answers True (bf16 emulated, slowly)
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if cfg.precision == "bf16" and device.type == "cuda" and not cuda_bf16:
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        raise IcdlibError(f"precision=bf16 but the CUDA device {device} ({name}) has no bf16 support: "
                          f"use precision=fp16 (loss-scaled) or precision=fp32")
    if cfg.precision != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bf16 else torch.float16
    return torch.float32


def weights_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """Frozen backbone weights in the compute dtype; a fully trained backbone keeps fp32 masters."""
    return torch.float32 if cfg.train_backbone == "full" else compute_dtype(cfg, device)


def predict_dtype(cfg, device) -> torch.dtype:
    """The weights' dtype for coding notes: the training dtype on accelerators; on a CPU, bf16 for
    real backbones (an 8B model in fp32 needs ~30 GB of RAM) where the CPU computes bf16, fp32 for
    tiny ones."""
    if device.type == "cpu" and cfg.model_path and _cpu_bf16():
        return torch.bfloat16
    return weights_dtype(cfg, device)


def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_sharded(model) -> bool:
    """Sharded with torch's FSDP (`distributed.shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@torch.no_grad()
def score(coder, tokens: Tokenized, cfg: Config, env: Env, pad_id: int, batch_size: int | None = None,
          progress: bool = False, fmt: SegmentFormat = PLAIN) -> np.ndarray:
    """Sigmoid scores (n_notes, n_labels) for every note; under torchrun each rank scores its
    share (note i on rank i % world) and all ranks receive the whole matrix (a model sharded with
    FSDP takes part in every rank's forward passes: the ranks run equally many)."""
    from tqdm import tqdm  # not tqdm.auto: without ipywidgets it warns in every notebook

    model = coder.module if hasattr(coder, "module") else coder
    was_training = model.training
    model.eval()
    n, bs = len(tokens), batch_size or cfg.batch_size * 2
    mine = np.arange(env.rank, n, env.world)
    mine = mine[np.argsort(tokens.lengths()[mine], kind="stable")]
    dtype = compute_dtype(cfg, env.device)
    # a sharded model's forward pass is collective: every rank runs as many as the busiest one,
    # the idle ones on note 0, whose scores they drop
    most = math.ceil(n / env.world) if is_sharded(model) else len(mine)
    rounds = math.ceil(most / bs)
    rows, parts = [], []
    for start in tqdm(range(0, rounds * bs, bs), desc="scoring", disable=not progress, leave=False):
        idx = mine[start:start + bs]
        run = idx if len(idx) else np.zeros(1, np.int64)
        batch = collate([(tokens.note(i), np.zeros(0, np.float32), i) for i in run], cfg.segment_length, pad_id,
                        fmt=fmt)
        with autocast(env.device, dtype):
            logits = model(batch["input_ids"].to(env.device), batch["attention_mask"].to(env.device))
        if len(idx):
            parts.append(torch.sigmoid(logits.float()).cpu().numpy())
            rows.append(idx)
    n_labels = model.n_labels
    local_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    local = np.concatenate(parts) if parts else np.zeros((0, n_labels), np.float32)
    if env.world > 1:
        gathered = [None] * env.world
        dist.all_gather_object(gathered, (local_rows, local))
        local_rows = np.concatenate([r for r, _ in gathered])
        local = np.concatenate([s for _, s in gathered])
        if not np.array_equal(np.sort(local_rows), np.arange(n)):
            raise RuntimeError("distributed scoring did not cover every note exactly once")
    out = np.zeros((n, n_labels), np.float32)
    out[local_rows] = local
    model.train(was_training)
    return out
