"""Step 03: fine-tune an LLM2Vec coder; one loop for CPU, one GPU, many GPUs (torchrun) and MPS.

Read top to bottom: `prepare` builds the data and the model, `fit` runs the loop
(accumulate → clip → step → schedule; validate every `eval_every` steps over the whole
validation set; `last/` every `save_every` steps and at epoch end, `best/` by `metric`; early
stopping), then scores val and test with the best checkpoint for step 04. Under torchrun every
rank trains on its own batches and scores its share of the validation set; rank 0 gathers,
logs and writes. LoRA and frozen backbones are replicated (DDP); a whole backbone that trains is
sharded (FSDP: `distributed.shard`), and its checkpoints are whole model folders all the same.
`resume: true` continues from `last/` exactly where it stopped, on any number of processes.
How ranks start, agree on failures and stop together: `icdlib.model.distributed`.

The step is `fit` (or `run`, which launches torchrun when nproc > 1): it holds the run folder's
lock, checks step 01's manifest, writes the predictions only after the checkpoints (each
prediction file names the `best/` it came from) and `03_train/manifest.json` last. Devices,
dtypes and scoring live in `icdlib.model.inference`, which `predict` uses without this module.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from icdlib.model import backbone_files, backbones, checkpoint, distributed, memory_plan, mntp
from icdlib.run import config, provenance, record
from icdlib.measure import metrics
from icdlib.data import preprocess
from icdlib.run.config import Config
from icdlib.model.encoding import (LengthBucketSampler, NotesDataset, SegmentFormat, Tokenized, collate, tokenize_cached,
                         truncation_stats)
from icdlib.run.errors import IcdlibError
from icdlib.model.inference import Env, autocast, compute_dtype, is_sharded, pick_device, score, weights_dtype
from icdlib.model.models import ICDCoder, adapters_take_input_as_is, checkpoint_activations, loss_fn
from icdlib.run.progress import Heartbeat, duration, seconds_left
from icdlib.run.runfolder import (MNTP_ARMS, SCORED_SPLITS, Run, atomic_path, atomic_write_text, lock, read_key, seed_variant,
                              tree_hash)

STEP = "03_train"
# what step 03's output depends on, recorded in its manifest (data parameters: step 01's)
PARAMS = ("backbone", "seed", "base_model_path", "model_path", "model_type", "adapter_path", "load_in", "segment_bos",
          "instruction", "tiny_layers", "tiny_hidden", "tiny_heads", "tiny_vocab", "tiny_init", "train_backbone",
          "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "head", "attention_dim", "segment_length",
          "max_segments", "truncation", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "head_lr",
          "weight_decay", "warmup_steps", "schedule", "clip", "pos_weight", "eval_every", "save_every", "patience",
          "metric", "threshold", "device", "precision", "grad_checkpointing", "num_workers", "resume", "nproc",
          "keep_effective_batch", "seeds",
          "mntp_steps", "mntp_masking", "mntp_probability", "mntp_length", "mntp_batch_size", "mntp_lr",
          "mntp_compare")


class TrainingError(IcdlibError):
    """Training stopped for a reason the user must act on (NaN loss, out of memory)."""


# ---------------------------------------------------------------- devices and processes

def setup(cfg: Config) -> Env:
    """Device (cuda → mps → cpu unless forced) and, under torchrun, the process group (`icdlib.model.distributed`)."""
    return distributed.setup(cfg.device)


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
    seed: int  # the training seed: the head's and LoRA's initial weights, the data order, dropout


def backbone_path(cfg: Config, train_texts: list[str], env: Env | None = None) -> str:
    """`model_path`; a plain decoder named by `base_model_path` alone (made bidirectional, for
    MNTP); or the run's tiny backbone (`03_train/backbone/`, rebuilt when its key changes). Under
    torchrun the master process builds the tiny backbone and the others wait for it (transformers
    writes model files from rank 0 only)."""
    if cfg.model_path or cfg.base_model_path:
        return cfg.model_path or cfg.base_model_path
    folder = Run.of(cfg).backbone
    if env is None or env.master:
        backbones.make_tiny(cfg, train_texts, folder)
    if env is not None and env.world > 1:
        dist.barrier()
    return str(folder)


def load_backbone(cfg: Config, env: Env, train: pd.DataFrame, with_mntp: bool = True,
                  progress: bool = True) -> tuple[object, object, str, str, str]:
    """(encoder, tokenizer, model path, base path, cache key) as fine-tuning starts from them:
    the backbone, after the MNTP stage when `mntp_steps > 0` (run, resumed, or reused without
    loading the backbone first; its adapter becomes the model path, on the backbone's base)."""
    from transformers import AutoConfig

    path = backbone_path(cfg, train["text"].tolist(), env)
    base = cfg.base_model_path if cfg.model_path else ""
    tiny = not (cfg.model_path or cfg.base_model_path)
    key = read_key(path) if tiny else ""  # the tiny backbone's: resume refuses a checkpoint of another one
    dtype = weights_dtype(cfg, env.device)
    adapt = with_mntp and cfg.mntp_steps > 0
    if adapt:
        found = backbone_files.locate(path, base)
        # the adapter continues McGill's on its base; a fresh one sits on the backbone itself
        on = found.given["base_model_path"] or found.given["model_path"]
        arch = key or backbones.fingerprint(AutoConfig.from_pretrained(found.base or found.model)) + on
        stage, stage_key = Run.of(cfg).mntp, mntp.key(cfg, arch, train["hadm_id"].tolist(), train["text"].tolist())
        record_key = f"{key}+mntp:{stage_key}"
        if mntp.finished(stage, stage_key):
            encoder, tokenizer = backbones.load(stage, dtype, base_model_path=on, device=env.device, load_in=cfg.load_in,
                                                attention=cfg.attention)
            return encoder, tokenizer, str(stage), on, record_key
    encoder, tokenizer = backbones.load(path, dtype, base_model_path=base, device=env.device, load_in=cfg.load_in,
                                        merge=not adapt, attention=cfg.attention)
    if not adapt:
        return encoder, tokenizer, path, base, key
    encoder = mntp.train(cfg, env, encoder, tokenizer, train["text"].tolist(), found, on, stage_key, progress)
    return encoder, tokenizer, str(stage), on, record_key


def prepare(cfg: Config, env: Env | None = None, with_mntp: bool = True, progress: bool = True,
            seed: int | None = None) -> Prepared:
    """Read step 01, build (or load) the backbone and tokenizer (through MNTP when asked),
    tokenise every split once. The backbone (and its MNTP stage) is the run's `cfg.seed`'s; the
    trainable weights made here (LoRA, head) and the fine-tuning after are the training `seed`'s
    (default `cfg.seed`; `fit` passes each of `cfg.training_seeds` in turn)."""
    seed = cfg.seed if seed is None else seed
    env = env or Env(pick_device(cfg.device))
    pre = preprocess.load(cfg.run_dir)
    notes, label_codes = pre.notes, pre.labels["code"].tolist()
    torch.manual_seed(cfg.seed)
    encoder, tokenizer, path, base, key = load_backbone(cfg, env, notes[notes["split"] == "train"], with_mntp, progress)
    config.check_positions(cfg, getattr(encoder.config, "max_position_embeddings", None))
    fmt = backbones.segment_format(cfg, tokenizer, encoder.config._name_or_path)
    where = checkpoint.backbone_record(path, base, encoder, fmt)
    if key:
        where["cache_key"] = key
    # the fine-tuning's fresh weights (LoRA, then head) from the training seed alone, whatever loading
    # the backbone drew (an MNTP stage or none): both arms of mntp_compare start from the same ones
    torch.manual_seed(seed)
    encoder = backbones.make_trainable(encoder, cfg, cfg.adapter_path)
    torch.manual_seed(seed)
    coder = ICDCoder(encoder, len(label_codes), cfg.head, cfg.attention_dim)
    train_share = pre.labels["n_train"].to_numpy() / max(1, int((notes["split"] == "train").sum()))
    coder.init_bias(torch.as_tensor(train_share, dtype=torch.float32))
    max_tokens = fmt.budget(cfg.segment_length, cfg.max_segments)  # `truncation` picks which tokens
    cache = Run.of(cfg).tokens
    with distributed.master_first(env):  # rank 0 tokenises and writes the cache; the others read it
        tokens = {s: tokenize_cached(notes.loc[notes["split"] == s, "text"].tolist(), tokenizer, max_tokens, cache, s,
                                     mode=cfg.truncation)
                  for s in ("train", "val", "test")}
    return Prepared(cfg, notes, pre.labels, label_codes, tokens, where, tokenizer, coder, fmt, seed)


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
        generator=torch.Generator().manual_seed(prep.seed))


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


