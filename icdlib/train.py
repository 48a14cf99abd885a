"""Step 03: fine-tune an LLM2Vec coder; one loop for CPU, one GPU, many GPUs (torchrun) and MPS.

Read top to bottom: `prepare` builds the data and the model, `fit` runs the loop
(accumulate → clip → step → schedule; validate every `eval_every` steps over the whole
validation set; `last/` every `save_every` steps and at epoch end, `best/` by `metric`; early
stopping), then scores val and test with the best checkpoint for step 04. Under torchrun every
rank trains on its own batches and scores its share of the validation set; rank 0 gathers,
logs and writes. `resume: true` continues from `last/` exactly where it stopped.
"""

from __future__ import annotations

import functools
import math
import os
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from icdlib import backbones, checkpoint, metrics, preprocess
from icdlib.config import Config
from icdlib.data import PLAIN, LengthBucketSampler, NotesDataset, SegmentFormat, Tokenized, collate, tokenize_cached
from icdlib.errors import IcdlibError
from icdlib.models import ICDCoder, loss_fn
from icdlib.runfolder import atomic_write_text

STEP = "03_train"


class TrainingError(IcdlibError):
    """Training stopped for a reason the user must act on (NaN loss, out of memory)."""


# ---------------------------------------------------------------- devices and processes

@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup(cfg: Config) -> Env:
    """Device (cuda → mps → cpu unless forced) and, under torchrun, the process group."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return Env(device, dist.get_rank(), dist.get_world_size())
    env = Env(pick_device(cfg.device))
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return env


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


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(coder: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """Loss scaling for fp16, where BCE averaged over thousands of labels gives the encoder
    gradients below fp16's smallest number (they become exactly 0 and only the head would learn).
    For bf16 and fp32 the scaler is disabled and every call on it is a no-op, so the loop has one path."""
    enabled = dtype == torch.float16
    if enabled:
        for p in coder.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()  # the scaler unscales fp32 gradients only: fp32 master weights
    return torch.amp.GradScaler(device.type, enabled=enabled)


# ---------------------------------------------------------------- data and model

@dataclass
class Prepared:
    cfg: Config
    notes: pd.DataFrame
    labels: pd.DataFrame
    label_codes: list[str]
    tokens: dict[str, Tokenized]
    backbone: dict  # checkpoint.backbone_record: where the backbone is, its fingerprint, input format
    tokenizer: object
    coder: ICDCoder
    fmt: SegmentFormat


def backbone_path(cfg: Config, train_texts: list[str]) -> str:
    if cfg.model_path:
        return cfg.model_path
    return str(backbones.make_tiny(cfg, train_texts, cfg.run_dir / STEP / "backbone"))


def max_note_tokens(cfg: Config, fmt: SegmentFormat) -> int:
    """Note tokens kept (the head of the note): every segment's body, max_segments times."""
    return fmt.body(cfg.segment_length) * cfg.max_segments


def prepare(cfg: Config, env: Env | None = None) -> Prepared:
    """Read step 01, build (or load) the backbone and tokenizer, tokenise every split once."""
    env = env or Env(pick_device(cfg.device))
    pre = preprocess.load(cfg.run_dir)
    notes, label_codes = pre.notes, pre.labels["code"].tolist()
    torch.manual_seed(cfg.seed)
    path = backbone_path(cfg, notes.loc[notes["split"] == "train", "text"].tolist())
    encoder, tokenizer = backbones.load(path, weights_dtype(cfg, env.device), base_model_path=cfg.base_model_path,
                                        device=env.device, load_in=cfg.load_in)
    fmt = backbones.segment_format(cfg, tokenizer, encoder.config._name_or_path)
    record = checkpoint.backbone_record(path, cfg.base_model_path, encoder, fmt)
    encoder = backbones.make_trainable(encoder, cfg, cfg.adapter_path)
    torch.manual_seed(cfg.seed)
    coder = ICDCoder(encoder, len(label_codes), cfg.head, cfg.attention_dim)
    train_share = pre.labels["n_train"].to_numpy() / max(1, int((notes["split"] == "train").sum()))
    coder.init_bias(torch.as_tensor(train_share, dtype=torch.float32))
    max_tokens = max_note_tokens(cfg, fmt)
    cache = cfg.run_dir / STEP / "tokens"
    tokens = {s: tokenize_cached(notes.loc[notes["split"] == s, "text"].tolist(), tokenizer, max_tokens, cache, s)
              for s in ("train", "val", "test")}
    return Prepared(cfg, notes, pre.labels, label_codes, tokens, record, tokenizer, coder, fmt)


def split_dataset(prep: Prepared, split: str) -> NotesDataset:
    codes = prep.notes.loc[prep.notes["split"] == split, "codes"].tolist()
    return NotesDataset(prep.tokens[split], codes, prep.label_codes)


