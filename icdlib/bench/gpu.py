"""`gpu` suite: LoRA training and scoring of Llama-3-8B- and Mistral-7B-shaped LLM2Vec coders, bf16 and 4-bit.

Each backbone is transformers' `LlamaModel` / `MistralModel` made bidirectional
(`icdlib.bidirectional`), built from a config with random weights, directly on the GPU in bf16
(nothing is downloaded; random weights cost the same time and memory as trained ones):

- Llama-3-8B shape: hidden 4,096, 32 layers, 32 heads, 8 KV heads, MLP 14,336, vocab 128,256;
- Mistral-7B shape: the same but vocab 32,000.

On top, as a run does it: `backbones.make_trainable` (LoRA r=16 on all seven projections, from
params/llama3.yaml and params/mistral.yaml), an `ICDCoder` label-attention head over 8,922 codes,
AdamW (`train.optimizer_for`), autocast bf16, non-reentrant gradient checkpointing. Input: one
note of 8 segments × 512 real tokens per training step. Recorded per backbone and weights:

- training tokens/s and MFU, peak GPU memory (`torch.cuda.max_memory_allocated`, from before the
  backbone is built, so weights, LoRA, head, AdamW state and activations);
- scoring notes/s (`torch.no_grad`, autocast bf16, 8 notes per batch) and its peak memory;
- 4-bit: the same with the backbone loaded through `icdlib.quantize` (NF4, double quantization,
  bf16 compute: QLoRA). Random weights are quantized the way a real checkpoint is: the bf16
  model is saved to a scratch folder on local disk and loaded with
  `from_pretrained(quantization_config=quantize.bnb_config("4bit"))`;
- "one backbone in memory": the bytes of one backbone copy (parameters × element size, and the
  allocator's growth while building it), and the peak memory of scoring the best checkpoint
  (LoRA + head weights) by a second backbone load beside the live model against loading it into
  the live model (bf16; the optimizer is freed first in both).

MFU counts model FLOPs, not hardware FLOPs: the forward recomputed by gradient checkpointing is
not counted. Per token, with N = weights of the backbone's linear layers (embeddings excluded: a
lookup), N_lora = LoRA weights, L layers, width d, s = segment length, C codes, A = attention_dim:

    training = 4·N + 6·N_lora + 12·L·s·d + 3·F_head      scoring = 2·N + 2·N_lora + 4·L·s·d + F_head
    F_head   = 2·(d·A + A·C + C·d)   (label-attention forward)

The frozen base runs forward (2·N) and backward through its activations (2·N) but computes no
weight gradients; LoRA runs all three (6·N_lora); attention scores and values cost 4·s·d per
token and layer forward over the whole (bidirectional) segment, twice that backward. MFU is that
count per second over the device's dense bf16 peak from PEAK_BF16_TFLOPS (matched on the CUDA
device name); an unknown device, or the CPU, gets MFU null.

`--scale full` needs a CUDA GPU with room for two bf16 copies of an 8B backbone (15 GB each)
for the one-backbone comparison; a second load that runs out of memory is recorded as such.
Most of its few minutes (an estimate: it has not been run yet) go to saving and quantizing the
two bf16 models for the 4-bit rows. Without CUDA it refuses and records nothing. `--scale smoke` runs the same code at a toy shape (hidden 64, 2 layers, vocab
1,000, 2 × 32 tokens, 100 codes) in seconds, on the CPU when there is no GPU, where the 4-bit
rows are reported as skipped and there is no GPU memory to read.
"""

from __future__ import annotations

import gc
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from icdlib.bench.harness import summary
from icdlib.errors import IcdlibError

FULL_SHAPES = {
    "Llama-3-8B": {"arch": "llama", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336,
                   "vocab": 128256, "rope_theta": 500000.0, "max_positions": 8192, "params": "llama3"},
    "Mistral-7B": {"arch": "mistral", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336,
                   "vocab": 32000, "rope_theta": 1000000.0, "max_positions": 32768, "params": "mistral"},
}
TOY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 1000, "max_positions": 64}
SMOKE_SHAPES = {
    "Llama-3-8B (toy shape)": {**FULL_SHAPES["Llama-3-8B"], **TOY},
    "Mistral-7B (toy shape)": {**FULL_SHAPES["Mistral-7B"], **TOY},
}
SCALES = {
    "full": {"shapes": FULL_SHAPES, "labels": 8922, "segments": 8, "segment_length": 512, "codes_per_note": 16,
             "steps": 4, "score_notes": 8, "score_batches": 2, "mntp_chunks": 8, "needs_cuda": True},
    "smoke": {"shapes": SMOKE_SHAPES, "labels": 100, "segments": 2, "segment_length": 32, "codes_per_note": 5,
              "steps": 2, "score_notes": 2, "score_batches": 2, "mntp_chunks": 2, "needs_cuda": False},
}
# Dense (no sparsity) bf16 tensor-core peaks of NVIDIA's data sheets, TFLOP/s, first match on the
# CUDA device name wins; names not listed (NVL variants included) get no MFU.
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

    from icdlib.bidirectional import make_bidirectional

    with torch.device(device):
        return make_bidirectional(AutoModel.from_config(model_config(shape), dtype=dtype, attn_implementation="sdpa"))