def accumulation(cfg: Config, world: int) -> int:
    """Micro-batches per optimizer step on each rank: `grad_accum`, or with `keep_effective_batch`
    `grad_accum / world`, so batch_size × grad_accum notes make one step on any number of processes
    and `lr`, `warmup_steps`, `eval_every` and `save_every` keep the meaning they had on one."""
    if not cfg.keep_effective_batch or world == 1:
        return cfg.grad_accum
    if cfg.grad_accum % world:
        raise TrainingError(f"keep_effective_batch=true needs grad_accum ({cfg.grad_accum}) to be a multiple of the "
                            f"number of processes ({world}): set grad_accum to one, or keep_effective_batch=false")
    return cfg.grad_accum // world


def total_steps(cfg: Config, batches_per_epoch: int, accum: int | None = None) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, cfg.epochs * math.ceil(batches_per_epoch / (accum or cfg.grad_accum)))


def schedule_plan(cfg: Config, batches_per_epoch: int, world: int) -> dict:
    """Where a fine-tuning's schedule falls, from one rank's batches per epoch: world size,
    per-rank and effective batch, optimizer steps per epoch and in all, warm-up and its share,
    and the steps that validate and save."""
    accum = accumulation(cfg, world)
    total = total_steps(cfg, batches_per_epoch, accum)
    evals = sorted(set(range(cfg.eval_every, total + 1, cfg.eval_every)) | {total})
    return {"processes": world, "batch_per_rank": cfg.batch_size, "grad_accum": accum,
            "effective_batch": cfg.batch_size * accum * world,
            "steps_per_epoch": math.ceil(batches_per_epoch / accum), "total_steps": total,
            "warmup_steps": cfg.warmup_steps, "warmup_share": min(1.0, cfg.warmup_steps / total),
            "eval_every": cfg.eval_every, "evaluations": evals,
            "saves": list(range(cfg.save_every, total + 1, cfg.save_every))}