def loader(prep: Prepared, split: str, sampler, cfg: Config):
    pad = prep.tokenizer.pad_token_id
    # its own generator: a loader draws a seed from the global RNG on every new epoch otherwise,
    # which would shift the dropout masks of a resumed run
    return torch.utils.data.DataLoader(
        split_dataset(prep, split), batch_sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=functools.partial(collate, segment_length=cfg.segment_length, pad_id=pad, fmt=prep.fmt),
        generator=torch.Generator().manual_seed(cfg.seed))


# ---------------------------------------------------------------- optimisation

def optimizer_for(coder: ICDCoder, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; the head learns at head_lr, the backbone (LoRA or full) at lr; no decay on norms and biases."""
    groups = {}
    for name, p in coder.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.head_lr if name.startswith("head.") else cfg.lr
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def schedule(step: int, warmup: int, total: int, kind: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine or linear decay to zero."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def total_steps(cfg: Config, batches_per_epoch: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- scoring

@torch.no_grad()
def score(coder, tokens: Tokenized, cfg: Config, env: Env, pad_id: int, batch_size: int | None = None,
          progress: bool = False, fmt: SegmentFormat = PLAIN) -> np.ndarray:
    """Sigmoid scores (n_notes, n_labels) for every note; under torchrun each rank scores its
    share (note i on rank i % world) and all ranks receive the whole matrix."""
    from tqdm.auto import tqdm

    model = coder.module if hasattr(coder, "module") else coder
    was_training = model.training
    model.eval()
    n, bs = len(tokens), batch_size or cfg.batch_size * 2
    mine = np.arange(env.rank, n, env.world)
    mine = mine[np.argsort(tokens.lengths()[mine], kind="stable")]
    dtype = compute_dtype(cfg, env.device)
    rows, parts = [], []
    for start in tqdm(range(0, len(mine), bs), desc="scoring", disable=not progress, leave=False):
        idx = mine[start:start + bs]
        batch = collate([(tokens.note(i), np.zeros(0, np.float32), i) for i in idx], cfg.segment_length, pad_id, fmt=fmt)
        with autocast(env.device, dtype):
            logits = model(batch["input_ids"].to(env.device), batch["attention_mask"].to(env.device))
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


# ---------------------------------------------------------------- the loop

def fit(cfg: Config, prep: Prepared | None = None, progress: bool = True) -> pd.DataFrame:
    """Train, keep `best/` and `last/`, write history.csv and the best model's predictions."""
    from tqdm.auto import tqdm

    env = setup(cfg)
    prep = prep or prepare(cfg, env)
    out = cfg.run_dir / STEP
    last, best = out / "last", out / "best"
    pad_id = prep.tokenizer.pad_token_id
    coder = prep.coder
    state = None
    if cfg.resume and (last / "trainer_state.pt").is_file():
        checkpoint.load_into(coder, last, cfg, expect_labels=prep.label_codes)  # in place: one backbone
        state = checkpoint.load_trainer_state(last)
    coder.to(env.device)
    dtype = compute_dtype(cfg, env.device)
    scaler = grad_scaler(coder, env.device, dtype)  # before DDP, which must see the final parameter dtypes
    if cfg.grad_checkpointing:
        base = coder.encoder.get_base_model() if hasattr(coder.encoder, "get_base_model") else coder.encoder
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = coder
    if env.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(coder, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    sampler = LengthBucketSampler(prep.tokens["train"].lengths(), cfg.batch_size, cfg.seed, rank=env.rank, world=env.world)
    train_loader = loader(prep, "train", sampler, cfg)
    n_batches = len(sampler)
    steps = total_steps(cfg, n_batches)
    optimizer = optimizer_for(coder, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, cfg.warmup_steps, steps, cfg.schedule))
    y_val = split_dataset(prep, "val").targets

    step, epoch, skip, best_value, stale, history = 0, 0, 0, -math.inf, 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        best_value, stale, history = state["best_value"], state["stale"], state["history"]
        set_rng_state(state["rng"])
        if state.get("scaler"):  # empty when saved by a disabled scaler (bf16, fp32)
            scaler.load_state_dict(state["scaler"])

    def save_last(batch_in_epoch: int) -> None:
        if env.master:
            trainer_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                             "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_value": best_value, "stale": stale,
                             "history": history, "rng": rng_state(), "scaler": scaler.state_dict()}
            checkpoint.save(last, coder, cfg, prep.labels, prep.backbone, prep.tokenizer, trainer_state)

    bar = tqdm(total=steps, initial=step, desc="train", disable=not (progress and env.master))
    model.train()
    done = step >= steps
    t0, tokens_seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
    while not done:
        sampler.set_epoch(epoch)
        micro = 0
        for b, batch in enumerate(train_loader):
            if b < skip:
                continue
            sync = (micro + 1) % cfg.grad_accum == 0 or b == n_batches - 1
            ctx = model.no_sync() if env.world > 1 and not sync else nullcontext()
            with ctx:
                try:
                    with autocast(env.device, dtype):
                        logits = model(batch["input_ids"].to(env.device), batch["attention_mask"].to(env.device))
                    loss = loss_fn(logits, batch["targets"].to(env.device), cfg.pos_weight)
                    scaler.scale(loss / cfg.grad_accum).backward()
                except torch.cuda.OutOfMemoryError:
                    raise TrainingError(
                        f"GPU out of memory at step {step} (batch_size={cfg.batch_size}, max_segments={cfg.max_segments}, "
                        f"segment_length={cfg.segment_length}): lower batch_size and raise grad_accum, lower "
                        f"max_segments, or set grad_checkpointing=true") from None
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at step {step}: stopped; the last good checkpoint "
                                    f"is {last if last.exists() else 'not written yet'} (lower lr or use precision=fp32)")
            micro += 1
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            tokens_seen += int(batch["attention_mask"].sum())
            if not sync:
                continue
            if cfg.clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_([p for p in coder.parameters() if p.requires_grad], cfg.clip)
            scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            tok_s=f"{tokens_seen * env.world / max(elapsed, 1e-9):.0f}")
            if step % cfg.eval_every == 0 or step >= steps:
                val = score(model, prep.tokens["val"], cfg, env, pad_id, fmt=prep.fmt)
                row = {"step": step, "epoch": epoch + (b + 1) / n_batches, "train_loss": loss_sum / loss_n,
                       "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_seen * env.world / max(elapsed, 1e-9),
                       **{f"val_{k}": v for k, v in metrics.compute(y_val, val, cfg.threshold).items()
                          if k not in ("n_docs", "n_labels", "threshold")}}
                history.append(row)
                loss_sum, loss_n = 0.0, 0
                value = row[f"val_{cfg.metric}"]
                improved = not math.isnan(value) and value > best_value
                if improved:
                    best_value, stale = value, 0
                    if env.master:
                        checkpoint.save(best, coder, cfg, prep.labels, prep.backbone, prep.tokenizer)
                else:
                    stale += 1
                if env.master:
                    write_history(out, history)
                if cfg.patience and stale >= cfg.patience:
                    done = True
            if step % cfg.save_every == 0:
                save_last(b + 1)
            if done or step >= steps:
                done = True
                break
        else:
            epoch, skip = epoch + 1, 0
            save_last(0)
            continue
        save_last(b + 1)
    bar.close()
    if env.master and not best.exists():
        checkpoint.save(best, coder, cfg, prep.labels, prep.backbone, prep.tokenizer)
    if env.world > 1:
        dist.barrier()
    del optimizer, scheduler, model  # only the coder stays: best/ goes into it in place
    write_predictions(cfg, prep, env, best, coder)
    return pd.DataFrame(history)


