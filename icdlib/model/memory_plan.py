"""Will a run fit its GPU? The memory of step 03 worked out from the configuration, before anything loads.

An 8B backbone that runs out of memory does so after minutes of loading, tokenising and, with
MNTP, adapting. The plan needs none of that: the parameters of a run (`Config`) and the
backbone's shape (hidden size, layers, heads, KV heads, MLP size, vocabulary) give every large
tensor of a training step, in bytes:

- weights: the frozen backbone in the weights' dtype (bf16 on CUDA; fp32 masters when
  `train_backbone: full`; NF4 with double-quantized scales for `load_in: 4bit`, int8 with a scale
  per row for 8bit; embeddings and norms stay bf16 in both);
- what trains, with AdamW: fp32 weight, gradient and two moments, 16 B a parameter (LoRA,
  the head, or the whole backbone);
- activations: the tensors autograd keeps for backward, per token and layer (`layer_parts`),
  for `batch_size × max_segments × segment_length` tokens (the segments of a micro-batch are
  encoded as one batch of sequences; the plan counts every segment as used, the worst case).
  With gradient checkpointing each layer keeps only its input, and one layer at a time is
  recomputed in backward;
- the head's tensors (label attention: weights over labels × tokens, per-label vectors labels ×
  hidden per note), and the gradients a backward pass holds at its largest moment;
- the MNTP stage when `mntp_steps > 0` (its own batch, the LM head and its logits);
- CUDA's context and the caching allocator's slack (`CUDA_CONTEXT`, `ALLOCATOR_SLACK`).

Units: GB = 10^9 bytes. A GPU sold as "80 GB" holds 80 GiB (85.9 GB, of which CUDA reports about
85.0 GB), so planning against `--gpu-memory 80` in GB leaves it about 5 GB to spare.

What is counted was checked on the CPU at toy shape (tests/test_memory_plan.py): the activation
term against the bytes autograd actually keeps (`torch.autograd.graph.saved_tensors_hooks`) and
the memory held after a forward pass (profiler), with and without checkpointing. What is not
counted: validation's forward passes (no gradients: smaller than a training step), the optimizer
step's temporaries (they come after backward has freed the activations), and the small tensors
(token ids, masks) besides the attention mask.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from icdlib.run.config import Config, backbone_config, is_local_path, resolve
from icdlib.run.errors import IcdlibError

GB = 10**9
CUDA_CONTEXT = 10**9  # the CUDA context, cuBLAS and kernels: PyTorch forums report 0.3-0.9 GB, rounded up
ALLOCATOR_SLACK = 0.10  # the caching allocator's rounding and fragmentation, a share of the tensors (assumed)
RNG_STATE = 5056  # torch.get_rng_state(): what a checkpointed layer keeps to replay its dropout
CUDA_RNG_STATE = 16  # and the CUDA generator's seed and offset
ADAM = 16  # bytes per trained parameter: fp32 weight, gradient, AdamW's two moments
NF4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit scale per 64 weights, an fp32 scale per 256 scales
MIMIC3_DICTIONARY = 14567 + 3882  # labels: all on MIMIC-III: D_ICD_DIAGNOSES + D_ICD_PROCEDURES
ASSUMED_LABELS = 8922  # MIMIC-III full's label space, when a run's is not known before step 01


class MemoryPlanError(IcdlibError):
    """A run that will not fit its GPU, or a backbone whose shape the plan cannot find."""


class DoesNotFit(MemoryPlanError):
    """The plan says the run needs more memory than the GPU has."""


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder that decide its memory; `source` says where they came from."""

    name: str
    source: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    model_type: str = "llama"
    norms: int = 2  # RMSNorms per layer (Gemma 2 and 3: 4)
    qk_norm: bool = False  # an RMSNorm on every query and key head (Qwen3, Gemma 3, OLMo 2)
    attention_bias: bool = False
    tied: bool = False
    layer_kinds: int = 1  # kinds of attention layer, each with its RoPE tables and mask (Gemma 3: sliding, global)

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of the seven projections of a layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


