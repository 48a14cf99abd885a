"""`gpu` suite: LoRA training and scoring of Llama-3-8B- and Mistral-7B-shaped LLM2Vec coders, bf16 and 4-bit.

Each backbone is transformers' `LlamaModel` / `MistralModel` made bidirectional
(`icdlib.model.bidirectional`), built from a config with random weights, directly on the GPU in bf16
(nothing is downloaded; random weights cost the same time and memory as trained ones):

- Llama-3-8B shape: hidden 4,096, 32 layers, 32 heads, 8 KV heads, MLP 14,336, vocab 128,256;
- Mistral-7B shape: the same but vocab 32,000.

On top, as a run does it: `backbones.make_trainable` (LoRA r=16 on all seven projections),
an `ICDCoder` label-attention head over 8,922 codes, AdamW (`train.optimizer_for`), autocast bf16.
What runs is read from the params file (params/llama3.yaml, params/mistral.yaml): a training step
is `batch_size` notes of `max_segments` × `segment_length` real tokens (2 × 8 × 512 = 8,192), a
scoring batch `2 × batch_size` notes (`inference.score`'s), an MNTP step `mntp_batch_size` chunks
of `mntp_length` tokens (32 × 512). The suite opens by timing a large bf16 matmul (8,192³, CUDA
events), the best case of the tensor cores. Then, per backbone and weights, every training
measurement runs with non-reentrant gradient checkpointing on and off (`grad_checkpointing: true`
in both params files is the "on" arm), each from its own reset of the peak-memory counters:

- training tokens/s and MFU, peak GPU memory: `torch.cuda.max_memory_allocated` (what tensors held)
  and `torch.cuda.max_memory_reserved` (what the caching allocator took from the device: what
  decides an out-of-memory), from before the step, so weights, LoRA, head, AdamW state and
  activations. An arm that runs out of memory is recorded as such, with the bytes the failing
  allocation asked and the peaks up to it, then freed, and the suite goes on;
- bf16 only: peft's input cast on (the default) and off (`peft.helpers.disable_input_dtype_casting`).
  peft keeps LoRA weights in fp32 and casts each projection's bf16 input to fp32 before the LoRA
  dropout (peft/tuners/lora/layer.py, `Linear.forward`), memory traffic that buys nothing under
  autocast, where the LoRA matmuls run in bf16 anyway. The 4-bit path has no such arm: peft's
  bitsandbytes `Linear4bit` skips that cast whenever autocast is on (peft/tuners/lora/bnb.py);
- scoring notes/s (`torch.no_grad`, autocast bf16) and its peak memory, on the checkpointing-on
  rows (checkpointing does nothing without gradients), with peft's input cast on and off for bf16;
- 4-bit: the same with the backbone loaded through `icdlib.model.quantize` (NF4, double quantization,
  bf16 compute: QLoRA). Random weights are quantized the way a real checkpoint is: the bf16
  model is saved to a scratch folder on local disk and loaded with
  `from_pretrained(quantization_config=quantize.bnb_config("4bit"))`;
- an MNTP step (`mntp.train_step`), checkpointing on and off;
- "one backbone in memory": the bytes of one backbone copy (parameters × element size, and the
  allocator's growth while building it), and the peak memory of scoring the best checkpoint
  (LoRA + head weights) by a second backbone load beside the live model against loading it into
  the live model (bf16; the optimizer is freed first in both).

The bench steps AdamW after every micro-batch, where a run accumulates `grad_accum` (8) first: the
update touches only the LoRA and head weights (about 85 M), a few milliseconds of an 8,192-token
step.

MFU counts model FLOPs, not hardware FLOPs: the forward recomputed by gradient checkpointing is
not counted (so the off arm, which skips that recompute, shows a higher MFU from the same hardware
efficiency). Per token, with N = weights of the backbone's linear layers (embeddings excluded: a
lookup), N_lora = LoRA weights, L layers, width d, s = segment length, C codes, A = attention_dim:

    training = 4·N + 6·N_lora + 12·L·s·d + 3·F_head      scoring = 2·N + 2·N_lora + 4·L·s·d + F_head
    F_head   = 2·(d·A + A·C + C·d)   (label-attention forward)

The frozen base runs forward (2·N) and backward through its activations (2·N) but computes no
weight gradients; LoRA runs all three (6·N_lora); attention scores and values cost 4·s·d per
token and layer forward over the whole (bidirectional) segment, twice that backward. MFU is that
count per second over two peaks: the device's dense bf16 peak from PEAK_BF16_TFLOPS (matched on
the CUDA device name; an unknown device, or the CPU, gets that MFU null), and the measured matmul
rate (median of its timed runs), which says how far the step is from what this device, clocks
and driver reach on the friendliest shape.

`--scale full` needs a CUDA GPU with room for two bf16 copies of an 8B backbone (15 GB each)
for the one-backbone comparison; a second load that runs out of memory is recorded as such.
Its run time is not measured yet (no GPU has run it); saving and quantizing the two bf16 models
for the 4-bit rows and the 16 training arms take most of it. Without CUDA it refuses and records
nothing. `--scale smoke` runs the same code at a toy shape (hidden 64, 2 layers, vocab 1,000,
segments of 2 × 32 tokens, MNTP 2 chunks × 32, a 256³ matmul, 100 codes; the params file's
batch_size) in seconds, on the CPU when there is no GPU, where the 4-bit rows are reported as
skipped and there is no GPU memory to read (null, blank in the table).
"""