def schedule_warnings(plan: dict) -> list[str]:
    """One line per schedule a user would not have chosen on purpose: warm-up over more than a
    fifth of training, or fewer than two validations (best/ is then picked from one)."""
    out = []
    hint = (" (on more processes there are fewer steps: keep_effective_batch=true keeps one process's schedule)"
            if plan["processes"] > 1 else "")
    if plan["warmup_share"] > 0.2:
        out.append(f"warm-up covers {plan['warmup_share']:.0%} of training ({plan['warmup_steps']} of "
                   f"{plan['total_steps']} steps): lower warmup_steps{hint}")
    if len(plan["evaluations"]) < 2:
        out.append(f"only one validation in {plan['total_steps']} steps (eval_every={plan['eval_every']}): best/ is "
                   f"the last model, whatever patience says; lower eval_every{hint}")
    return out


def schedule_text(plan: dict) -> str:
    """The plan as one line: `2 processes × 4 notes × 2 accumulated = 16 notes per step; ...`."""
    evals, saves = plan["evaluations"], plan["saves"]
    return (f"{plan['processes']} process{'es' if plan['processes'] > 1 else ''} × {plan['batch_per_rank']} notes × "
            f"{plan['grad_accum']} accumulated = {plan['effective_batch']} notes per step; "
            f"{plan['steps_per_epoch']} steps per epoch, {plan['total_steps']} in all; warm-up {plan['warmup_steps']} "
            f"steps ({plan['warmup_share']:.0%}); {len(evals)} validation{'s' if len(evals) != 1 else ''} "
            f"(steps {', '.join(map(str, evals[:4]))}{', …' if len(evals) > 4 else ''}); "
            f"{len(saves)} save{'s' if len(saves) != 1 else ''} of last/ besides each epoch's end")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict, cfg: Config, env: Env, seed: int | None = None) -> None:
    """Every rank's random streams as they were saved; resumed on another number of processes,
    ranks other than 0 start fresh streams (seeded by rank, step and the training `seed`, default `cfg.seed`)."""
    streams = state.get("rng_ranks") or [state["rng"]]
    set_rng_state(streams[env.rank] if len(streams) == env.world else streams[0])
    if len(streams) != env.world:
        distributed.seed_rank(cfg.seed if seed is None else seed, env, salt=state["step"])


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- progress

def progress_path(run_dir: Path) -> Path:
    """`03_train/progress.jsonl`: one JSON line per evaluation of the fit running (or last run) in the
    run folder, which `pipeline.execute` tails into the terminal while the notebook runs."""
    return Run(run_dir).progress


def progress_path_of(run: Run) -> Path:
    """Where the fit of `run` (a variant or not) reports: the MNTP comparison arm in its own
    `03_train/<arm>/progress.jsonl` (the run's file keeps the model's fit and the MNTP stage), every
    other fit (the model, further seeds) in the run's `03_train/progress.jsonl`."""
    return run.progress if run.variant in MNTP_ARMS.values() else Run(run.dir).progress


def progress_paths(run_dir: Path) -> list[Path]:
    """Every progress file a 03 of the run folder writes: the run's, then each MNTP arm's."""
    return [progress_path_of(Run(run_dir, variant)) for variant in ("", *MNTP_ARMS.values())]


def progress_line(record: dict) -> str:
    """A progress record as one line: `step 40/280 loss 0.0712 val map 0.301 12.3k tok/s ETA 3m10s`
    (a heartbeat between two validations: the same without `val`; a start record: `training 280
    steps from step 0, validating every 50`)."""
    if str(record.get("event", "")).startswith("mntp"):
        return mntp.progress_text(record)
    if record.get("event") == "start":
        plan = f": {schedule_text(record['plan'])}" if record.get("plan") else ""
        return (f"training {record['total']} steps from step {record['step']}, "
                f"validating every {record['eval_every']}{plan}")
    if record.get("event") == "warning":
        return f"warning: {record['text']}"
    if record.get("event") == "title":
        return record["text"]
    tok = record.get("tokens_per_s") or 0.0
    tok = f"{tok / 1e3:.1f}k" if tok >= 1e3 else f"{tok:.0f}"
    val = ""
    if record.get("event") != "heartbeat":  # a heartbeat falls between two validations
        value = record.get("value")
        val = f"val {record['metric']} {'n/a' if value is None else f'{value:.3f}'} "
    return (f"step {record['step']}/{record['total']} loss {record['train_loss']:.4f} {val}"
            f"{tok} tok/s ETA {duration(record.get('eta_s'))}")