# The backbones the shipped params files name, from their config.json on the hub.
SHAPES = {
    "Llama-3-8B": dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256),
    "Mistral-7B": dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=32000,
                       model_type="mistral"),
    "Qwen3-8B": dict(hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=12288, vocab=151936,
                     model_type="qwen3", qk_norm=True),
    "Gemma-3-27B": dict(hidden=5376, layers=62, heads=32, kv_heads=16, head_dim=128, intermediate=21504, vocab=262208,
                        model_type="gemma3_text", norms=4, qk_norm=True, tied=True, layer_kinds=2),
    "Sheared-LLaMA-1.3B": dict(hidden=2048, layers=24, heads=16, kv_heads=16, head_dim=128, intermediate=5504,
                               vocab=32000),
}
HUB_NAMES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "Llama-3-8B",
    "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp": "Llama-3-8B",
    "mistralai/Mistral-7B-Instruct-v0.2": "Mistral-7B",
    "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp": "Mistral-7B",
    "BioMistral/BioMistral-7B": "Mistral-7B",
    "Qwen/Qwen3-8B-Base": "Qwen3-8B",
    "google/medgemma-27b-text-it": "Gemma-3-27B",
    "princeton-nlp/Sheared-LLaMA-1.3B": "Sheared-LLaMA-1.3B",
    "McGill-NLP/LLM2Vec-Sheared-LLaMA-mntp": "Sheared-LLaMA-1.3B",
}
QK_NORM_TYPES = ("qwen3", "gemma3_text", "gemma3", "olmo2")
FOUR_NORM_TYPES = ("gemma2", "gemma3_text", "gemma3")


# ---------------------------------------------------------------- the backbone's shape

def from_config(values: dict, name: str, source: str) -> Architecture:
    """An Architecture from a transformers config.json (as a dict)."""
    heads = values["num_attention_heads"]
    model_type = values.get("model_type", "llama")
    return Architecture(
        name=name, source=source, hidden=values["hidden_size"], layers=values["num_hidden_layers"], heads=heads,
        kv_heads=values.get("num_key_value_heads") or heads,
        head_dim=values.get("head_dim") or values["hidden_size"] // heads,
        intermediate=values["intermediate_size"], vocab=values["vocab_size"], model_type=model_type,
        norms=4 if model_type in FOUR_NORM_TYPES else 2, qk_norm=model_type in QK_NORM_TYPES,
        attention_bias=bool(values.get("attention_bias", False)), tied=bool(values.get("tie_word_embeddings", False)),
        layer_kinds=2 if model_type in ("gemma3_text", "gemma3") else 1)


def tiny_architecture(cfg: Config) -> Architecture:
    """The tiny backbone `icdlib.model.backbones.tiny_config` builds from cfg.tiny_* (its vocabulary is
    at most tiny_vocab: the BPE tokenizer learns up to that many tokens)."""
    source = (f"tiny backbone: tiny_hidden={cfg.tiny_hidden}, tiny_layers={cfg.tiny_layers}, "
              f"tiny_heads={cfg.tiny_heads}, tiny_vocab={cfg.tiny_vocab}")
    return Architecture(name="tiny", source=source,
                        hidden=cfg.tiny_hidden, layers=cfg.tiny_layers, heads=cfg.tiny_heads, kv_heads=cfg.tiny_heads,
                        head_dim=cfg.tiny_hidden // cfg.tiny_heads, intermediate=4 * cfg.tiny_hidden,
                        vocab=cfg.tiny_vocab, model_type=cfg.model_type)


def architecture(cfg: Config) -> Architecture:
    """The shape of the backbone `cfg` trains: read from the config.json of its weights' folder
    (base_model_path, then model_path) when it is a local folder or in the Hugging Face cache, else
    from SHAPES by hub name, else one MemoryPlanError saying what to point at."""
    if not cfg.model_path and not cfg.base_model_path:
        return tiny_architecture(cfg)
    refs = [r for r in (cfg.base_model_path, cfg.model_path) if r]
    for ref in refs:
        path = backbone_config(ref)
        if path is not None:
            values = json.loads(path.read_text(encoding="utf-8"))
            return from_config(values, Path(ref).name if is_local_path(ref) else ref, f"config.json in {path.parent}")
    for ref in refs:
        if ref in HUB_NAMES:
            name = HUB_NAMES[ref]
            return Architecture(name=name, source=f"icdlib's table of shipped backbones ({ref}; not downloaded)",
                                **SHAPES[name])
    raise MemoryPlanError(f"no shape known for {refs[0]}: it is not a local folder holding config.json, not in the "
                          f"Hugging Face cache, and not one of the shipped backbones ({', '.join(SHAPES)}): point "
                          f"model_path or base_model_path at its folder")


def label_count(cfg: Config, labels: int | None = None) -> tuple[int, str]:
    """(labels, where the number came from): given, the benchmark's published count, CAML's 50,
    MIMIC-III's dictionaries for `labels: all`, or MIMIC-III full's 8,922 assumed."""
    from icdlib.data.preprocess import EXPECTED

    if labels:
        return labels, "given"
    if cfg.labels == "top50":
        return 50, "labels: top50"
    published = EXPECTED.get(cfg.benchmark, (None,) * 5)[4]
    if published:
        return published, f"benchmark {cfg.benchmark}'s published count"
    if cfg.labels == "all" and cfg.dataset == "mimic3":
        return MIMIC3_DICTIONARY, "labels: all, MIMIC-III's 14,567 diagnosis + 3,882 procedure codes"
    return ASSUMED_LABELS, "not known before step 01: MIMIC-III full's 8,922 assumed (--labels N)"


