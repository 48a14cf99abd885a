"""Quantized backbones (`load_in: 4bit | 8bit`): QLoRA on a frozen bitsandbytes base, CUDA only.

`check` refuses what cannot work before anything is loaded, `bnb_config` is what
`from_pretrained(quantization_config=...)` takes, and `prepare_for_training` readies a quantized
base for LoRA. (Transformers 4.44 needed its dispatch patched to place a bitsandbytes model on
one GPU; transformers 5 places it itself, so nothing here patches transformers.) bitsandbytes is
an optional extra (`pip install -e '.[gpu]'`): it is imported only by `check`, when a quantized
load is asked for on a CUDA device, never when this module is imported (importing it takes
seconds and, on a machine without CUDA, prints warnings).
"""

from __future__ import annotations

import importlib
from importlib import metadata

import torch

from icdlib.run.errors import IcdlibError

LOAD_IN = ("native", "4bit", "8bit")
INSTALL = "pip install -e '.[gpu]'"


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes version, read from its metadata (nothing is imported); None if absent."""
    try:
        return metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return None


def _known(load_in: str) -> None:
    if load_in not in LOAD_IN:
        raise IcdlibError(f"load_in must be one of {', '.join(LOAD_IN)}, got {load_in!r}")


def check(load_in: str, device: torch.device) -> None:
    """Refuse, in one line, a quantized load that cannot run on `device` or without bitsandbytes.

    `native` always passes. `4bit` / `8bit` need a CUDA device and an importable bitsandbytes;
    this is the one place that imports it.
    """
    _known(load_in)
    if load_in == "native":
        return
    if torch.device(device).type != "cuda":
        raise IcdlibError(f"load_in={load_in} needs a CUDA GPU (bitsandbytes); on CPU/MPS use load_in=native")
    version = bitsandbytes_version()
    if version is None:
        raise IcdlibError(f"load_in={load_in} needs bitsandbytes, which is not installed: {INSTALL}")
    try:
        importlib.import_module("bitsandbytes")
    except Exception as e:  # a missing CUDA library shows up here as RuntimeError or OSError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise IcdlibError(f"load_in={load_in}: bitsandbytes {version} is installed but does not import "
                          f"({first}); reinstall it with {INSTALL}") from None


def bnb_config(load_in: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The `transformers.BitsAndBytesConfig` for `load_in`, or None for `native`.

    4bit: NF4 weights with double quantization (the QLoRA recipe), matrix products in
    `compute_dtype` (bf16, or fp16 on GPUs without bf16). 8bit: LLM.int8() weights (outlier
    threshold 6.0, transformers' default). Nothing of bitsandbytes is imported; transformers only reads
    its installed version, so the package must be installed (see `check`).
    """
    _known(load_in)
    if load_in == "native":
        return None
    if compute_dtype not in (torch.bfloat16, torch.float16):
        raise IcdlibError(f"load_in={load_in} computes in bf16 or fp16, not {compute_dtype}: set precision=bf16 or fp16")
    if bitsandbytes_version() is None:
        raise IcdlibError(f"load_in={load_in} needs bitsandbytes, which is not installed: {INSTALL}")
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model: torch.nn.Module) -> bool:
    """True for a model transformers loaded with a bitsandbytes config (4-bit or 8-bit)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model: torch.nn.Module, gradient_checkpointing: bool = True) -> torch.nn.Module:
    """Ready a (quantized) base for LoRA: every base weight frozen, non-reentrant gradient checkpointing.

    This is peft's `prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=
    {"use_reentrant": False})` without its first step. In peft (0.17.1 to 0.21.2, tested) that
    function casts *every* fp16/bf16 parameter that is not a `Params4bit` to fp32. On a 4-bit
    Llama-3-8B those are the embeddings (128,256 × 4,096: 1.05 GB in bf16 become 2.1 GB) and the
    norms, and an fp32 embedding output then carries the whole residual stream in fp32 (bitsandbytes
    returns each layer's output in its input's dtype), doubling the activations kept for
    checkpointing. On a model that is not quantized, the cast turns all 8 B weights into fp32 (16 GB
    become 32 GB). icdlib computes in bf16 under autocast (fp16 with loss scaling on GPUs without
    bf16), where the fp32 norms buy nothing, so this keeps every dtype as loaded. The other steps
    are the same: freeze all parameters (LoRA adds the trainable ones afterwards) and enable
    gradient checkpointing with `use_reentrant=False`, which needs no `enable_input_require_grads`
    hook (gradients reach the LoRA weights inside each checkpointed layer although the embedding
    output does not require grad). Works on a native model too (freeze + checkpointing only).
    """
    from icdlib.model.models import checkpoint_activations

    model.requires_grad_(False)
    if gradient_checkpointing:
        checkpoint_activations(model)
    return model