class Progress:
    """What `fit` says while it trains; the master process only.

    On a terminal (stderr a TTY) a tqdm bar, with a line above it at every evaluation. Anywhere
    else (a notebook, where a bar is recorded update by update into the report; a log file; a pipe)
    one line per evaluation on stdout (and, at the start, the fit's `title` when it has one — which
seed of several —, then the schedule: `schedule_plan`, with a
warning line for a schedule nobody would choose on purpose). `show=False` (`--quiet`) prints
nothing. Every evaluation is
    also appended to `progress.jsonl` as one JSON line (written whole and flushed, so a reader sees
    complete lines), started afresh by every fit, and so is a heartbeat (`icdlib.run.progress`: the step,
    loss, speed and time left, not printed) whenever `HEARTBEAT_S` passed without a record, for the
    terminal of `icdlib run`. ETA: the time per step so far, validations included.
    """

    def __init__(self, path: Path, total: int, initial: int, eval_every: int, show: bool, master: bool,
                 plan: dict | None = None, title: str = ""):
        self.path, self.total, self.initial = path, total, initial
        self.master, self.show = master, show and master
        self.t0, self.started = time.perf_counter(), time.time()
        self.bar, self.heartbeat = None, Heartbeat()
        if not master:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a new file (a new inode) for every fit: a tail restarts at its top
        if self.show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
        if title:
            self._emit({"event": "title", "text": title})
        self._emit({"event": "start", "step": initial, "total": total, "eval_every": eval_every, "plan": plan})
        for text in schedule_warnings(plan) if plan else []:
            self._emit({"event": "warning", "text": text})

    def _emit(self, record: dict, show: bool = True) -> None:
        record = {**record, "started": self.started, "time": time.time()}
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self.heartbeat.beat()
        if self.show and show:
            (self.bar.write if self.bar is not None else functools.partial(print, flush=True))(progress_line(record))

    def _timing(self, step: int) -> dict:
        elapsed = time.perf_counter() - self.t0
        return {"elapsed_s": elapsed, "eta_s": seconds_left(elapsed, step - self.initial, self.total - step)}

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        if self.master and self.heartbeat.due():
            self._emit({"event": "heartbeat", "step": step, "total": self.total, "train_loss": loss,
                        "tokens_per_s": tokens_per_s, **self._timing(step)}, show=False)

    def evaluation(self, row: dict, metric: str) -> None:
        if not self.master:
            return
        self._emit({"event": "eval", "step": row["step"], "total": self.total, "epoch": row["epoch"],
                    "train_loss": row["train_loss"], "metric": metric, "value": row.get(f"val_{metric}"),
                    "tokens_per_s": row["tokens_per_s"], **self._timing(row["step"])})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the loop

def fit(cfg: Config, prep: Prepared | None = None, progress: bool = True) -> pd.DataFrame:
    """Step 03: train (`train_loop`), keep `best/` and `last/`, write history.csv, then the best
    model's predictions, then `03_train/manifest.json`; returns the history.

    The master process holds the run folder's lock; every process first checks step 01's manifest
    (`record.step`: 01's data parameters, or one line). The old manifest is removed before the
    first checkpoint is replaced, so a 03 that does not finish leaves none. `resume=true` needs a
    checkpoint to resume from (`resume_point`), else it stops in one line instead of starting over.

    With several `seeds`, the run's model is the first seed's; each further one is fine-tuned after
    it into `03_train/seed_<s>/` (`fit_seeds`); the MNTP comparison's other arm (`mntp_compare`)
    is the first seed's only.
    """
    env = setup(cfg)
    with record.step(cfg, STEP, PARAMS, master=env.master) as step:
        cfg, run = step.cfg, step.run
        point = resume_point(run, env, cfg.mntp_steps > 0) if cfg.resume else None
        if point is not None:
            cfg, changed = resumed_config(cfg, run, point)
            step.cfg = cfg
            if changed:
                at = checkpoint.saved_step(point)  # mmap: not the optimizer state (GBs for a full backbone)
                step.extra["resumed"] = {"at_step": at, "changed": changed}
                if progress and env.master:
                    print(f"resuming at step {at} with " + ", ".join(f"{k} {was} → {now}" for k, (was, now) in
                                                                       changed.items()), flush=True)
        elif not cfg.resume and env.master:
            start_over(run)
        if prep is None and cfg.memory_check:
            check_memory(cfg, env, run)
        seeds = cfg.training_seeds
        prep = prep or prepare(cfg, env, with_mntp=cfg.mntp_compare != "with", progress=progress, seed=seeds[0])
        if point is not None:
            check_resumable(run, prep)
        step.invalidate()
        if env.master:
            write_token_stats(run, prep)
        with failures_reported(run, env):
            history = train_loop(cfg, prep, env, progress, title=seed_title(run, run, seeds, 0))
        wrote = [run.checkpoint("best"), run.history, run.tokens_json, *(run.predictions(s) for s in SCORED_SPLITS)]
        if cfg.mntp_steps > 0:
            wrote.append(run.mntp)
        prep = None  # one fine-tuned backbone in memory at a time
        wrote += fit_seeds(cfg, run, env, progress)
        if cfg.mntp_compare != "none":
            prep = None  # one fine-tuned backbone in memory at a time
            other = Run(run.dir, MNTP_ARMS[cfg.mntp_compare])
            title = f"fine-tuning again {cfg.mntp_compare} MNTP, for comparison: {run.rel(other.trained)}/"
            if progress and env.master:
                print(title, flush=True)
            arm = prepare(cfg, env, with_mntp=cfg.mntp_compare == "with", progress=progress, seed=seeds[0])
            with failures_reported(run, env):  # its lines reach the terminal only (its own progress file)
                train_loop(cfg, arm, env, False, run=other, title=title)
            wrote += [other.checkpoint("best"), other.history, *(other.predictions(s) for s in SCORED_SPLITS)]
        if env.master:
            step.extra.update({"device_used": str(env.device), "processes": env.world})
            step.wrote(*wrote)
    return history


def seed_title(run: Run, trained: Run, seeds: list[int], i: int) -> str:
    """`fine-tuning seed 1 (2 of 3): 03_train/seed_1/`, said before the `i`-th of several seeds
    trains into `trained`; "" for a run of one seed."""
    if len(seeds) < 2:
        return ""
    return f"fine-tuning seed {seeds[i]} ({i + 1} of {len(seeds)}): {run.rel(trained.trained)}/"