# ---------------------------------------------------------------- parameters

def parameter_counts(arch: Architecture) -> dict[str, int]:
    """Parameters of the bare model icdlib loads (`AutoModel`: no LM head): the linear layers'
    weights (what bitsandbytes quantizes) and the rest (embeddings, norms, biases)."""
    linear = arch.layers * sum(i * o for i, o in arch.projections().values())
    bias = arch.layers * (arch.q_width + 2 * arch.kv_width) if arch.attention_bias else 0
    norms = arch.layers * (arch.norms * arch.hidden + (2 * arch.head_dim if arch.qk_norm else 0)) + arch.hidden
    return {"linear": linear, "other": arch.vocab * arch.hidden + norms + bias}


def lora_parameters(cfg: Config, arch: Architecture) -> int:
    """r × (in + out) for every targeted projection of every layer."""
    shapes = arch.projections()
    unknown = [t for t in cfg.lora_targets if t not in shapes]
    if unknown:
        raise MemoryPlanError(f"lora_targets {', '.join(unknown)}: the plan knows the seven projections "
                              f"{', '.join(shapes)}")
    return arch.layers * sum(cfg.lora_r * (shapes[t][0] + shapes[t][1]) for t in cfg.lora_targets)


def head_parameters(cfg: Config, arch: Architecture, labels: int) -> int:
    """The head's weights (`icdlib.model.models`): label attention's project, query, per-label weight and bias."""
    if cfg.head == "label_attention":
        return arch.hidden * cfg.attention_dim + cfg.attention_dim * labels + labels * arch.hidden + labels
    return labels * arch.hidden + labels


# ---------------------------------------------------------------- dtypes

def compute_bytes(cfg: Config, device: str) -> int:
    """Bytes of an activation: bf16/fp16 under autocast on CUDA (precision auto), else fp32
    (as `icdlib.model.inference.compute_dtype`; fp16 GPUs take the same 2 bytes as bf16)."""
    if cfg.precision in ("bf16", "fp16"):
        return 2
    return 2 if cfg.precision == "auto" and device == "cuda" else 4


def weight_bytes(cfg: Config, device: str) -> int:
    """Bytes of a backbone weight as loaded: the compute dtype, fp32 masters when it trains whole."""
    return 4 if cfg.train_backbone == "full" else compute_bytes(cfg, device)


# ---------------------------------------------------------------- terms

@dataclass(frozen=True)
class Term:
    name: str
    formula: str
    bytes: int


@dataclass(frozen=True)
class Stage:
    """One phase of step 03 (fine-tuning, or the MNTP stage before it): its terms and their sum."""

    name: str
    terms: tuple[Term, ...]
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)


def _n(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.3g}"