def load_quantized(folder: Path, shape: dict, load_in: str, device: torch.device, dtype: torch.dtype):
    """The saved backbone at `folder`, quantized by bitsandbytes while it loads (as a real checkpoint is)."""
    from transformers import AutoModel

    from icdlib import quantize
    from icdlib.bidirectional import make_bidirectional

    quantize.check(load_in, device)
    return make_bidirectional(AutoModel.from_pretrained(
        str(folder), quantization_config=quantize.bnb_config(load_in, dtype), dtype=dtype,
        device_map={"": device.index or 0}, attn_implementation="sdpa"))


def build_coder(base: torch.nn.Module, cfg, labels: int, device: torch.device):
    """LoRA + label-attention head on `base`, gradient checkpointing on, as `icdlib.train` sets it up."""
    from icdlib import backbones
    from icdlib.models import ICDCoder, checkpoint_activations

    encoder = backbones.make_trainable(base, cfg)
    inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    checkpoint_activations(inner)
    torch.manual_seed(cfg.seed)
    coder = ICDCoder(encoder, labels, cfg.head, cfg.attention_dim)
    coder.head.to(device)  # the backbone is in place already (a quantized one refuses `.to`)
    return coder


def backbone_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers × element size (a 4-bit weight counts its packed bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def make_batch(notes: int, plan: dict, vocab: int, device: torch.device, seed: int) -> dict:
    """`notes` notes of `segments` × `segment_length` real (random) tokens and a few positive codes each."""
    g = torch.Generator().manual_seed(seed)
    shape = (notes, plan["segments"], plan["segment_length"])
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
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def train_runs(coder, cfg, batch, steps: int, runs: int, warmup: int, device, dtype, say) -> tuple[list[float], float]:
    """Tokens/s of `runs` timed runs of `steps` training steps each (after `warmup` runs); and the last loss."""
    from icdlib.models import loss_fn
    from icdlib.train import autocast, optimizer_for

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


def mntp_runs(base, cfg, plan: dict, vocab: int, runs: int, warmup: int, device, dtype, say) -> tuple[list[float], float]:
    """Tokens/s of MNTP steps (`mntp.train_step`: masking, loss over the masked positions through
    a frozen LM head, LoRA, AdamW, clipping, gradient checkpointing) on `base`; and the last loss."""
    from icdlib import mntp
    from icdlib.models import checkpoint_activations

    obj = mntp.objective(base, cfg, None)
    obj.head.requires_grad_(False)  # a real checkpoint's LM head stays frozen in the recipe
    checkpoint_activations(obj.encoder.get_base_model())
    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.mntp_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (plan["mntp_chunks"], plan["segment_length"])
    ids = torch.randint(vocab, shape, generator=g)
    recipe = mntp.Masking("bert", mntp.RECIPES["bert"], 0)
    obj.train()
    rates, loss = [], torch.tensor(float("nan"))
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(plan["steps"]):
            inputs, labels = mntp.mask_tokens(ids, torch.zeros(shape, dtype=torch.bool), recipe, vocab, g)
            loss = mntp.train_step(obj, optimizer, params, inputs, labels, device, dtype)
        _sync(device)
        rate = ids.numel() * plan["steps"] / (time.perf_counter() - t0)
        say(f"MNTP {'warm-up' if i < warmup else f'run {i - warmup + 1}/{runs}'}: {rate:,.0f} tokens/s, "
            f"loss {float(loss.detach()):.4f}")
        if i >= warmup:
            rates.append(rate)
    del optimizer, obj
    return rates, float(loss.detach())


@torch.no_grad()
def score_runs(coder, batches: list[dict], runs: int, warmup: int, device, dtype, say) -> list[float]:
    """Notes/s of `runs` timed passes over `batches` (after `warmup` passes)."""
    from icdlib.train import autocast

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
    from icdlib.train import autocast

    coder.eval()
    with autocast(device, dtype):
        torch.sigmoid(coder(batch["input_ids"], batch["attention_mask"]))
    _sync(device)


def run(scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir: Path | None = None,
        progress: bool = True, **_) -> dict:
    from icdlib import quantize

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

    scratch: list[Path] = []  # the bf16 checkpoints saved for the 4-bit loads, removed whatever happens
    try:
        return _run(plan, repeats, warmup, progress, device, dtype, device_name, device_gb, peak, skip_4bit,
                    scratch_root, scratch)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _run(plan, repeats, warmup, progress, device, dtype, device_name, device_gb, peak, skip_4bit, scratch_root,
         scratch) -> dict:
    from icdlib import config

    rows, checks, notes, comparisons, memory = [], [], [], [], {}
    for name, shape in plan["shapes"].items():
        def say(msg, _name=name):
            if progress:
                print(f"[bench gpu] {_name}: {msg}", flush=True)

        cfg = config.resolve(shape["params"], {"segment_length": plan["segment_length"],
                                               "max_segments": plan["segments"]})
        case = (f"{name}: hidden {shape['hidden']:,}, {shape['layers']} layers, {shape['heads']}/{shape['kv_heads']} "
                f"heads, vocab {shape['vocab']:,}; LoRA r={cfg.lora_r} × {len(cfg.lora_targets)} projections, "
                f"{plan['labels']:,} codes; 1 note × {plan['segments']} × {plan['segment_length']} tokens")
        train_batch = make_batch(1, plan, shape["vocab"], device, cfg.seed)
        score_batches = [make_batch(plan["score_notes"], plan, shape["vocab"], device, cfg.seed + 1 + i)
                         for i in range(plan["score_batches"])]

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
        lora = sum(p.numel() for p in coder.encoder.parameters() if p.requires_grad)
        row = _measure(coder, cfg, plan, train_batch, score_batches, repeats, warmup, device, dtype, say,
                       shape, lora, peak, case, "bf16 weights, LoRA (autocast bf16)", one_copy)
        rows.append(row)
        checks.append({"what": f"{name} bf16: training loss finite", "ok": bool(torch.isfinite(torch.tensor(row["loss"])))})

        # ---- one backbone in memory: score the best checkpoint in the live model, or in a second load
        best = {k: p.detach().to("cpu", copy=True) for k, p in coder.named_parameters() if p.requires_grad}
        _free(device)
        coder.load_state_dict(best, strict=False)
        _score_once(coder, score_batches[0], device, dtype)
        reuse_peak = _peak_gb(device)
        _free(device)
        second_peak, out_of_memory = None, False
        try:
            second = build_coder(build_base(shape, device, dtype), cfg, plan["labels"], device)
            loaded = second.load_state_dict(best, strict=False)
            _score_once(second, score_batches[0], device, dtype)
            second_peak = _peak_gb(device)
            checks.append({"what": f"{name}: the best checkpoint loads into a second backbone",
                           "ok": not loaded.unexpected_keys})
            del second
        except torch.cuda.OutOfMemoryError:  # a result too: two copies do not fit this device
            out_of_memory = True
        del best
        _free(device)
        memory[name] = {"bf16": {**one_copy, "score_peak_gb_reusing_live_model": reuse_peak,
                                 "score_peak_gb_second_backbone_load": second_peak,
                                 "second_backbone_load_out_of_memory": out_of_memory}}
        line = (f"{name}, one backbone in memory: a bf16 copy is {one_copy['param_bytes'] / GB:,.2f} GB "
                f"({counted:,} parameters × 2 bytes), what scoring the best checkpoint in the live model saves "
                f"over loading a second backbone")
        if out_of_memory:
            line += (f"; the second load ran out of the device's {device_gb:,.0f} GB, scoring in the live model "
                     f"peaked at {reuse_peak:,.2f} GB")
        elif reuse_peak is not None:
            line += f"; measured peak {second_peak:,.2f} GB (second load) against {reuse_peak:,.2f} GB (reuse)"
            comparisons.append({"what": f"{name}: peak memory scoring the best checkpoint, second backbone load / "
                                        f"live model reused", "ratio": summary([second_peak / reuse_peak])})
        notes.append(line + ".")
        del coder, base

        # ---- the MNTP stage on a fresh bf16 backbone
        _free(device)
        base = build_base(shape, device, dtype)
        mntp_tps, mntp_loss = mntp_runs(base, cfg, plan, shape["vocab"], repeats, warmup, device, dtype, say)
        peak_gb = _peak_gb(device)
        rows.append({"case": case, "system": f"MNTP stage: bf16 weights, LoRA, {plan['mntp_chunks']} chunks × "
                                              f"{plan['segment_length']} tokens per step, 20% masked",
                     "train_tps": summary(mntp_tps), "train_peak_gb": None if peak_gb is None else summary([peak_gb]),
                     "backbone_gb": summary([one_copy["param_bytes"] / GB]), "loss": mntp_loss})
        checks.append({"what": f"{name} MNTP: loss finite", "ok": bool(torch.isfinite(torch.tensor(mntp_loss)))})
        del base

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
        q_cfg = config.resolve(shape["params"], {"segment_length": plan["segment_length"],
                                                 "max_segments": plan["segments"], "load_in": "4bit"})
        coder = build_coder(base, q_cfg, plan["labels"], device)
        lora = sum(p.numel() for p in coder.encoder.parameters() if p.requires_grad)
        row = _measure(coder, q_cfg, plan, train_batch, score_batches, repeats, warmup, device, dtype, say,
                       shape, lora, peak, case, system, one_copy)
        rows.append(row)
        checks.append({"what": f"{name} 4-bit: training loss finite", "ok": bool(torch.isfinite(torch.tensor(row["loss"])))})
        memory[name]["4bit"] = one_copy
        notes.append(f"{name}, one backbone in memory at 4 bits: {one_copy['param_bytes'] / GB:,.2f} GB of "
                     f"parameters ({one_copy['allocated_bytes'] / GB:,.2f} GB allocated while loading).")
        del coder, base
        _free(device)

    if skip_4bit is not None:
        notes.append(f"4-bit rows skipped: {skip_4bit}.")
    if peak is None:
        notes.append(f"MFU left blank: no dense bf16 peak is known for {device_name}.")
    if device.type != "cuda":
        notes.append("Peak GPU memory left blank: measured on the CPU (smoke scale), where there is none.")
    return {
        "description": (f"Random-weight LLM2Vec backbones built from configs on {device_name}; one training step is "
                        f"one note of {plan['segments']} × {plan['segment_length']} tokens (all real) with AdamW, "
                        f"gradient clipping and non-reentrant gradient checkpointing; scoring is "
                        f"{plan['score_notes']} notes per batch under torch.no_grad. Memory in GB of 10^9 bytes: "
                        f"torch.cuda.max_memory_allocated from before the backbone is built. MFU: model FLOPs "
                        f"(training {TRAIN_FORMULA}; see icdlib/bench/gpu.py) over "
                        + ("no known peak, so none." if peak is None else f"a dense bf16 peak of {peak:,.0f} TFLOP/s.")),
        "columns": [["train_tps", "train tokens/s", 0], ["train_mfu", "train MFU %", 1],
                    ["train_peak_gb", "train peak GB", 1], ["score_nps", "scoring notes/s", 2],
                    ["score_mfu", "scoring MFU %", 1], ["score_peak_gb", "scoring peak GB", 1],
                    ["backbone_gb", "backbone GB", 2]],
        "rows": rows,
        "comparisons": comparisons,
        "checks": checks,
        "notes": notes,
        "device": device_name,
        "device_memory_gb": device_gb,
        "peak_bf16_tflops": peak,
        "flops": {"training_per_token": TRAIN_FORMULA, "scoring_per_token": SCORE_FORMULA,
                  "N": "weights of the linear layers (embeddings excluded)", "N_lora": "LoRA weights",
                  "L": "layers", "d": "hidden size", "s": "segment length", "C": "codes", "A": "attention_dim",
                  "not_counted": "the forward pass recomputed by gradient checkpointing"},
        "one_backbone": memory,
        "plan": {k: v for k, v in plan.items() if k != "shapes"},
        "shapes": plan["shapes"],
    }


def _measure(coder, cfg, plan, train_batch, score_batches, repeats, warmup, device, dtype, say, shape, lora,
             peak, case, system, one_copy) -> dict:
    """One row: training and scoring of `coder`, with MFU and peak memory."""
    tokens_per_note = plan["segments"] * plan["segment_length"]
    train_tps, loss = train_runs(coder, cfg, train_batch, plan["steps"], repeats, warmup, device, dtype, say)
    train_peak = _peak_gb(device)
    coder.zero_grad(set_to_none=True)
    _free(device)
    score_nps = score_runs(coder, score_batches, repeats, warmup, device, dtype, say)
    score_peak = _peak_gb(device)
    train_flops = flops_per_token(shape, lora, plan["segment_length"], plan["labels"], cfg.attention_dim, True)
    score_flops = flops_per_token(shape, lora, plan["segment_length"], plan["labels"], cfg.attention_dim, False)
    mfu = (lambda rates, f: None if peak is None else summary([100.0 * r * f / (peak * 1e12) for r in rates]))
    return {"case": case, "system": system, "train_tps": summary(train_tps),
            "train_mfu": mfu(train_tps, train_flops),
            "train_peak_gb": None if train_peak is None else summary([train_peak]),
            "score_nps": summary(score_nps), "score_mfu": mfu([r * tokens_per_note for r in score_nps], score_flops),
            "score_peak_gb": None if score_peak is None else summary([score_peak]),
            "backbone_gb": summary([one_copy["param_bytes"] / GB]),
            "loss": loss, "lora_params": lora, "train_flops_per_token": train_flops,
            "score_flops_per_token": score_flops, "tokens_per_step": int(train_batch["attention_mask"].sum())}