def fit_seeds(cfg: Config, run: Run, env: Env, progress: bool = True) -> list[Path]:
    """The further training seeds of the run (`cfg.training_seeds[1:]`), one after the other, each
    fine-tuned as the model was, from the same backbone after the same MNTP stage (trained once:
    `prepare` reuses it), into `03_train/seed_<s>/` (`runfolder.seed_variant`). Returns what they wrote.

    A seed sets what fine-tuning draws at random (`prepare`'s LoRA and head, the data order,
    dropout). With `resume`, each seed goes on from its own `last/` (recovered from a killed save
    as the model's is); one that had finished trains no further and keeps its predictions
    (`train_loop`), one never started trains from the beginning."""
    seeds, wrote = cfg.training_seeds, []
    for i, seed in enumerate(seeds[1:], 1):
        other = Run(run.dir, seed_variant(seed))
        prep = prepare(cfg, env, with_mntp=cfg.mntp_compare != "with", progress=progress, seed=seed)
        if cfg.resume:
            if env.master and not checkpoint.resumable(other.checkpoint("last")):
                checkpoint.recover(other.checkpoint("last"))
            distributed.barrier(env)
            if checkpoint.resumable(other.checkpoint("last")):
                check_resumable(other, prep)
        with failures_reported(run, env):
            train_loop(cfg, prep, env, progress, run=other, title=seed_title(run, other, seeds, i))
        prep = None
        wrote += [other.checkpoint("best"), other.history, *(other.predictions(s) for s in SCORED_SPLITS)]
    return wrote


def check_memory(cfg: Config, env: Env, run: Run, gpu_bytes: int | None = None):
    """The memory plan of this run on this GPU (`icdlib.model.memory_plan`), before anything is loaded:
    a run that will not fit stops in one line naming the settings that would (`memory_check=false`
    trains anyway). On CUDA, or wherever `gpu_bytes` is given. A backbone whose shape the plan
    cannot find is noted and trained. Returns the plan, or None."""
    if gpu_bytes is None:
        if env.device.type != "cuda":
            return None
        gpu_bytes = torch.cuda.get_device_properties(env.device).total_memory
    n_labels = len(pd.read_parquet(run.labels, columns=["code"]))
    try:
        return memory_plan.check(dataclasses.replace(cfg, nproc=env.world), env.device, gpu_bytes, n_labels)
    except memory_plan.DoesNotFit as e:
        raise memory_plan.DoesNotFit(f"{e}; memory_check=false trains anyway") from None
    except memory_plan.MemoryPlanError as e:
        if env.master:
            print(f"memory plan skipped: {e}", flush=True)
        return None


@contextmanager
def failures_reported(run: Run, env: Env):
    """A stop of every rank (`distributed.RanksStopped`) keeps its one line; rank 0 writes the
    failed ranks' tracebacks to `03_train/failure.txt` and the line says where."""
    try:
        yield
    except distributed.RanksStopped as e:
        details = getattr(e, "details", {})
        if not any(details.values()):
            raise
        if env.master:
            atomic_write_text(run.failure, "".join(f"---- rank {r}\n{text}" for r, text in details.items()))
        raise distributed.RanksStopped(f"{e} (tracebacks: {run.rel(run.failure)})") from None


def resume_point(run: Run, env: Env, mntp_stage: bool = False) -> Path | None:
    """`last/` to resume from. A kill between the two renames of `atomic_path` leaves no `last/`
    but the complete new checkpoint in `.last.tmp-<pid>`: an intact one is put back in place
    (`checkpoint.recover`). None when the fit never saved but an MNTP stage did (it resumes
    there). With neither, a TrainingError (one line) instead of starting over."""
    last = run.checkpoint("last")
    if env.master and not checkpoint.resumable(last):
        checkpoint.recover(last)
    if env.world > 1:
        dist.barrier()
    stage = run.mntp_last / "state.pt"
    if checkpoint.resumable(last):
        if mntp_stage and stage.is_file() and stage.stat().st_mtime > (last / "trainer_state.pt").stat().st_mtime:
            raise TrainingError(f"resume=true but {run.rel(last)} is older than the MNTP stage's "
                                f"{run.rel(run.mntp_last)}: remove {run.rel(last)} to resume the stage and fine-tune "
                                f"after it, or set resume=false to start over")
        return last
    if mntp_stage and stage.is_file():
        return None
    raise TrainingError(f"resume=true but {run.rel(last)} is not a checkpoint to resume from (no "
                        f"trainer_state.pt, and no intact .last.tmp-* left by a killed save): "
                        f"set resume=false to start over")


def start_over(run: Run) -> None:
    """resume=false: the `last/` folders of an earlier fit go before this one trains, so that a
    resume of this fit cannot take them for its own (killed inside a new MNTP stage, the resume
    took the older fine-tuning's `last/`), its further seeds' (`03_train/seed_<s>/`) included.
    `best/` stays until this fit replaces it."""
    import shutil

    seeds = [Run(run.dir, p.name) for p in sorted(run.step(STEP).glob(seed_variant("*"))) if p.is_dir()]
    for trained in (run, *(Run(run.dir, arm) for arm in MNTP_ARMS.values()), *seeds):
        shutil.rmtree(trained.checkpoint("last"), ignore_errors=True)


# what a resume may change: how long the run goes on and how often it looks, and which further seeds
# it trains (the first, the model's, stays) (recorded as a change)
MAY_CHANGE_ON_RESUME = ("epochs", "max_steps", "eval_every", "save_every", "patience", "seeds")