from __future__ import annotations

import gc
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from icdlib.bench.harness import ratios, summary
from icdlib.run.errors import IcdlibError
from icdlib.model.memory_plan import SHAPES


def _shape(name: str, **extra) -> dict:
    """A shipped backbone's shape as `memory_plan.SHAPES` holds it, plus what building it here needs."""
    return {**{k: SHAPES[name][k] for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")}, **extra}


FULL_SHAPES = {
    "Llama-3-8B": _shape("Llama-3-8B", arch="llama", rope_theta=500000.0, max_positions=8192, params="llama3"),
    "Mistral-7B": _shape("Mistral-7B", arch="mistral", rope_theta=1000000.0, max_positions=32768, params="mistral"),
}
TOY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 1000, "max_positions": 64}
SMOKE_SHAPES = {
    "Llama-3-8B (toy shape)": {**FULL_SHAPES["Llama-3-8B"], **TOY},
    "Mistral-7B (toy shape)": {**FULL_SHAPES["Mistral-7B"], **TOY},
}
# `overrides` go over the params file: the full scale runs the file's batch as it is.
SCALES = {
    "full": {"shapes": FULL_SHAPES, "labels": 8922, "overrides": {}, "codes_per_note": 16, "steps": 4,
             "score_batches": 2, "matmul": {"n": 8192, "reps": 20, "runs": 5, "warmup": 5}, "needs_cuda": True},
    "smoke": {"shapes": SMOKE_SHAPES, "labels": 100, "codes_per_note": 5, "steps": 2, "score_batches": 2,
              "overrides": {"segment_length": 32, "max_segments": 2, "mntp_length": 32, "mntp_batch_size": 2},
              "matmul": {"n": 256, "reps": 2, "runs": 3, "warmup": 1}, "needs_cuda": False},
}
# Dense (no sparsity) bf16 tensor-core peaks of NVIDIA's data sheets, TFLOP/s, first match on the
# CUDA device name wins; names not listed (NVL variants included) get no datasheet MFU.
PEAK_BF16_TFLOPS = (
    (r"NVL", None),
    (r"H200", 989.0),                # H200 SXM, GH200
    (r"H100.*(SXM|HBM3)", 989.0),     # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"H100.*PCIe", 756.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
)
GB = 1e9
TRAIN_FORMULA = "4·N + 6·N_lora + 12·L·s·d + 3·2·(d·A + A·C + C·d) per token"
SCORE_FORMULA = "2·N + 2·N_lora + 4·L·s·d + 2·(d·A + A·C + C·d) per token"
_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a CUDA device by name, or None when it is not in PEAK_BF16_TFLOPS."""
    for pattern, value in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return value
    return None


def linear_params(shape: dict) -> int:
    """Weights of the linear layers (q, k, v, o, gate, up, down) of every layer; embeddings and norms excluded."""
    d, kv = shape["hidden"], shape["kv_heads"] * (shape["hidden"] // shape["heads"])
    return shape["layers"] * (2 * d * d + 2 * d * kv + 3 * d * shape["intermediate"])


def all_params(shape: dict) -> int:
    """Every parameter of the bidirectional model: embeddings, linear layers, two norms per layer, final norm."""
    d = shape["hidden"]
    return shape["vocab"] * d + linear_params(shape) + (2 * shape["layers"] + 1) * d


def flops_per_token(shape: dict, lora: int, segment_length: int, labels: int, attention_dim: int,
                    training: bool) -> float:
    """Model FLOPs per token (see the module docstring for the formula)."""
    n, layers, d = linear_params(shape), shape["layers"], shape["hidden"]
    attention = 4 * layers * segment_length * d
    head = 2 * (d * attention_dim + attention_dim * labels + labels * d)
    if training:
        return 4 * n + 6 * lora + 3 * attention + 3 * head
    return 2 * n + 2 * lora + attention + head


def mfu(rates: list[float], flops: float, tflops: float | None) -> dict | None:
    """Summary of `rates` (tokens/s) × `flops` (per token) as a percentage of `tflops`; None without a peak."""
    if tflops is None:
        return None
    return summary([100.0 * r * flops / (tflops * 1e12) for r in rates])


def matmul_tflops(n: int, reps: int, runs: int, warmup: int, device: torch.device, dtype: torch.dtype) -> list[float]:
    """TFLOP/s of `runs` timed runs of `reps` back-to-back (n × n) @ (n × n) products in `dtype` (2·n³
    FLOPs each), after `warmup` untimed products: what this device reaches on the tensor cores'
    friendliest shape. Timed with CUDA events on a GPU, by the wall clock on the CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    rates = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            seconds = time.perf_counter() - t0
        rates.append(2 * n ** 3 * reps / seconds / 1e12)
    del a, b, out
    return rates


def out_of_memory(message: str, device: torch.device) -> dict:
    """What an out-of-memory error says: the size the failing allocation asked (as PyTorch prints it,
    and in bytes, exact to its two decimals), the peaks up to the failure, the message's first line."""
    asked = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", message)
    lines = message.strip().splitlines()
    return {"asked": f"{asked.group(1)} {asked.group(2)}" if asked else None,
            "asked_bytes": round(float(asked.group(1)) * _UNITS[asked.group(2)]) if asked else None,
            "peak_allocated_gb": _peak_gb(device), "peak_reserved_gb": _reserved_gb(device),
            "message": lines[0][:300] if lines else ""}


def model_config(shape: dict):
    from transformers import LlamaConfig, MistralConfig

    common = dict(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                  num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                  num_key_value_heads=shape["kv_heads"], max_position_embeddings=shape["max_positions"],
                  rope_theta=shape["rope_theta"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
    return MistralConfig(sliding_window=None, **common) if shape["arch"] == "mistral" else LlamaConfig(**common)


def build_base(shape: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random bidirectional backbone of `shape`, created on `device` in `dtype` (no CPU copy)."""
    from transformers import AutoModel

    from icdlib.model.bidirectional import make_bidirectional

    with torch.device(device):
        return make_bidirectional(AutoModel.from_config(model_config(shape), dtype=dtype, attn_implementation="sdpa"))


def load_quantized(folder: Path, shape: dict, load_in: str, device: torch.device, dtype: torch.dtype):
    """The saved backbone at `folder`, quantized by bitsandbytes while it loads (as a real checkpoint is)."""
    from transformers import AutoModel

    from icdlib.model import quantize
    from icdlib.model.bidirectional import make_bidirectional

    quantize.check(load_in, device)
    return make_bidirectional(AutoModel.from_pretrained(
        str(folder), quantization_config=quantize.bnb_config(load_in, dtype), dtype=dtype,
        device_map={"": device.index or 0}, attn_implementation="sdpa"))


def _inner(encoder):
    return encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder


def set_checkpointing(encoder, on: bool) -> None:
    """Non-reentrant activation checkpointing of `encoder`'s transformers model on (as `train` sets it) or off."""
    from icdlib.model.models import checkpoint_activations

    inner = _inner(encoder)
    if on:
        checkpoint_activations(inner)
    else:
        (getattr(inner, "activation_checkpointing_disable", None) or inner.gradient_checkpointing_disable)()


def checkpointing(encoder) -> bool:
    """Whether the transformers model under `encoder` checkpoints its layers (transformers' own flag)."""
    inner = _inner(encoder)
    flag = getattr(inner, "is_activation_checkpointing", None)
    return bool(inner.is_gradient_checkpointing if flag is None else flag)


def build_coder(base: torch.nn.Module, cfg, labels: int, device: torch.device):
    """LoRA + label-attention head on `base`, gradient checkpointing on, as `icdlib.model.train` sets it up."""
    from icdlib.model import backbones
    from icdlib.model.models import ICDCoder

    encoder = backbones.make_trainable(base, cfg)
    set_checkpointing(encoder, True)
    torch.manual_seed(cfg.seed)
    coder = ICDCoder(encoder, labels, cfg.head, cfg.attention_dim)
    coder.head.to(device)  # the backbone is in place already (a quantized one refuses `.to`)
    return coder


def backbone_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers × element size (a 4-bit weight counts its packed bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def make_batch(notes: int, segments: int, segment_length: int, plan: dict, vocab: int, device: torch.device,
               seed: int) -> dict:
    """`notes` notes of `segments` × `segment_length` real (random) tokens and a few positive codes each."""
    g = torch.Generator().manual_seed(seed)
    shape = (notes, segments, segment_length)
    ids = torch.randint(3, vocab, shape, generator=g)
    targets = torch.zeros(notes, plan["labels"])
    for row in range(notes):
        targets[row, torch.randperm(plan["labels"], generator=g)[:plan["codes_per_note"]]] = 1.0
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(shape, dtype=torch.long, device=device),
            "targets": targets.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Collect garbage, return cached blocks to the device and reset both peaks (allocated and reserved).
    Nothing on the CPU, where no peak is read (and a full collection costs a second on a busy machine)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


def _reserved_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / GB if device.type == "cuda" else None


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def measured(fn, device: torch.device, model: torch.nn.Module | None = None) -> dict:
    """`{"value": fn(), "peak_gb", "reserved_gb"}`, peaks counted from a reset just before; or
    `{"out_of_memory": out_of_memory(...)}` when the device ran out. Either way `model`'s gradients
    and the cached blocks are freed after, so the next measurement starts clean."""
    _free(device)
    try:
        record = {"value": fn()}
        record.update(peak_gb=_peak_gb(device), reserved_gb=_reserved_gb(device))
    except torch.cuda.OutOfMemoryError as e:  # a result too: this arm does not fit this device
        record = {"out_of_memory": out_of_memory(str(e), device)}
    if model is not None:
        model.zero_grad(set_to_none=True)
    _free(device)
    return record


def train_runs(coder, cfg, batch, steps: int, runs: int, warmup: int, device, dtype, say) -> tuple[list[float], float]:
    """Tokens/s of `runs` timed runs of `steps` training steps each (after `warmup` runs); and the last loss."""
    from icdlib.model.models import loss_fn
    from icdlib.model.train import autocast, optimizer_for

    optimizer = optimizer_for(coder, cfg)
    trainable = [p for p in coder.parameters() if p.requires_grad]
    tokens = int(batch["attention_mask"].sum()) * steps
    coder.train()
    rates, loss = [], torch.tensor(float("nan"))
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast(device, dtype):
                logits = coder(batch["input_ids"], batch["attention_mask"])
            loss = loss_fn(logits, batch["targets"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        rate = tokens / (time.perf_counter() - t0)
        say(f"train {'warm-up' if i < warmup else f'run {i - warmup + 1}/{runs}'}: {rate:,.0f} tokens/s, "
            f"loss {float(loss.detach()):.4f}")
        if i >= warmup:
            rates.append(rate)
    del optimizer
    return rates, float(loss.detach())


def mntp_runs(obj, cfg, masking: str, vocab: int, steps: int, runs: int, warmup: int, device, dtype,
              say) -> tuple[list[float], float]:
    """Tokens/s of MNTP steps (`mntp.train_step`: masking, loss over the masked positions through
    the LM head, AdamW on LoRA and on the head when it trains, clipping) on the objective `obj`,
    `mntp_batch_size` chunks of `mntp_length` tokens per step; and the last loss."""
    from icdlib.model import mntp

    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.mntp_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.mntp_batch_size, cfg.mntp_length)
    ids = torch.randint(vocab, shape, generator=g)
    recipe = mntp.Masking(masking, cfg.mntp_probability or mntp.RECIPES[masking], 0)
    obj.train()
    rates, loss = [], torch.tensor(float("nan"))
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            inputs, labels = mntp.mask_tokens(ids, torch.zeros(shape, dtype=torch.bool), recipe, vocab, g)
            loss = mntp.train_step(obj, optimizer, params, inputs, labels, device, dtype)
        _sync(device)
        rate = ids.numel() * steps / (time.perf_counter() - t0)
        say(f"MNTP {'warm-up' if i < warmup else f'run {i - warmup + 1}/{runs}'}: {rate:,.0f} tokens/s, "
            f"loss {float(loss.detach()):.4f}")
        if i >= warmup:
            rates.append(rate)
    del optimizer
    return rates, float(loss.detach())


@torch.no_grad()
def score_runs(coder, batches: list[dict], runs: int, warmup: int, device, dtype, say) -> list[float]:
    """Notes/s of `runs` timed passes over `batches` (after `warmup` passes)."""
    from icdlib.model.train import autocast

    coder.eval()
    notes = sum(len(b["input_ids"]) for b in batches)
    rates = []
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            with autocast(device, dtype):
                torch.sigmoid(coder(b["input_ids"], b["attention_mask"]))
        _sync(device)
        rate = notes / (time.perf_counter() - t0)
        say(f"score {'warm-up' if i < warmup else f'run {i - warmup + 1}/{runs}'}: {rate:,.2f} notes/s")
        if i >= warmup:
            rates.append(rate)
    return rates


@torch.no_grad()
def _score_once(coder, batch, device, dtype) -> None:
    from icdlib.model.train import autocast

    coder.eval()
    with autocast(device, dtype):
        torch.sigmoid(coder(batch["input_ids"], batch["attention_mask"]))
    _sync(device)


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, **_) -> dict:
    from icdlib.model import quantize

    plan = SCALES[scale]
    cuda = torch.cuda.is_available()
    if plan["needs_cuda"] and not cuda:
        raise IcdlibError(f"bench gpu --scale {scale} needs a CUDA GPU; no numbers are recorded")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16
    device_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    device_gb = torch.cuda.get_device_properties(device).total_memory / GB if cuda else None
    peak = peak_tflops(device_name) if cuda else None
    scratch_root = Path(data_dir) if data_dir else Path(tempfile.gettempdir())
    try:
        quantize.check("4bit", device)
        skip_4bit = None
    except IcdlibError as e:
        skip_4bit = str(e)

    mm = plan["matmul"]
    _free(device)
    matmul = matmul_tflops(mm["n"], mm["reps"], mm["runs"], mm["warmup"], device, dtype)
    _free(device)
    if progress:
        print(f"[bench gpu] bf16 matmul {mm['n']}³ on {device_name}: {summary(matmul)['median']:,.1f} TFLOP/s",
              flush=True)
    scratch: list[Path] = []  # the bf16 checkpoints saved for the 4-bit loads, removed whatever happens
    try:
        return _run(plan, repeats, warmup, progress, device, dtype, device_name, device_gb, peak, matmul, skip_4bit,
                    scratch_root, scratch)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _run(plan, repeats, warmup, progress, device, dtype, device_name, device_gb, peak, matmul, skip_4bit,
         scratch_root, scratch) -> dict:
    from icdlib.run import config
    from icdlib.model import mntp

    measured_peak = summary(matmul)["median"]
    peaks = {"datasheet": peak, "measured": measured_peak}
    rows, checks, notes, comparisons, memory, batches = [], [], [], [], {}, {}
    for name, shape in plan["shapes"].items():
        def say(msg, _name=name):
            if progress:
                print(f"[bench gpu] {_name}: {msg}", flush=True)

        cfg = config.resolve(shape["params"], plan["overrides"])
        batch = {"params_file": f"params/{shape['params']}.yaml", "batch_size": cfg.batch_size,
                 "max_segments": cfg.max_segments, "segment_length": cfg.segment_length,
                 "tokens_per_step": cfg.batch_size * cfg.max_segments * cfg.segment_length,
                 "grad_accum": cfg.grad_accum, "grad_checkpointing": cfg.grad_checkpointing,
                 "score_notes_per_batch": 2 * cfg.batch_size, "mntp_batch_size": cfg.mntp_batch_size,
                 "mntp_length": cfg.mntp_length, "overridden": dict(plan["overrides"])}
        batches[name] = batch
        case = (f"{name}: hidden {shape['hidden']:,}, {shape['layers']} layers, {shape['heads']}/{shape['kv_heads']} "
                f"heads, vocab {shape['vocab']:,}; LoRA r={cfg.lora_r} × {len(cfg.lora_targets)} projections, "
                f"{plan['labels']:,} codes; {cfg.batch_size} notes × {cfg.max_segments} × {cfg.segment_length} "
                f"tokens per step ({batch['params_file']})")
        train_batch = make_batch(cfg.batch_size, cfg.max_segments, cfg.segment_length, plan, shape["vocab"], device,
                                 cfg.seed)
        score_batches = [make_batch(2 * cfg.batch_size, cfg.max_segments, cfg.segment_length, plan, shape["vocab"],
                                    device, cfg.seed + 1 + i) for i in range(plan["score_batches"])]
        common = dict(plan=plan, cfg=cfg, train_batch=train_batch, score_batches=score_batches, repeats=repeats,
                      warmup=warmup, device=device, dtype=dtype, say=say, shape=shape, peaks=peaks, case=case)

        # ---- bf16 weights
        _free(device)
        before = _allocated(device)
        t0 = time.perf_counter()
        base = build_base(shape, device, dtype)
        _sync(device)
        say(f"bf16 backbone built on {device} in {time.perf_counter() - t0:.1f} s")
        one_copy = {"param_bytes": backbone_bytes(base),
                    "allocated_bytes": None if before is None else _allocated(device) - before}
        counted = sum(p.numel() for p in base.parameters())
        checks.append({"what": f"{name}: parameters match the shape", "ok": counted == all_params(shape),
                       "detail": f"{counted:,}"})
        if skip_4bit is None:
            scratch_root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=scratch_root))
            scratch.append(folder)
            t0 = time.perf_counter()
            base.save_pretrained(folder)
            say(f"bf16 weights saved for the 4-bit load in {time.perf_counter() - t0:.1f} s")
        coder = build_coder(base, cfg, plan["labels"], device)
        found = _measure(coder, weights="bf16", system="bf16 weights, LoRA (autocast bf16)", one_copy=one_copy,
                         casts=(True, False), **common)
        rows += found["rows"]
        checks += found["checks"]
        comparisons += found["comparisons"]
        notes += found["notes"]

        # ---- one backbone in memory: score the best checkpoint in the live model, or in a second load
        best = {k: p.detach().to("cpu", copy=True) for k, p in coder.named_parameters() if p.requires_grad}
        _free(device)
        coder.load_state_dict(best, strict=False)
        _score_once(coder, score_batches[0], device, dtype)
        reuse_peak, reuse_reserved = _peak_gb(device), _reserved_gb(device)
        _free(device)
        second_peak, second_reserved, oom = None, None, None
        try:
            second = build_coder(build_base(shape, device, dtype), cfg, plan["labels"], device)
            loaded = second.load_state_dict(best, strict=False)
            _score_once(second, score_batches[0], device, dtype)
            second_peak, second_reserved = _peak_gb(device), _reserved_gb(device)
            checks.append({"what": f"{name}: the best checkpoint loads into a second backbone",
                           "ok": not loaded.unexpected_keys})
            del second
        except torch.cuda.OutOfMemoryError as e:  # a result too: two copies do not fit this device
            oom = out_of_memory(str(e), device)
        del best
        _free(device)
        memory[name] = {"bf16": {**one_copy, "score_peak_gb_reusing_live_model": reuse_peak,
                                 "score_reserved_gb_reusing_live_model": reuse_reserved,
                                 "score_peak_gb_second_backbone_load": second_peak,
                                 "score_reserved_gb_second_backbone_load": second_reserved,
                                 "second_backbone_load_out_of_memory": oom is not None,
                                 **({"second_backbone_load_oom": oom} if oom else {})}}
        line = (f"{name}, one backbone in memory: a bf16 copy is {one_copy['param_bytes'] / GB:,.2f} GB "
                f"({counted:,} parameters × 2 bytes), what scoring the best checkpoint in the live model saves "
                f"over loading a second backbone")
        if oom is not None:
            line += (f"; the second load ran out of the device's {device_gb:,.0f} GB, scoring in the live model "
                     f"peaked at {reuse_peak:,.2f} GB allocated")
        elif reuse_peak is not None:
            line += (f"; measured peak {second_peak:,.2f} GB allocated, {second_reserved:,.2f} GB reserved (second "
                     f"load) against {reuse_peak:,.2f} GB, {reuse_reserved:,.2f} GB (reuse)")
            comparisons.append({"what": f"{name}: peak memory allocated scoring the best checkpoint, second backbone "
                                        f"load / live model reused", "ratio": summary([second_peak / reuse_peak])})
        notes.append(line + ".")
        del coder, base

        # ---- the MNTP stage on a fresh bf16 backbone, checkpointing on and off
        _free(device)
        obj = mntp.objective(build_base(shape, device, dtype), cfg, None)  # the LM head trains as the recipe's
        masking = cfg.mntp_masking if cfg.mntp_masking != "auto" else (
            "all_mask" if shape["arch"] == "mistral" else "bert")  # `mntp.masking`'s choice, without a tokenizer
        trained = "LoRA + LM head" if obj.head.weight.requires_grad else "LoRA, frozen LM head"
        system = (f"MNTP stage: bf16 weights, {trained}, {cfg.mntp_batch_size} chunks × {cfg.mntp_length} tokens "
                  f"per step, {masking} masking")
        arms = {}
        for on in (True, False):
            set_checkpointing(obj.encoder, on)
            arms[on] = measured(lambda: mntp_runs(obj, cfg, masking, shape["vocab"], plan["steps"], repeats, warmup,
                                                  device, dtype, say), device, obj)
            row = {"case": case, "system": f"{system}; checkpointing {'on' if on else 'off'}", "stage": "MNTP",
                   "checkpointing": on, "checkpointing_as_asked": checkpointing(obj.encoder) == on,
                   "tokens_per_step": cfg.mntp_batch_size * cfg.mntp_length,
                   "backbone_gb": summary([one_copy["param_bytes"] / GB])}
            rows.append(_filled(row, arms[on], "train"))
            if "value" in arms[on]:
                checks.append({"what": f"{name} MNTP, checkpointing {'on' if on else 'off'}: loss finite",
                               "ok": bool(torch.isfinite(torch.tensor(arms[on]["value"][1])))})
        checks.append({"what": f"{name} MNTP: checkpointing on and off as asked (transformers' flag)",
                       "ok": all(r["checkpointing_as_asked"] for r in rows[-2:])})
        if all("value" in a for a in arms.values()):
            comparisons.append({"what": f"{name} MNTP: tokens/s, checkpointing off / on",
                                "ratio": ratios(arms[False]["value"][0], arms[True]["value"][0])})
        notes += [_oom_note(r) for r in rows[-2:] if r.get("out_of_memory")]
        del obj, arms

        # ---- 4-bit weights (QLoRA)
        system = "4-bit NF4 weights + double quantization, LoRA (QLoRA, bf16 compute)"
        if skip_4bit is not None:
            rows.append({"case": case, "system": f"{system}: skipped (see below)", "skipped": skip_4bit})
            continue
        _free(device)
        before = _allocated(device)
        t0 = time.perf_counter()
        base = load_quantized(folder, shape, "4bit", device, dtype)
        shutil.rmtree(folder, ignore_errors=True)
        say(f"4-bit backbone loaded and quantized in {time.perf_counter() - t0:.1f} s")
        one_copy = {"param_bytes": backbone_bytes(base), "allocated_bytes": _allocated(device) - before}
        import bitsandbytes as bnb

        quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
        checks.append({"what": f"{name} 4-bit: every projection is a bitsandbytes Linear4bit",
                       "ok": quantized == 7 * shape["layers"], "detail": f"{quantized} of {7 * shape['layers']}"})
        q_cfg = config.resolve(shape["params"], {**plan["overrides"], "load_in": "4bit"})
        coder = build_coder(base, q_cfg, plan["labels"], device)
        found = _measure(coder, weights="4bit", system=system, one_copy=one_copy, casts=(True,),
                         **{**common, "cfg": q_cfg})
        rows += found["rows"]
        checks += found["checks"]
        comparisons += found["comparisons"]
        notes += found["notes"]
        memory[name]["4bit"] = one_copy
        notes.append(f"{name}, one backbone in memory at 4 bits: {one_copy['param_bytes'] / GB:,.2f} GB of "
                     f"parameters ({one_copy['allocated_bytes'] / GB:,.2f} GB allocated while loading).")
        del coder, base
        _free(device)

    mm = plan["matmul"]
    matmul_line = (f"Measured bf16 matmul peak: {_cell(summary(matmul), 1)} TFLOP/s ({mm['n']:,}³ products, "
                   f"{mm['runs']} timed runs of {mm['reps']} after {mm['warmup']} untimed"
                   + (", CUDA events" if device.type == "cuda" else ", wall clock") + f", on {device_name})")
    if peak is not None:
        matmul_line += f", {100 * measured_peak / peak:,.0f}% of the datasheet's {peak:,.0f}"
        comparisons.insert(0, {"what": f"bf16 {mm['n']:,}³ matmul, measured / datasheet dense bf16 peak",
                               "ratio": summary([t / peak for t in matmul])})
    notes.insert(0, matmul_line + ". The measured-matmul MFU columns divide by its median.")
    if skip_4bit is not None:
        notes.append(f"4-bit rows skipped: {skip_4bit}.")
    if peak is None:
        notes.append(f"Datasheet MFU left blank: no dense bf16 peak is known for {device_name}.")
    if device.type != "cuda":
        notes.append("Peak GPU memory (allocated and reserved) left blank: measured on the CPU (smoke scale), "
                     "where there is none.")
    first = next(iter(batches.values()))
    return {
        "description": (f"Random-weight LLM2Vec backbones built from configs on {device_name}. A training step is "
                        f"the params file's batch ({first['batch_size']} notes × {first['max_segments']} × "
                        f"{first['segment_length']} tokens, all real, for {first['params_file']}; per backbone under "
                        f"`batch`) with AdamW after every step and gradient clipping, timed with non-reentrant "
                        f"gradient checkpointing on (as the params files run) and off, and for bf16 with peft's "
                        f"fp32 cast of the LoRA inputs on (peft's default) and off; scoring is "
                        f"{first['score_notes_per_batch']} notes per batch under torch.no_grad. Memory in GB of 10^9 "
                        f"bytes, from a reset of the peaks before each measurement (weights included): "
                        f"torch.cuda.max_memory_allocated and torch.cuda.max_memory_reserved. An arm that ran out of "
                        f"memory says so in its system column. MFU: model FLOPs (training {TRAIN_FORMULA}; the "
                        f"recomputed forward not counted; see icdlib/bench/gpu.py) over "
                        + ("no known datasheet peak" if peak is None else f"a datasheet dense bf16 peak of "
                                                                          f"{peak:,.0f} TFLOP/s")
                        + f", and over the measured bf16 matmul rate ({measured_peak:,.1f} TFLOP/s)."),
        "columns": [["train_tps", "train tokens/s", 0], ["train_mfu", "train MFU % datasheet", 1],
                    ["train_mfu_measured", "train MFU % measured matmul", 1],
                    ["train_peak_gb", "train peak allocated GB", 1], ["train_reserved_gb", "train peak reserved GB", 1],
                    ["score_nps", "scoring notes/s", 2], ["score_mfu", "scoring MFU % datasheet", 1],
                    ["score_mfu_measured", "scoring MFU % measured matmul", 1],
                    ["score_peak_gb", "scoring peak allocated GB", 1],
                    ["score_reserved_gb", "scoring peak reserved GB", 1], ["backbone_gb", "backbone GB", 2]],
        "rows": rows,
        "comparisons": comparisons,
        "checks": checks,
        "notes": notes,
        "device": device_name,
        "device_memory_gb": device_gb,
        "peak_bf16_tflops": peak,
        "measured_matmul": {"n": mm["n"], "reps_per_run": mm["reps"], "warmup": mm["warmup"],
                            "timer": "CUDA events" if device.type == "cuda" else "wall clock",
                            "dtype": "bfloat16", "tflops": summary(matmul), "used_for_mfu": measured_peak},
        "batch": batches,
        "flops": {"training_per_token": TRAIN_FORMULA, "scoring_per_token": SCORE_FORMULA,
                  "N": "weights of the linear layers (embeddings excluded)", "N_lora": "LoRA weights",
                  "L": "layers", "d": "hidden size", "s": "segment length", "C": "codes", "A": "attention_dim",
                  "not_counted": "the forward pass recomputed by gradient checkpointing"},
        "one_backbone": memory,
        "plan": {k: v for k, v in plan.items() if k != "shapes"},
        "shapes": plan["shapes"],
    }


def _cell(stat: dict, digits: int) -> str:
    """`median (min–max)` of a summary, as the results table writes it."""
    med = f"{stat['median']:,.{digits}f}"
    return med if stat["min"] == stat["max"] else f"{med} ({stat['min']:,.{digits}f}–{stat['max']:,.{digits}f})"


def _filled(row: dict, record: dict, prefix: str, **mfu_of) -> dict:
    """`row` with the rates, MFUs and peaks of `record` (from `measured`) under `prefix`, or its out of memory."""
    if "out_of_memory" in record:
        oom = record["out_of_memory"]
        row["out_of_memory"] = oom
        row["system"] += (f": out of memory (asked {oom['asked'] or 'an unknown size'} more"
                          + ("" if oom["peak_allocated_gb"] is None else
                             f", {oom['peak_allocated_gb']:,.1f} GB allocated, {oom['peak_reserved_gb']:,.1f} GB "
                             f"reserved") + ")")
        return row
    value = record["value"]
    rates = value[0] if isinstance(value, tuple) else value
    rate_key = "train_tps" if prefix == "train" else "score_nps"
    row[rate_key] = summary(rates)
    for key, (token_rates, flops, tflops) in mfu_of.items():
        row[key] = mfu(token_rates, flops, tflops)
    row[f"{prefix}_peak_gb"] = None if record["peak_gb"] is None else summary([record["peak_gb"]])
    row[f"{prefix}_reserved_gb"] = None if record["reserved_gb"] is None else summary([record["reserved_gb"]])
    if isinstance(value, tuple):
        row["loss"] = value[1]
    return row


def _oom_note(row: dict, key: str = "out_of_memory", what: str = "") -> str:
    oom = row[key]
    return (f"{row['case'].split(':')[0]}, {row['system']}{f', {what} ran out of memory' if what else ''}; "
            f"PyTorch: {oom['message']}" +
            ("" if oom["asked_bytes"] is None else f" ({oom['asked_bytes']:,} bytes asked)"))


def _measure(coder, cfg, plan, train_batch, score_batches, repeats, warmup, device, dtype, say, shape, peaks, case,
             weights, system, one_copy, casts) -> dict:
    """Rows of one backbone and weights: training with checkpointing on and off × peft's input cast
    in `casts` (True: peft's default), scoring on the checkpointing-on rows; with their checks,
    run-by-run comparisons and out-of-memory notes."""
    from peft.helpers import disable_input_dtype_casting

    tokens_per_note = cfg.max_segments * cfg.segment_length
    lora = sum(p.numel() for p in coder.encoder.parameters() if p.requires_grad)
    lora_dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in coder.encoder.named_parameters()
                          if p.requires_grad and "lora_" in n})
    train_flops = flops_per_token(shape, lora, cfg.segment_length, plan["labels"], cfg.attention_dim, True)
    score_flops = flops_per_token(shape, lora, cfg.segment_length, plan["labels"], cfg.attention_dim, False)
    rows, checks, comparisons, train, score = [], [], [], {}, {}
    for on in (True, False):
        for cast in casts:
            set_checkpointing(coder.encoder, on)
            asked = checkpointing(coder.encoder) == on
            with disable_input_dtype_casting(coder, active=not cast):
                train[on, cast] = measured(lambda: train_runs(coder, cfg, train_batch, plan["steps"], repeats, warmup,
                                                              device, dtype, say), device, coder)
                if on:
                    score[cast] = measured(lambda: score_runs(coder, score_batches, repeats, warmup, device, dtype,
                                                              say), device, coder)
            arm = (f"checkpointing {'on' if on else 'off'}"
                   + ("" if len(casts) == 1 else f"; peft input cast {'on (peft default)' if cast else 'off'}"))
            row = {"case": case, "system": f"{system}; {arm}", "stage": "fine-tune", "weights": weights,
                   "checkpointing": on, "checkpointing_as_asked": asked, "peft_input_cast": cast,
                   "lora_params": lora,
                   "lora_dtypes": lora_dtypes, "notes_per_step": int(train_batch["input_ids"].shape[0]),
                   "tokens_per_step": int(train_batch["attention_mask"].sum()),
                   "train_flops_per_token": train_flops, "score_flops_per_token": score_flops,
                   "backbone_gb": summary([one_copy["param_bytes"] / GB])}
            t = train[on, cast]
            tps = t["value"][0] if "value" in t else []
            row = _filled(row, t, "train", train_mfu=(tps, train_flops, peaks["datasheet"]),
                          train_mfu_measured=(tps, train_flops, peaks["measured"]))
            if on:
                s = score[cast]
                if "out_of_memory" in s:
                    row["score_out_of_memory"] = s["out_of_memory"]
                else:
                    tokens = [r * tokens_per_note for r in s["value"]]
                    _filled(row, s, "score", score_mfu=(tokens, score_flops, peaks["datasheet"]),
                            score_mfu_measured=(tokens, score_flops, peaks["measured"]))
            rows.append(row)
            if "loss" in row:
                checks.append({"what": f"{case.split(':')[0]} {weights}, {arm}: training loss finite",
                               "ok": bool(torch.isfinite(torch.tensor(row["loss"])))})
    set_checkpointing(coder.encoder, cfg.grad_checkpointing)
    name = case.split(":")[0]
    checks.append({"what": f"{name} {weights}: checkpointing on and off as asked (transformers' flag)",
                   "ok": all(r["checkpointing_as_asked"] for r in rows)})

    def both(a, b):
        return "value" in a and "value" in b

    def rates(record):
        return record["value"][0] if isinstance(record["value"], tuple) else record["value"]

    for cast in casts:
        if both(train[False, cast], train[True, cast]):
            comparisons.append({"what": f"{name} {weights}: training tokens/s, checkpointing off / on"
                                        + ("" if cast else " (peft input cast off)"),
                                "ratio": ratios(rates(train[False, cast]), rates(train[True, cast]))})
    if False in casts:
        for on in (True, False):
            if both(train[on, False], train[on, True]):
                comparisons.append({"what": f"{name} {weights}: training tokens/s, peft input cast off / on "
                                            f"(checkpointing {'on' if on else 'off'})",
                                    "ratio": ratios(rates(train[on, False]), rates(train[on, True]))})
        if both(score[False], score[True]):
            comparisons.append({"what": f"{name} {weights}: scoring notes/s, peft input cast off / on",
                                "ratio": ratios(rates(score[False]), rates(score[True]))})
    notes = [_oom_note(r) for r in rows if r.get("out_of_memory")]
    notes += [_oom_note(r, "score_out_of_memory", "scoring") for r in rows if r.get("score_out_of_memory")]
    return {"rows": rows, "checks": checks, "comparisons": comparisons, "notes": notes}
