"""`train` suite: tokens/s of icdlib's batches against the original project's input, same model.

icdlib feeds each note as up to 8 segments of 512 tokens, batched by length with dynamic padding.
The original project fed one left-padded window of exactly 1,024 tokens per note (the note's tail
cut off). Both run the same tiny bidirectional Llama (params/tiny.yaml's shape) with a label-
attention head on the same notes in the same order, on the CPU. Throughput counts real note
tokens only (padding excluded), so the ratio is work done per second, not positions filled.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from icdlib.model import backbones, mntp
from icdlib.run import config
from icdlib.data import preprocess
from icdlib.bench.harness import ensure_twin, ratios, summary
from icdlib.model.encoding import NotesDataset, collate, tokenize
from icdlib.model.models import ICDCoder, loss_fn

SCALES = {"full": {"admissions": 400, "batch_size": 8, "steps": 6},
          "smoke": {"admissions": 60, "batch_size": 2, "steps": 2}}
SEED_WINDOW = 1024


def bench_config(mimic_dir: Path, scratch: Path, **overrides) -> config.Config:
    """params/tiny.yaml with 512-token segments × 8 (the shape a GPU run uses), on the given twin."""
    return config.resolve("tiny", {"mimic_dir": str(mimic_dir), "output_root": str(scratch), "run": "bench",
                                   "segment_length": 512, "max_segments": 8, **overrides})


def tiny_coder(cfg: config.Config, notes, labels, folder: Path) -> tuple[ICDCoder, object, str]:
    """A tiny backbone (tokenizer learnt on the notes) with a fresh head; (coder, tokenizer, backbone path)."""
    wide = replace(cfg, segment_length=max(cfg.segment_length, SEED_WINDOW))  # positions cover the 1,024 window
    path = backbones.make_tiny(wide, notes["text"].tolist(), folder)
    encoder, tokenizer = backbones.load(path)
    encoder = backbones.make_trainable(encoder, cfg)
    torch.manual_seed(cfg.seed)
    return ICDCoder(encoder, len(labels), cfg.head, cfg.attention_dim), tokenizer, str(path)


def seed_batch(items, pad_id: int, window: int = SEED_WINDOW) -> dict:
    """The original project's input: each note's first `window` tokens, left-padded to exactly `window`."""
    ids = torch.full((len(items), 1, window), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), 1, window), dtype=torch.long)
    for row, (note, _, _) in enumerate(items):
        note = torch.from_numpy(note[:window].astype(np.int64))
        if len(note):
            ids[row, 0, -len(note):] = note
            mask[row, 0, -len(note):] = 1
    return {"input_ids": ids, "attention_mask": mask, "targets": torch.from_numpy(np.stack([t for _, t, _ in items]))}


def _train_step(coder, optimizer, batch) -> None:
    logits = coder(batch["input_ids"], batch["attention_mask"])
    loss_fn(logits, batch["targets"]).backward()
    torch.nn.utils.clip_grad_norm_([p for p in coder.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _infer_step(coder, _, batch) -> None:
    torch.sigmoid(coder(batch["input_ids"], batch["attention_mask"]))


def _tokens_per_s(coder, optimizer, batches, step) -> float:
    coder.train(step is _train_step)
    t0 = time.perf_counter()
    for batch in batches:
        step(coder, optimizer, batch)
    seconds = time.perf_counter() - t0
    return sum(int(b["attention_mask"].sum()) for b in batches) / seconds


def mntp_tokens_per_s(cfg: config.Config, backbone: str, texts: list[str], batch_size: int, steps: int) -> float:
    """Tokens/s of whole MNTP steps (`mntp.train_step`: masking, forward, loss over the masked
    positions, backward, clipping, AdamW), LoRA on the tiny backbone."""
    encoder, tokenizer = backbones.load(backbone)
    obj = mntp.objective(encoder, cfg, None)
    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.mntp_lr)
    ids, special = mntp.corpus(texts, tokenizer, cfg.segment_length)
    recipe = mntp.masking(cfg, tokenizer, encoder.config)
    generator = torch.Generator().manual_seed(cfg.seed)
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    for i in range(steps):
        rows = torch.arange(i * batch_size, (i + 1) * batch_size) % len(ids)
        inputs, labels = mntp.mask_tokens(ids[rows], special[rows], recipe, len(tokenizer), generator)
        mntp.train_step(obj, optimizer, params, inputs, labels, cpu, torch.float32, at=i)
    return steps * batch_size * ids.shape[1] / (time.perf_counter() - t0)


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, **_) -> dict:
    from icdlib.model.train import optimizer_for

    plan = SCALES[scale]
    scratch = Path(data_dir) / "scratch-train"
    twin = ensure_twin(Path(data_dir), plan["admissions"], progress)
    cfg = bench_config(twin, scratch, batch_size=plan["batch_size"])
    pre = preprocess.build(cfg, progress=False)
    notes, labels = pre.notes, pre.labels
    torch.manual_seed(cfg.seed)
    coder, tokenizer, backbone = tiny_coder(cfg, notes, labels, scratch / "backbone")
    optimizer = optimizer_for(coder, cfg)
    pad = tokenizer.pad_token_id
    untruncated = tokenize(notes["text"].tolist(), tokenizer, 10**9).lengths()
    tokens = tokenize(notes["text"].tolist(), tokenizer, cfg.segment_length * cfg.max_segments)
    dataset = NotesDataset(tokens, notes["codes"].tolist(), labels["code"].tolist())
    lengths = tokens.lengths()
    # batches of similar length, as LengthBucketSampler makes them; the same notes for both inputs
    order = np.random.default_rng(cfg.seed).permutation(len(dataset))
    bs, steps = plan["batch_size"], plan["steps"]
    if len(order) < bs * steps:
        raise ValueError(f"{len(order)} notes cannot fill {steps} batches of {bs}")
    groups = [sorted(order[i:i + bs], key=lambda j: lengths[j]) for i in range(0, bs * steps, bs)]
    inputs = {
        f"icdlib: {cfg.max_segments} × {cfg.segment_length} segments, dynamic padding":
            [collate([dataset[i] for i in g], cfg.segment_length, pad) for g in groups],
        f"original: one {SEED_WINDOW}-token window, fixed left padding":
            [seed_batch([dataset[i] for i in g], pad) for g in groups],
    }
    measured = {name: {"train": [], "infer": []} for name in inputs}
    for i in range(warmup + repeats):
        for name, batches in inputs.items():
            for kind, step in (("train", _train_step), ("infer", _infer_step)):
                value = _tokens_per_s(coder, optimizer, batches, step)
                if i >= warmup:
                    measured[name][kind].append(value)
                if progress:
                    print(f"[bench train] {'warm-up' if i < warmup else f'run {i - warmup + 1}/{repeats}'} {name} "
                          f"{kind}: {value:,.0f} tokens/s", flush=True)
    mntp_runs = []
    for i in range(warmup + repeats):
        value = mntp_tokens_per_s(cfg, backbone, notes["text"].tolist(), bs, steps)
        if i >= warmup:
            mntp_runs.append(value)
        if progress:
            print(f"[bench train] {'warm-up' if i < warmup else f'run {i - warmup + 1}/{repeats}'} MNTP: "
                  f"{value:,.0f} tokens/s", flush=True)
    covered = {name: sum(int(b["attention_mask"].sum()) for b in batches) for name, batches in inputs.items()}
    total = int(sum(len(dataset.tokens.note(i)) for g in groups for i in g))
    slots = {name: sum(b["attention_mask"].numel() for b in batches) for name, batches in inputs.items()}
    case = (f"{len(groups)} batches × {bs} notes, {total / (len(groups) * bs):,.0f} tokens per note "
            f"(median note {int(np.median(untruncated)):,} before the cap); {cfg.tiny_layers} layers, hidden {cfg.tiny_hidden}, "
            f"{len(labels):,} codes")
    rows = [{"case": case, "system": name, "train_tps": summary(m["train"]), "infer_tps": summary(m["infer"]),
             "covered": summary([100.0 * covered[name] / total]), "padding": summary([100.0 * (1 - covered[name] / slots[name])])}
            for name, m in measured.items()]
    rows.append({"case": case, "system": f"icdlib MNTP stage: LoRA r={cfg.lora_r}, {bs} chunks × {cfg.segment_length} "
                                          f"tokens, {mntp.RECIPES['bert']:.0%} masked",
                 "train_tps": summary(mntp_runs)})
    ours, seed = measured.values()
    return {
        "description": "Tokens/s counts real note tokens (padding excluded) over whole training steps (forward, "
                       "backward, clipping, AdamW) and inference steps, CPU, float32, "
                       f"{torch.get_num_threads()} torch threads. 'note tokens seen' is the share of the notes' "
                       f"tokens (up to {cfg.segment_length * cfg.max_segments:,}) that each input covers. The MNTP "
                       "row counts every token of its chunks over whole MNTP steps (icdlib.model.mntp).",
        "columns": [["train_tps", "train tokens/s", 0], ["infer_tps", "inference tokens/s", 0],
                    ["covered", "note tokens seen %", 1], ["padding", "padding %", 1]],
        "rows": rows,
        "comparisons": [{"what": "training tokens/s, icdlib / original", "ratio": ratios(ours["train"], seed["train"])},
                        {"what": "inference tokens/s, icdlib / original", "ratio": ratios(ours["infer"], seed["infer"])}],
        "notes": ["GPU part (Llama-3-8B shape, bf16 against 8-bit weights with fp32 compute, MFU) not measured: "
                  "no GPU was lent to the session that wrote this suite."],
    }