def resumed_config(cfg: Config, run: Run, last: Path) -> tuple[Config, dict]:
    """`cfg` as `last/` was trained, and what the resume changes ({key: [was, now]}).

    A training parameter the resume leaves at the params file's value takes the checkpoint's (a
    resume command without the first run's `-p` values continues that run). One asked with
    another value is refused in one line, since the optimizer, scheduler and data order restored
    from `last/` keep the old ones; except `MAY_CHANGE_ON_RESUME` (train longer, validate more
    often; more seeds after the model's, `seeds` with the same first one), which applies from the
    resumed step on, and `config.HOW_TO_RUN`."""
    trained = checkpoint.read_manifest(last)["config"]
    keys = [k for k in PARAMS if k in trained and k not in config.HOW_TO_RUN]
    fixed = {k: trained[k] for k in keys if k not in MAY_CHANGE_ON_RESUME}
    try:
        cfg = record.as_recorded(cfg, fixed, lambda was, asks: (
            f"resume=true but {run.rel(last)} was trained with {was}, this run asks {asks}: resume with the values "
            f"it was trained with, or set resume=false to start over"))
    except record.RecordError as e:
        raise TrainingError(str(e)) from None
    flexible = {k: trained[k] for k in keys if k in MAY_CHANGE_ON_RESUME}
    cfg = record.as_recorded(cfg, flexible, None)
    first = (trained.get("seeds") or [trained["seed"]])[0]
    if cfg.training_seeds[0] != first:
        raise TrainingError(f"resume=true but {run.rel(last)} is the model of training seed {first}, this run asks "
                            f"seeds={cfg.seeds} (the first is the model's): put {first} first, or set resume=false "
                            f"to start over")
    changed = {k: [v, getattr(cfg, k)] for k, v in flexible.items() if json.loads(json.dumps(getattr(cfg, k))) != v}
    return cfg, changed


def check_resumable(run: Run, prep: Prepared) -> None:
    """`last/` fits the backbone prepared now (the tiny backbone's cache key; None for real ones)."""
    last = run.checkpoint("last")
    manifest = checkpoint.read_manifest(last)
    if manifest["backbone"].get("cache_key") != prep.backbone.get("cache_key"):
        recorded = checkpoint.recorded_versions(last, manifest) or {}
        here = provenance.versions()["transformers"]
        if recorded.get("transformers") != here:
            raise TrainingError(f"resume=true but {run.rel(last)} was written with "
                                f"{checkpoint.written_with(last, manifest)}, and the tiny backbone is built anew for "
                                f"transformers {here} here: set resume=false to start over (or resume in the "
                                f"environment that wrote it)")
        raise TrainingError(f"resume=true but {run.rel(last)} was trained on another tiny backbone (its parameters "
                            f"or training notes changed since): set resume=false to start over")


