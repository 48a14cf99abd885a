"""Bidirectional attention for decoder LLMs: LLM2Vec's first step, owned here.

LLM2Vec (McGill-NLP/llm2vec 0.2.3) turns a decoder into an encoder by subclassing each model
family with attention classes whose `is_causal` is False and a mask builder that masks padding
only. Its classes import attention modules that transformers removed in 4.48, so it pins
transformers <= 4.44.2. Transformers 5 builds every mask in `masking_utils`, which since 5.2 falls
back to a bidirectional (padding-only) mask when the model's config says `is_causal = False`,
and each attention function (eager, SDPA, flash-attention 2) asks its module's `is_causal`
when no mask is given. `make_bidirectional` sets both, on one model instance: nothing global
changes, so a causal model in the same process stays causal.

Equal to llm2vec's outputs on its own checkpoints (tests/test_llm2vec_reference.py, against
tensors llm2vec made in its pinned environment). One difference on purpose: a sliding-window
layer (Gemma 2/3, Mistral with a window, Qwen with `use_sliding_window`) keeps its window, made
symmetric (a token sees the tokens within the window on both sides), as transformers' own
bidirectional masks and Google's EmbeddingGemma do; llm2vec 0.2.3 dropped Mistral's window and
has no Gemma 2/3. Within a window (every segment <= 512 tokens, windows >= 512) nothing differs.
"""

from __future__ import annotations

from icdlib.run.config import MODEL_TYPES as SUPPORTED  # the model types made bidirectional here
from icdlib.run.errors import IcdlibError

ATTENTION = ("sdpa", "eager", "flash_attention_2")


class UnsupportedArchitecture(IcdlibError):
    """The backbone's architecture has no bidirectional conversion here."""


def check(config) -> None:
    """Refuse, in one line, a config whose model cannot be made bidirectional here."""
    model_type = getattr(config, "model_type", "") or ""
    if model_type not in SUPPORTED:
        hint = ""
        if model_type == "gemma3":
            hint = (" (a multimodal Gemma 3 checkpoint such as gemma-3-4b or MedGemma 4B; "
                    "use a text-only one: gemma-3-1b or medgemma-27b-text)")
        raise UnsupportedArchitecture(
            f"model_type {model_type or '(none)'!r} ({type(config).__name__}){hint} cannot be made bidirectional: "
            f"supported model types are {', '.join(SUPPORTED)}")


def check_attention(name: str) -> None:
    """Refuse an attention implementation the conversion does not cover, or flash-attention 2 when absent."""
    if name not in ATTENTION:
        raise IcdlibError(f"attention={name!r}: choose one of {', '.join(ATTENTION)}")
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise IcdlibError("attention=flash_attention_2 needs the flash-attn package and a CUDA GPU "
                              "(pip install flash-attn --no-build-isolation); or use attention=sdpa")


def attention_modules(model) -> list:
    """The self-attention modules of `model` (each decoder layer's `self_attn`)."""
    return [m for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "is_causal")]


def make_bidirectional(model):
    """Make `model` (a supported decoder, bare, `*ForCausalLM` or inside peft) attend both ways, in place.

    Every self-attention module gets `is_causal = False` and the config `is_causal = False`, so
    that the model's masks mask padding only. Returns the model."""
    config = model.config
    check(config)
    modules = attention_modules(model)
    if not modules:
        raise UnsupportedArchitecture(f"{type(model).__name__} has no self-attention modules with is_causal "
                                      f"to switch off; this transformers version lays {config.model_type} out differently")
    config.is_causal = False
    for module in modules:
        module.is_causal = False
        if getattr(module, "config", None) is not None:
            module.config.is_causal = False
    return model


def is_bidirectional(model) -> bool:
    """True when every self-attention module of `model` and its config are non-causal."""
    modules = attention_modules(model)
    return bool(modules) and not getattr(model.config, "is_causal", True) and not any(m.is_causal for m in modules)