def write_history(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))


def write_predictions(cfg: Config, prep: Prepared, env: Env, best: Path, coder: ICDCoder) -> None:
    """Scores of the best checkpoint on val and test: `predictions_<split>.npz` (hadm_id, scores).

    `best/`'s weights are loaded into the live `coder` (the one that trained): a second backbone
    would cost its whole size again on the GPU (16 GB for an 8B model in bf16).
    """
    checkpoint.load_into(coder, best, cfg, expect_labels=prep.label_codes)
    for split in ("val", "test"):
        scores = score(coder, prep.tokens[split], cfg, env, prep.tokenizer.pad_token_id, fmt=prep.fmt)
        if env.master:
            hadm = prep.notes.loc[prep.notes["split"] == split, "hadm_id"].to_numpy()
            path = cfg.run_dir / STEP / f"predictions_{split}.npz"
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, hadm_id=hadm, scores=scores)
            tmp.replace(path)


def load_history(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / STEP / "history.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def run(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """Train in this process, or in `cfg.nproc` torchrun processes when nproc > 1."""
    return fit(cfg, progress=progress) if cfg.nproc <= 1 else launch(cfg, cfg.nproc)


def launch(cfg: Config, nproc: int) -> pd.DataFrame:
    """Multi-process training from a notebook: torchrun in a subprocess, logs streamed, check=True.

    The run folder goes as an absolute `--run-dir` (`train --run-dir` trains in the folder it is
    given), so the workers neither depend on their working directory nor on where config.json
    was first written. (`--run` would not do: torchrun rejects it as an abbreviation of its own
    `--run-path`.)"""
    run_dir = cfg.run_dir.absolute()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "icdlib", "train", "--run-dir", str(run_dir)]
    subprocess.run(cmd, check=True)
    return load_history(run_dir)