def train_loop(cfg: Config, prep: Prepared, env: Env, progress: bool = True, run: Run | None = None,
               title: str = "") -> pd.DataFrame:
    """The loop (see the module docstring); then the predictions of `best/`. Returns the history.
    `run` is where it writes (default the run of `cfg`; a variant: the comparison without MNTP, a
    further seed). A `title` (one of several seeds, the MNTP arm) is said first, and the progress goes
    to `progress_path_of(run)`, which `icdlib run` follows. With
    `resume`, a `last/` that had finished (its steps done, or patience run out) trains no further,
    and predictions its `best/` already scored are kept as they are."""
    run = run or Run.of(cfg)
    last, best = run.checkpoint("last"), run.checkpoint("best")
    pad_id = prep.tokenizer.pad_token_id
    coder = prep.coder
    state = None
    if cfg.resume and (last / "trainer_state.pt").is_file():
        checkpoint.load_into(coder, last, cfg, expect_labels=prep.label_codes)  # in place: one backbone
        state = checkpoint.load_trainer_state(last)
    coder.to(env.device)
    dtype = compute_dtype(cfg, env.device)
    scaler = grad_scaler(coder, env.device, dtype)  # before DDP, which must see the final parameter dtypes
    if dtype != torch.float32:
        adapters_take_input_as_is(coder)  # every forward pass here runs under autocast
    if cfg.grad_checkpointing:
        base = coder.encoder.get_base_model() if hasattr(coder.encoder, "get_base_model") else coder.encoder
        checkpoint_activations(base)
    group = distributed.step_group(env)
    model, sharded = coder, env.world > 1 and cfg.train_backbone == "full"
    if sharded:  # each rank keeps a share of the weights, gradients and optimizer state
        if dtype == torch.float16:
            raise TrainingError("train_backbone=full on several processes (FSDP) needs precision=bf16 or fp32, "
                                "not fp16: use one process, or LoRA")
        distributed.shard(coder, dtype)
    elif env.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            coder, device_ids=[env.device.index] if env.device.type == "cuda" else None, process_group=group)
    distributed.seed_rank(prep.seed, env)  # dropout differs across ranks; the data order is one global shuffle

    sampler = LengthBucketSampler(prep.tokens["train"].lengths(), cfg.batch_size, prep.seed, rank=env.rank,
                                  world=env.world)
    train_loader = loader(prep, "train", sampler, cfg)
    n_batches = len(sampler)
    plan = schedule_plan(cfg, n_batches, env.world)
    accum, steps = plan["grad_accum"], plan["total_steps"]
    optimizer = optimizer_for(coder, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, cfg.warmup_steps, steps, cfg.schedule))
    y_val = split_dataset(prep, "val").targets

    step, epoch, skip, best_value, stale, history = 0, 0, 0, -math.inf, 0, []
    if state is not None:
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch = state["step"], state["epoch"]
        # batch_in_epoch counts one rank's batches: on another number of processes, the same notes seen
        skip = state["batch_in_epoch"] * state.get("processes", 1) // env.world
        best_value, stale, history = state["best_value"], state["stale"], state["history"]
        restore_rng(state, cfg, env, prep.seed)
        if state.get("scaler"):  # empty when saved by a disabled scaler (bf16, fp32)
            scaler.load_state_dict(state["scaler"])

    def save_last(batch_in_epoch: int) -> None:
        streams = distributed.gather(rng_state(), env)  # every rank's random streams: resume continues each
        # a whole backbone's optimizer state by parameter name: it resumes on any number of processes
        moments = (distributed.full_optimizer_state(model, optimizer) if cfg.train_backbone == "full"
                   else optimizer.state_dict())
        weights = distributed.full_weights(model) if sharded else None
        if env.master:
            trainer_state = {"optimizer": moments, "scheduler": scheduler.state_dict(), "step": step,
                             "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_value": best_value, "stale": stale,
                             "history": history, "rng": streams[0], "rng_ranks": streams, "scaler": scaler.state_dict(),
                             "processes": env.world, "tokens": tokens_before + tokens_seen * env.world,
                             "elapsed_s": elapsed_before + time.perf_counter() - t0}
            with checkpoint.full_disk_said(step, last, best):
                checkpoint.save(last, coder, cfg, prep.labels, prep.backbone, prep.tokenizer, trainer_state, weights)
        distributed.barrier(env)  # the others wait here (long timeout), not in the next step's all-reduce

    def save_best() -> None:
        weights = distributed.full_weights(model) if sharded else None
        if env.master:
            with checkpoint.full_disk_said(step, best, last):
                checkpoint.save(best, coder, cfg, prep.labels, prep.backbone, prep.tokenizer, weights=weights)

    report = Progress(progress_path_of(run), steps, step, cfg.eval_every, progress, env.master, plan=plan, title=title)
    model.train()
    done = step >= steps or bool(cfg.patience and stale >= cfg.patience)
    finished_before = state is not None and done
    t0, tokens_seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
    # a resumed fit adds to what the fit before it counted up to last/ (the cost `mntp.cost` compares)
    tokens_before, elapsed_before = (state or {}).get("tokens", 0), (state or {}).get("elapsed_s", 0.0)
    while not done:
        sampler.set_epoch(epoch)
        micro = 0
        for b, batch in enumerate(train_loader):
            if b < skip:
                continue
            sync = (micro + 1) % accum == 0 or b == n_batches - 1
            if sharded:
                model.set_requires_gradient_sync(sync)
            ctx = model.no_sync() if env.world > 1 and not sync and not sharded else nullcontext()
            with ctx:
                loss = forward_together(model, batch, cfg, env, dtype, group, step, last)
                try:
                    scaler.scale(loss / accum).backward()
                except torch.cuda.OutOfMemoryError:
                    # the other ranks wait in the gradient all-reduce: torchrun stops them on one node,
                    # STEP_TIMEOUT across nodes
                    raise TrainingError(f"rank {env.rank}: {out_of_memory(cfg, step)} (in the backward pass)") from None
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
            report.step(step, loss_sum / loss_n, scheduler.get_last_lr()[0],
                        tokens_seen * env.world / max(elapsed, 1e-9))
            if step % cfg.eval_every == 0 or step >= steps:
                val = score(model, prep.tokens["val"], cfg, env, pad_id, fmt=prep.fmt)
                row = {"step": step, "epoch": epoch + (b + 1) / n_batches, "train_loss": loss_sum / loss_n,
                       "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_seen * env.world / max(elapsed, 1e-9),
                       "tokens": tokens_before + tokens_seen * env.world,
                       "elapsed_s": elapsed_before + time.perf_counter() - t0,  # this validation included
                       **{f"val_{k}": v for k, v in metrics.compute(y_val, val, cfg.threshold).items()
                          if k not in ("n_docs", "n_labels", "threshold", "label_set")}}
                history.append(row)
                report.evaluation(row, cfg.metric)
                loss_sum, loss_n = 0.0, 0
                value = row[f"val_{cfg.metric}"]
                improved = not math.isnan(value) and value > best_value
                if improved:
                    best_value, stale = value, 0
                    save_best()
                else:
                    stale += 1
                if env.master:
                    write_history(run.history, history)
                distributed.barrier(env)
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
    report.close()
    if distributed.gather(not best.exists(), env)[0]:  # rank 0's view: the same decision on every rank
        save_best()
    distributed.barrier(env)
    optimizer = scheduler = model = None  # free their state: only the coder stays, best/ goes into it in place
    if not (finished_before and distributed.gather(scored_by_best(run), env)[0]):
        write_predictions(cfg, prep, env, best, coder, run)
    return pd.DataFrame(history)


def scored_by_best(run: Run) -> bool:
    """Whether every prediction file of `run` (or of its variant) was scored by the `best/` there is."""
    best = tree_hash(run.checkpoint("best"))
    return best is not None and all(record.scored_by(run.predictions(s)) == best for s in SCORED_SPLITS)


def out_of_memory(cfg: Config, step: int) -> str:
    return (f"GPU out of memory at step {step} (batch_size={cfg.batch_size}, max_segments={cfg.max_segments}, "
            f"segment_length={cfg.segment_length}): lower batch_size and raise grad_accum, lower max_segments, or set "
            f"grad_checkpointing=true (python -m icdlib plan shows what fits)")