def weights_term(cfg: Config, arch: Architecture, device: str) -> Term:
    """The backbone's weights as loaded (bitsandbytes quantizes the linear layers only)."""
    counts = parameter_counts(arch)
    total = counts["linear"] + counts["other"]
    w = weight_bytes(cfg, device)
    shards = cfg.nproc if cfg.train_backbone == "full" and cfg.nproc > 1 else 1
    if cfg.load_in == "4bit":
        return Term("weights, NF4 (load_in 4bit)", f"{_n(counts['linear'])} linear × {NF4:.4f} B + "
                    f"{_n(counts['other'])} others × 2 B", round(counts["linear"] * NF4 + counts["other"] * 2))
    if cfg.load_in == "8bit":
        rows = arch.layers * sum(o for _, o in arch.projections().values())
        return Term("weights, int8 (load_in 8bit)", f"{_n(counts['linear'])} linear × 1 B + {_n(rows)} row scales "
                    f"× 4 B + {_n(counts['other'])} others × 2 B", counts["linear"] + 4 * rows + 2 * counts["other"])
    kind = {4: "fp32", 2: "bf16"}[w] + (" masters" if cfg.train_backbone == "full" else ", frozen")
    shard = f" / {shards} processes (FSDP)" if shards > 1 else ""
    return Term(f"weights ({kind})", f"{_n(total)} params × {w} B{shard}", total * w // shards)


def trained_terms(cfg: Config, arch: Architecture, device: str, labels: int | None) -> list[Term]:
    """What AdamW trains: the head, LoRA, or the whole backbone (its gradients and moments; its fp32
    weights are the `weights` term); the bf16 copies autocast makes of fp32 weights for their
    matmuls, kept for backward; DDP's gradient buckets. `labels` None: no ICD head (MNTP)."""
    terms = []
    a = compute_bytes(cfg, device)
    head = head_parameters(cfg, arch, labels) if labels is not None else 0
    if labels is not None:
        terms.append(Term(f"head ({cfg.head}) + AdamW", f"{_n(head)} params × {ADAM} B (fp32 weight, grad, 2 moments)",
                          head * ADAM))
    lora = lora_parameters(cfg, arch) if cfg.train_backbone == "lora" else 0
    if lora:
        terms.append(Term("LoRA + AdamW", f"{arch.layers} layers × r {cfg.lora_r} × Σ(in + out) of "
                          f"{len(cfg.lora_targets)} projections = {_n(lora)} params × {ADAM} B", lora * ADAM))
    # with checkpointing a layer's copies are made again when it is recomputed: one layer's at a time
    cast = (lora // arch.layers if cfg.grad_checkpointing else lora) + (
        arch.hidden * cfg.attention_dim + cfg.attention_dim * labels
        if labels is not None and cfg.head == "label_attention" else 0)
    if cfg.train_backbone == "full":
        counts = parameter_counts(arch)
        total = counts["linear"] + counts["other"]
        shards = cfg.nproc if cfg.nproc > 1 else 1
        terms.append(Term("full fine-tuning: grads + AdamW", f"{_n(total)} params × 12 B (grad, 2 moments)"
                          + (f" / {shards} processes (FSDP)" if shards > 1 else ""), total * 12 // shards))
        cast += counts["linear"]
    if a < 4 and cast:
        terms.append(Term("autocast's weight copies", f"{_n(cast)} fp32 weights × {a} B, kept for backward", cast * a))
    if cfg.nproc > 1 and cfg.train_backbone != "full":
        terms.append(Term("DDP gradient buckets", f"{_n(head + lora)} trained params × 4 B", (head + lora) * 4))
    return terms


def layer_parts(cfg: Config, arch: Architecture, device: str, length: int, padded: bool = True,
                first: bool = False) -> list[tuple[str, int, str]]:
    """(part, bytes per token, formula) of what one decoder layer keeps for backward.

    a = activation bytes; m = a dropout mask per element (CUDA's fused dropout: a 1-byte bool;
    the CPU's: a noise tensor in the input's dtype); norms keep their input in fp32 (RMSNorm
    upcasts) and 1/rms. LoRA keeps, per targeted projection, the dropout mask and the dropped-out
    input lora_A multiplies, and lora_A's r outputs. Attention keeps q, k, v (repeated to every
    head when a padding mask is present: transformers' SDPA path repeats grouped K/V then), the
    output and the log-sum-exp (SDPA), with the mask as an additive bias of L values per token;
    eager instead keeps the L × heads scores (fp32 softmax, and its cast). The gated MLP keeps
    gate, act(gate) and up. A fully trained layer also keeps each linear's input (a copy per
    projection when autocast casts it; o_proj's is SDPA's output itself) and each norm's output.
    `first`: the first layer of a LoRA backbone, whose input (frozen embeddings) needs no gradient."""
    a = compute_bytes(cfg, device)
    r = weight_bytes(cfg, device)  # the residual stream's dtype: the embeddings'
    m = 1 if device == "cuda" else a
    h, i, full = arch.hidden, arch.intermediate, cfg.train_backbone == "full"
    parts = []
    norms = arch.norms - (1 if first and not full else 0)
    norm = norms * (4 * h + 4) + (norms * r * h if full else 0)
    formula = f"{norms} × (4·H + 4)" + (f" + {norms} × {r}·H (outputs, for the weights)" if full else "")
    if arch.qk_norm:
        qk = arch.q_width + arch.kv_width
        norm += 4 * qk + 4 * (arch.heads + arch.kv_heads) + (a * qk if full else 0)
        formula += " + q/k norms 4·(heads + kv)·(head_dim + 1)" + (f" + {a}·(heads + kv)·head_dim" if full else "")
    parts.append(("norms", norm, formula))
    shapes = arch.projections()
    if cfg.train_backbone == "lora":
        mask = m if cfg.lora_dropout > 0 else 0
        total, ins = 0, []
        for target in cfg.lora_targets:
            width = shapes[target][0]
            skip = first and target in ("q_proj", "k_proj", "v_proj")  # no gradient to its input: no mask kept
            total += ((0 if skip else mask) + a) * width + a * cfg.lora_r
            ins.append(width)
        parts.append(("LoRA inputs", total, f"({mask} + {a}) × Σ in of {len(cfg.lora_targets)} projections "
                                            f"({'+'.join(_n(w) for w in ins)}) + {a}·r each"
                      + (" (no q/k/v masks in layer 1)" if first else "")))
    eager = cfg.attention == "eager"
    if full:  # o_proj's input is SDPA's output itself (laid out token-major), eager's a copy
        copies = 1 if r == a else 3
        mlp_copies = 1 if r == a else 2
        total = a * (copies * h + mlp_copies * h + i + (arch.q_width if eager else 0))
        parts.append(("linear inputs", total, f"{a} × ({copies}·H q/k/v + {mlp_copies}·H gate/up + I down"
                                              + (" + heads·head_dim o)" if eager else ")")))
    repeat = arch.kv_heads < arch.heads and (padded or eager) and cfg.attention != "flash_attention_2"
    kv = arch.q_width if repeat else arch.kv_width
    kv_note = f"{'heads' if repeat else 'kv'}·head_dim k, v" + (" (repeated)" if repeat else "")
    if eager:
        score = 4 + (a if a < 4 else 0)  # the fp32 softmax and its cast
        parts.append(("attention (eager)", a * (arch.q_width + 2 * kv) + arch.heads * length * score,
                      f"{a} × (heads·head_dim q + 2 × {kv_note}) + heads × L × {score} (scores)"))
    else:
        bias = a * length if padded and cfg.attention != "flash_attention_2" else 0
        parts.append(("attention (SDPA)", a * (2 * arch.q_width + 2 * kv) + 4 * arch.heads + bias,
                      f"{a} × (heads·head_dim q + out + 2 × {kv_note}) + 4·heads"
                      + (f" + {a}·L (mask bias)" if bias else "")))
    parts.append(("MLP", 3 * a * i, f"3 × {a}·I"))
    return parts


def head_tensors(cfg: Config, arch: Architecture, device: str, notes: int, tokens: int, labels: int) -> tuple[int, str]:
    """Bytes the head keeps for backward, and their formula (T tokens, C labels, A attention_dim).

    Label attention keeps the dropout mask of the fp32 states, the states for project and for the
    per-label sum (two bf16 casts under autocast, one fp32 tensor without), tanh's output, the
    softmax over tokens (fp32: autocast runs softmax in fp32) and its bf16 cast, and the per-label
    vectors (notes × C × H). The mean head keeps little (a per-note vector). Autocast's copies of
    the head's weights are counted with the weights (`trained_terms`)."""
    a = compute_bytes(cfg, device)
    m = 1 if device == "cuda" else 4
    soft = 4 if device == "cuda" else a  # CUDA's autocast runs softmax in fp32, the CPU's in bf16
    h, c = arch.hidden, labels
    if cfg.head == "none":  # the MNTP stage: its LM head is a term of its own
        return 0, "0"
    if cfg.head != "label_attention":
        return notes * h * (1 + a) + 4 * tokens, f"B·H·(1 + {a}) + 4·T"
    states = 2 * a if a < 4 else 4
    weights = soft + (a if soft != a else 0)
    total = (tokens * h * (m + states) + a * tokens * cfg.attention_dim + tokens * c * weights + a * notes * c * h
             + tokens)
    return total, (f"T·H·({m} + {states}) + {a}·T·A + T·C·{weights} + {a}·B·C·H + T")


def head_backward(cfg: Config, arch: Architecture, device: str, notes: int, tokens: int,
                  labels: int) -> tuple[int, str]:
    """The head's largest gradients during its backward pass, fp32 and their autocast cast: the
    per-label vectors', the attention weights' and the token states'."""
    a = compute_bytes(cfg, device)
    if cfg.head == "none":
        return 0, "0"
    cast = a if a < 4 else 0
    states = tokens * arch.hidden * (4 + cast)
    if cfg.head != "label_attention":
        return states, f"T·H·{4 + cast}"
    return notes * labels * arch.hidden * (4 + cast) + tokens * labels * (4 + cast) + states, \
        f"B·C·H·{4 + cast} + T·C·{4 + cast} + T·H·{4 + cast}"


def activation_terms(cfg: Config, arch: Architecture, device: str, notes: int, length: int, sequences: int,
                     labels: int, padded: bool = True) -> tuple[list[Term], Term, list[str]]:
    """(terms counted, the activations of the other checkpointing setting, detail lines).

    Without checkpointing every layer keeps `layer_parts`; with it each layer keeps only its input
    (the residual stream, r bytes a value), and backward recomputes one layer at a time. Backward
    is at its largest either in the head (its tensors and gradients, every layer's still kept) or
    in a layer (the recomputed layer's tensors, and its gradients: about the size of what it keeps)."""
    tokens = sequences * length
    r = weight_bytes(cfg, device)
    parts = layer_parts(cfg, arch, device, length, padded)
    per_layer = sum(b for _, b, _ in parts)
    head, head_f = head_tensors(cfg, arch, device, notes, tokens, labels)
    back, back_f = head_backward(cfg, arch, device, notes, tokens, labels)
    if cfg.train_backbone == "frozen":  # no gradient reaches the backbone: it keeps nothing
        return [Term("largest moment: head, or a layer's forward", f"max(head {head_f} + its gradients {back_f}, "
                     f"T × {_n(per_layer)} B)", max(head + back, tokens * per_layer))], Term("", "", 0), []
    first_layer = sum(b for _, b, _ in layer_parts(cfg, arch, device, length, padded, first=True))
    plain = Term("activations, every layer", f"T × ({arch.layers - 1} × {_n(per_layer)} B + {_n(first_layer)} B "
                 f"(layer 1))", tokens * ((arch.layers - 1) * per_layer + first_layer))
    rng = RNG_STATE + (CUDA_RNG_STATE if device == "cuda" else 0)
    inputs = Term("activations, layer inputs (checkpointing)", f"{arch.layers} layers × (T × {r}·H + {rng:,} B RNG "
                  f"state)", arch.layers * (tokens * r * arch.hidden + rng))
    final = 4 * arch.hidden + 4 + (r * arch.hidden if cfg.train_backbone == "full" else 0)
    kinds = arch.layer_kinds
    tables = kinds * 2 * r * arch.head_dim  # RoPE's cos and sin, shared by the layers
    # the bool padding mask outlives the forward pass only as the checkpointed layers' input
    mask = kinds * length if padded and cfg.grad_checkpointing else 0
    times = f"{kinds} × " if kinds > 1 else ""
    shared = Term("final norm, RoPE tables" + (", mask" if mask else ""),
                  f"T × (4·H + 4 + {times}2·{r}·head_dim" + (f" + {times}L)" if mask else ")"),
                  tokens * (final + tables + mask))
    a = compute_bytes(cfg, device)
    grads = 3 * a * tokens * arch.intermediate  # the MLP's backward: three I-wide gradients at once
    # bitsandbytes dequantizes a projection's weight for each matmul: the largest one at a time
    dequantized = a * arch.hidden * arch.intermediate if cfg.load_in != "native" else 0
    layer_work = grads + dequantized + (tokens * per_layer if cfg.grad_checkpointing else 0)
    layer_f = ((f"recomputed layer T × {_n(per_layer)} B + " if cfg.grad_checkpointing else "") + f"3·{a}·T·I"
               + (f" + {a}·H·I (a dequantized weight)" if dequantized else ""))
    peak = Term("backward at its largest", f"max(head {head_f} + its gradients {back_f}, {layer_f})"
                if head else layer_f, max(head + back, layer_work))
    kept = inputs if cfg.grad_checkpointing else plain
    other = (Term("activations without checkpointing", plain.formula, plain.bytes) if cfg.grad_checkpointing else
             Term("activations with checkpointing", f"layer inputs {inputs.bytes / GB:,.1f} GB + one recomputed layer "
                  f"{tokens * per_layer / GB:,.1f} GB", inputs.bytes + tokens * per_layer))
    detail = [f"per token and layer ({a} B activations, H {_n(arch.hidden)}, I {_n(arch.intermediate)}, "
              f"{arch.heads} heads × {arch.head_dim}, {arch.kv_heads} KV heads, L {_n(length)}):"]
    detail += [f"  {name:<17} {_n(b):>9} B   {f}" for name, b, f in parts]
    detail.append(f"  {'total':<17} {_n(per_layer):>9} B")
    return [kept, shared, peak], other, detail


def overhead(tensors: int, device: str) -> Term:
    """CUDA's context and the allocator's slack over the tensors (on the CPU: the slack only)."""
    if device != "cuda":
        return Term("allocator", f"{ALLOCATOR_SLACK:.0%} of the above", round(ALLOCATOR_SLACK * tensors))
    return Term("CUDA context + allocator", f"{CUDA_CONTEXT / GB:.0f} GB + {ALLOCATOR_SLACK:.0%} of the above",
                CUDA_CONTEXT + round(ALLOCATOR_SLACK * tensors))


def fine_tuning(cfg: Config, arch: Architecture, device: str, labels: int) -> Stage:
    """Step 03's training step: `batch_size` notes of `max_segments` segments of `segment_length`."""
    sequences = cfg.batch_size * cfg.max_segments
    tokens = sequences * cfg.segment_length
    acts, other, detail = activation_terms(cfg, arch, device, cfg.batch_size, cfg.segment_length, sequences, labels)
    terms = [weights_term(cfg, arch, device), *trained_terms(cfg, arch, device, labels), *acts]
    terms.append(overhead(sum(t.bytes for t in terms), device))
    notes = [f"T = batch_size {cfg.batch_size} × max_segments {cfg.max_segments} × segment_length "
             f"{cfg.segment_length} = {_n(tokens)} tokens; B = {cfg.batch_size} (notes a micro-batch), C = "
             f"{_n(labels)} labels, A = {cfg.attention_dim}", *detail]
    if other.name:
        shown = f" ({other.formula})" if not cfg.grad_checkpointing else ""
        notes.append(f"{other.name}: {other.bytes / GB:,.1f} GB{shown}, not counted")
    return Stage("fine-tuning", tuple(terms), tuple(notes))


def mntp_probability(cfg: Config, arch: Architecture) -> float:
    """The share of tokens MNTP scores (icdlib.model.mntp's recipes: bert 0.2, all_mask 0.8)."""
    if cfg.mntp_probability:
        return cfg.mntp_probability
    style = cfg.mntp_masking if cfg.mntp_masking != "auto" else ("all_mask" if arch.model_type == "mistral" else "bert")
    return {"bert": 0.2, "all_mask": 0.8}[style]


def mntp_head_trains(cfg: Config, arch: Architecture) -> bool:
    """Whether the MNTP stage trains the LM head, as `icdlib.model.mntp.head_trains` decides from
    `mntp_head` (auto: unless tied to the input embeddings)."""
    return cfg.mntp_head == "train" or (cfg.mntp_head == "auto" and not arch.tied)


def mntp_stage(cfg: Config, arch: Architecture, device: str) -> Stage:
    """The MNTP stage (`mntp_steps > 0`): each process's share of `mntp_batch_size` chunks of
    `mntp_length` tokens in one forward pass, no padding, LoRA; the LM head in the weights' dtype,
    with its gradient and AdamW's two moments when it trains (`mntp_head`), and its logits over
    the scored tokens at their largest, in backward: the log-softmax kept (fp32), its gradient and
    the logits' gradient (the layers' backward comes after: counting both is on the safe side)."""
    chunks = math.ceil(cfg.mntp_batch_size / cfg.nproc)
    tokens = chunks * cfg.mntp_length
    stage_cfg = dataclasses.replace(cfg, train_backbone="lora", head="none")
    acts, other, detail = activation_terms(stage_cfg, arch, device, chunks, cfg.mntp_length, chunks, 0, padded=False)
    scored = math.ceil(mntp_probability(cfg, arch) * tokens)
    head_w = weight_bytes(cfg, device)  # a copy of the embeddings or lm_head as the backbone is loaded
    trains = mntp_head_trains(cfg, arch)
    lm_bytes = 4 * head_w if trains else head_w
    lm = Term("LM head" + (" + grad + AdamW" if trains else " (frozen)"),
              f"vocab {_n(arch.vocab)} × H × {lm_bytes} B" + (" (weight, grad, 2 moments)" if trains else ""),
              arch.vocab * arch.hidden * lm_bytes)
    logits = Term("MNTP logits", f"{_n(scored)} scored tokens × vocab × 3 × 4 B", scored * arch.vocab * 12)
    terms = [weights_term(stage_cfg, arch, device), *trained_terms(stage_cfg, arch, device, None), lm, *acts, logits]
    terms.append(overhead(sum(t.bytes for t in terms), device))
    notes = [f"T = {chunks} chunks × mntp_length {cfg.mntp_length} = {_n(tokens)} tokens per process; "
             f"{mntp_probability(cfg, arch):.0%} scored", *detail]
    if other.name:
        notes.append(f"{other.name}: {other.bytes / GB:,.1f} GB, not counted")
    return Stage("MNTP stage", tuple(terms), tuple(notes))


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Plan:
    cfg: Config
    device: str
    gpu_bytes: int | None
    arch: Architecture
    labels: int
    labels_source: str
    stages: tuple[Stage, ...]
    fix: dict | None = None  # the first of `fixes(cfg)` that fits, when this does not
    fix_total: int | None = None

    @property
    def peak(self) -> int:
        return max(s.total for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.gpu_bytes is None or self.peak <= self.gpu_bytes


def fixes(cfg: Config) -> list[dict]:
    """The settings tried, in order, when a run does not fit: cheapest in time first. batch_size 1
    (grad_accum raised so that an update sees as many notes) computes nothing more; gradient
    checkpointing recomputes every layer's forward in backward (+50% FLOPs with a frozen base);
    4-bit weights change the model (QLoRA) and dequantize in every matmul."""
    single = {"batch_size": 1, "grad_accum": cfg.grad_accum * cfg.batch_size} if cfg.batch_size > 1 else None
    ckpt = {"grad_checkpointing": True} if not cfg.grad_checkpointing else None
    quant = {"load_in": "4bit"} if cfg.load_in == "native" and cfg.train_backbone != "full" else None
    if quant and cfg.precision == "fp32":
        quant["precision"] = "auto"
    options = [single, ckpt, {**(single or {}), **(ckpt or {})} if single and ckpt else None, quant,
               {**quant, **ckpt} if quant and ckpt else None,
               {**quant, **(ckpt or {}), **single} if quant and single else None]
    seen, out = [], []
    for option in options:
        if option and option not in seen:
            seen.append(option)
            out.append(option)
    return out


def stages(cfg: Config, arch: Architecture, device: str, labels: int) -> tuple[Stage, ...]:
    """Step 03's phases, in order: MNTP (when asked), fine-tuning. The step needs the larger."""
    out = (fine_tuning(cfg, arch, device, labels),)
    if cfg.mntp_steps > 0:
        out = (mntp_stage(cfg, arch, device),) + out
    return out


def plan(cfg: Config, device: str = "cuda", gpu_bytes: int | None = None, labels: int | None = None,
         arch: Architecture | None = None) -> Plan:
    """The memory plan of step 03 for `cfg` on `device` ('cuda' or 'cpu'), against `gpu_bytes`
    when given; when it does not fit, the first setting of `fixes` that does."""
    arch = arch or architecture(cfg)
    n, source = label_count(cfg, labels)
    found = stages(cfg, arch, device, n)
    result = Plan(cfg, device, gpu_bytes, arch, n, source, found)
    if result.fits:
        return result
    for option in fixes(cfg):
        changed = dataclasses.replace(cfg, **option)
        total = max(s.total for s in stages(changed, arch, device, n))
        if total <= gpu_bytes:
            return dataclasses.replace(result, fix=option, fix_total=total)
    return result


def flags(option: dict) -> str:
    """Overrides as the command line takes them: `-p batch_size=1 -p grad_accum=8`."""
    return " ".join(f"-p {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in option.items())


def verdict(p: Plan) -> str:
    """One line: fits, or does not fit and what would."""
    need = f"{p.peak / GB:,.1f} GB"
    if p.gpu_bytes is None:
        return f"needs {need}"
    has = f"{p.gpu_bytes / GB:,.0f} GB"
    if p.fits:
        return f"fits: {need} of {has}"
    if p.fix:
        return f"does not fit: {need} > {has}; fits with {flags(p.fix)} ({p.fix_total / GB:,.1f} GB)"
    options = fixes(p.cfg)
    tried = ", ".join(dict.fromkeys(flags({k: v}) for option in options for k, v in option.items()
                                    if k not in ("grad_accum", "precision")))  # what goes with the setting
    nor = f", nor with {tried}" + (" (alone or together)" if len(options) > 1 else "") if options else ""
    return (f"does not fit: {need} > {has}{nor}: lower max_segments or segment_length"
            + (", or mntp_batch_size" if p.cfg.mntp_steps > 0 else "") + ", or use a larger GPU")


def render(p: Plan) -> str:
    """The plan as a table per stage (term, formula, GB), then the verdict line."""
    cfg = p.cfg
    setting = (f"train_backbone={cfg.train_backbone}, load_in={cfg.load_in}, grad_checkpointing="
               f"{str(cfg.grad_checkpointing).lower()}, attention={cfg.attention}, head={cfg.head}")
    lines = [f"memory plan: {cfg.backbone} on {p.device} ({setting})",
             f"backbone: {p.arch.name}; shape from {p.arch.source}",
             f"labels: {p.labels:,} ({p.labels_source})"]
    width = max(len(t.name) for s in p.stages for t in s.terms)
    for stage in p.stages:
        lines += ["", f"{stage.name}:"] + [f"  {line}" for line in stage.notes[:1]]
        lines.append(f"  {'term':<{width}}  {'GB':>7}  formula")
        for t in stage.terms:
            lines.append(f"  {t.name:<{width}}  {t.bytes / GB:>7,.2f}  {t.formula}")
        lines.append(f"  {'total':<{width}}  {stage.total / GB:>7,.2f}")
        lines += [f"  {line}" for line in stage.notes[1:]]
    lines += ["", verdict(p)]
    return "\n".join(lines)


def check(cfg: Config, device, gpu_bytes: int, n_labels: int | None = None) -> Plan:
    """Step 03's check before it loads anything on a CUDA device: the plan, or a MemoryPlanError
    naming the overrides that would fit. `gpu_bytes`: the device's total memory
    (`torch.cuda.get_device_properties(device).total_memory`), `n_labels`: the run's label count."""
    kind = getattr(device, "type", str(device).split(":")[0])
    result = plan(cfg, kind, gpu_bytes, n_labels)
    if not result.fits:
        raise DoesNotFit(f"{cfg.backbone} on this GPU: {verdict(result)} (python -m icdlib plan --backbone "
                              f"{cfg.backbone} shows the arithmetic)")
    return result


def for_backbone(backbone: str, overrides: dict | None = None) -> Config:
    """The configuration `python -m icdlib plan --backbone NAME -p ...` plans (nothing written)."""
    return resolve(backbone, overrides or {})