def forward_together(model, batch: dict, cfg: Config, env: Env, dtype: torch.dtype, group, step: int,
                     last: Path) -> torch.Tensor:
    """The micro-batch's loss, or a stop on every rank at this step when any rank's forward pass
    raised, ran out of memory or gave a loss that is not finite (before any backward pass: no rank
    is left waiting in the gradient all-reduce). In one process the error is raised as it is."""
    failure, loss = None, None
    try:
        with autocast(env.device, dtype):
            logits = model(batch["input_ids"].to(env.device), batch["attention_mask"].to(env.device))
        loss = loss_fn(logits, batch["targets"].to(env.device), cfg.pos_weight)
        if not torch.isfinite(loss):
            failure = (f"loss is {loss.item()} at step {step}: stopped; the last good checkpoint is "
                       f"{last if last.exists() else 'not written yet'} (lower lr or use precision=fp32)", "")
    except torch.cuda.OutOfMemoryError:
        failure = (out_of_memory(cfg, step), traceback.format_exc())
    except Exception as e:
        if env.world == 1:
            raise
        failure = (f"{type(e).__name__}: {e}", traceback.format_exc())
    if failure is not None and env.world == 1:
        raise TrainingError(failure[0])
    distributed.stop_together(failure, env, group, step)
    return loss


def write_history(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_predictions(cfg: Config, prep: Prepared, env: Env, best: Path, coder: ICDCoder, run: Run | None = None) -> None:
    """Scores of the best checkpoint on val and test: `predictions_<split>.npz` (hadm_id, scores,
    and `best`: the `tree_hash` of the best/ that scored them, which 04 and 05 compare with the
    best/ there is, so predictions older than a checkpoint are refused).

    `best/`'s weights are loaded into the live `coder` (the one that trained): a second backbone
    would cost its whole size again on the GPU (16 GB for an 8B model in bf16).
    """
    if is_sharded(coder):  # rank 0 reads best/, every rank receives its shards
        weights = checkpoint.full_weights(best, expect_labels=prep.label_codes) if env.master else {}
        distributed.load_full_weights(coder, weights)
    else:
        checkpoint.load_into(coder, best, cfg, expect_labels=prep.label_codes)
    best_id = tree_hash(best) if env.master else None
    for split in SCORED_SPLITS:
        scores = score(coder, prep.tokens[split], cfg, env, prep.tokenizer.pad_token_id, fmt=prep.fmt)
        if env.master:
            hadm = prep.notes.loc[prep.notes["split"] == split, "hadm_id"].to_numpy()
            with atomic_path((run or Run.of(cfg)).predictions(split)) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, hadm_id=hadm, scores=scores, best=np.array(best_id))


def token_stats(prep: Prepared) -> dict:
    """What truncation costs, per split (`data.truncation_stats`), with the budget and the mode."""
    return {"max_note_tokens": prep.fmt.budget(prep.cfg.segment_length, prep.cfg.max_segments), "truncation": prep.cfg.truncation,
            "splits": {s: truncation_stats(prep.tokens[s]) for s in ("train", "val", "test")}}


def write_token_stats(run: Run, prep: Prepared) -> Path:
    """`03_train/tokens.json`: `token_stats` (the master process writes it, before training)."""
    return atomic_write_text(run.tokens_json, json.dumps(token_stats(prep), indent=2) + "\n")


def load_token_stats(run_dir: Path) -> dict:
    """`03_train/tokens.json` as written by `write_token_stats` ({} when there is none)."""
    path = Run(run_dir).tokens_json
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_history(run_dir: Path, variant: str = "") -> pd.DataFrame:
    """history.csv of the run's fine-tuning (or of a `variant`, an MNTP_ARMS value); empty when missing."""
    path = Run(run_dir, variant).history
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def mntp_arms(cfg: Config, history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The two fine-tunings of an MNTP comparison, {"with MNTP": history, "without MNTP": history}
    (empty without `mntp_compare`); `history` is the model's own."""
    if cfg.mntp_compare == "none":
        return {}
    other = load_history(cfg.run_dir, MNTP_ARMS[cfg.mntp_compare])
    mine, theirs = ("without MNTP", "with MNTP") if cfg.mntp_compare == "with" else ("with MNTP", "without MNTP")
    return {mine: history, theirs: other}


def run(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """Step 03: train in this process, or in `cfg.nproc` torchrun processes when nproc > 1 (this
    process holds the run folder's lock meanwhile; the workers inherit it)."""
    if cfg.nproc <= 1:
        return fit(cfg, progress=progress)
    with lock(cfg.run_dir, STEP):
        return launch(cfg, cfg.nproc)


def launch(cfg: Config, nproc: int) -> pd.DataFrame:
    """Multi-process training from a notebook: torchrun in a subprocess, logs streamed, check=True.

    The run folder goes as an absolute `--run-dir` (`train --run-dir` trains in the folder it is
    given), so the workers neither depend on their working directory nor on where config.json
    was first written. (`--run` would not do: torchrun rejects it as an abbreviation of its own
    `--run-path`.)"""
    run_dir = cfg.run_dir.absolute()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "icdlib", "train", "--run-dir", str(run_dir)]
    # the notebook's own parameters: config.json keeps the record of step 01
    cmd += [x for o in config.cli_overrides(cfg, config.from_json(Run(run_dir).config)) for x in ("-p", o)]
    subprocess.run(cmd, check=True)
    return load_history(run_dir)
