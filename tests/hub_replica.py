"""A toy-size replica of the hub layout, built offline for the tests and for llm2vec's reference.

Per family it writes, with random weights, the folders a user downloads:

- `base/`: the base LLM as its hub repository ships it: a `*ForCausalLM` checkpoint
  (`model.safetensors`), the hub's `config.json` keys (Llama-3 and Mistral in their 2024 form, with
  `rope_theta`), and its tokenizer (BOS added for Llama-3, Mistral and Gemma; none for Qwen);
- for `llama` and `mistral`, McGill-NLP's LLM2Vec repositories: `mntp/` (`config.json` naming the
  hub base, the tokenizer and a PEFT LoRA adapter whose `adapter_config.json` names the hub base:
  the folder alone cannot be loaded without the base), `supervised/` and `simcse/` (a second LoRA
  adapter on the merged model, naming the `-mntp` repository);
- `hf_cache/`: a Hugging Face cache (`HF_HUB_CACHE` layout) holding them under their hub names.

`qwen3` and `gemma3` (Gemma 3 text, the MedGemma-27B-text layout) have no LLM2Vec repositories:
their base alone becomes an encoder through icdlib's domain MNTP.

Weights and adapters come from a counter-based generator (splitmix64 over each tensor's name) and
configs are written as literal JSON, so the files are the same, byte for byte, in any environment:
the llm2vec reference (tests/llm2vec_reference/make_reference.py, run in llm2vec's pinned 2024
stack) and icdlib on today's stack read the same model. Only the trained tokenizer may differ
between tokenizers versions; the reference feeds token ids, not text.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis pneumonia "
         "diabetes mellitus intubation catheter patient admitted discharged stable history chronic "
         "obstructive pulmonary disease coronary artery bypass graft hyperlipidemia anemia user INST").split()
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
LORA_R, LORA_ALPHA = 4, 8

FAMILIES = {
    "llama": {
        "base": "meta-llama/Meta-Llama-3-8B-Instruct",
        "mntp": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
        "supervised": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-supervised",
        "simcse": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-unsup-simcse",
        "specials": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "extra": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
        "add_bos": True,
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                   "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02, "pretraining_tp": 1,
                   "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False,
                   "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0", "use_cache": True},
        "norm_offset": 1.0,
    },
    "mistral": {
        "base": "mistralai/Mistral-7B-Instruct-v0.2",
        "mntp": "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp",
        "supervised": "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised",
        "simcse": "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-unsup-simcse",
        "specials": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "extra": [],
        "add_bos": True,
        "config": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "attention_dropout": 0.0,
                   "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                   "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                   "transformers_version": "4.36.0", "use_cache": True},
        "norm_offset": 1.0,
    },
    "qwen3": {
        "base": "Qwen/Qwen3-8B-Base",
        "specials": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "extra": ["<|im_start|>", "<|im_end|>"],
        "add_bos": False,
        "config": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
                   "attention_dropout": 0.0, "head_dim": 16, "hidden_act": "silu", "initializer_range": 0.02,
                   "max_window_layers": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
                   "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                   "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False},
        "norm_offset": 1.0,
    },
    "gemma3": {
        "base": "google/medgemma-27b-text-it",
        # Gemma's ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3
        "specials": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"},
        "extra": ["<start_of_turn>", "<end_of_turn>"],
        "add_bos": True,
        "config": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
                   "attention_dropout": 0.0, "attn_logit_softcapping": None, "final_logit_softcapping": None,
                   "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "initializer_range": 0.02,
                   "layer_types": ["sliding_attention", "full_attention"], "query_pre_attn_scalar": 16,
                   "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0,
                   "sliding_window": 512, "torch_dtype": "bfloat16", "transformers_version": "4.51.3",
                   "use_cache": True},
        "norm_offset": 0.0,  # Gemma's norms scale by (1 + weight)
    },
}
ADAPTERS = ("mntp", "supervised", "simcse")


@dataclass
class Replica:
    family: str
    base: Path
    mntp: Path | None
    supervised: Path | None
    simcse: Path | None
    hf_cache: Path
    names: dict


# ---------------------------------------------------------------- the same numbers everywhere

def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """Values in [-1, 1) as float32, a pure function of (name, shape, seed): exact on every platform."""
    n = int(np.prod(shape)) if shape else 1
    start = np.uint64((zlib.crc32(name.encode()) << 20) ^ (seed << 52))
    with np.errstate(over="ignore"):
        bits = _splitmix64(np.arange(n, dtype=np.uint64) + start) >> np.uint64(40)  # 24 bits: exact in fp32
    return (bits.astype(np.float32) / np.float32(2 ** 23) - np.float32(1.0)).reshape(shape)


def tensor_values(name: str, shape: tuple, norm_offset: float, seed: int = 0) -> np.ndarray:
    """A weight as a trained model might hold it: norms near their identity, matrices spread like
    an initialisation (std 0.02), biases small."""
    u = uniform(name, shape, seed)
    if "norm" in name.split(".")[-2]:
        return (np.float32(norm_offset) + np.float32(0.1) * u).astype(np.float32)
    scale = np.float32(0.02 * 3 ** 0.5) if name.endswith("weight") else np.float32(0.01)
    return (u * scale).astype(np.float32)


def shapes(family: str, config: dict) -> dict[str, tuple]:
    """Parameter names and shapes of the family's `*ForCausalLM`, read off transformers' own class on
    the meta device (no memory, no random numbers), in whichever transformers is installed."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version",
                                                                           "torch_dtype")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    tied = getattr(cfg, "tie_word_embeddings", False)
    return {n: tuple(p.shape) for n, p in model.state_dict().items() if not (tied and n == "lm_head.weight")}


# ---------------------------------------------------------------- files

def _tokenizer(family: str, texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    specials = list(dict.fromkeys(list(spec["specials"].values()) + spec["extra"]))
    tok = Tokenizer(models.BPE(unk_token=spec["specials"].get("unk_token")))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    # "_" is a token of every real vocabulary: llm2vec's MNTP uses it as the mask token
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=800, special_tokens=specials,
                                                                show_progress=False, initial_alphabet=["_"]))
    if spec["add_bos"]:
        bos = spec["specials"]["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"],
                                   additional_special_tokens=spec["extra"], clean_up_tokenization_spaces=False,
                                   **spec["specials"])


def base_config(family: str, vocab_size: int, token_ids: dict, positions: int) -> dict:
    """The base's config.json as its hub repository writes it, at toy size."""
    spec = FAMILIES[family]
    values = {**spec["config"], **SHAPE, "vocab_size": vocab_size, "max_position_embeddings": positions}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if token_ids.get(key) is not None:
            values[key] = token_ids[key]
    return dict(sorted(values.items()))


def save_tensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, str(path), metadata=metadata)


def adapter_tensors(names: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """A LoRA adapter on the seven projections of the inner model (McGill's keys:
    `base_model.model.layers.N.self_attn.q_proj.lora_A.weight`), B non-zero so that it matters."""
    out = {}
    for name, shape in names.items():
        parts = name.split(".")
        if not (name.startswith("model.layers.") and parts[-2] in SEVEN and parts[-1] == "weight"):
            continue
        stem = "base_model.model." + ".".join(parts[1:-1])
        out[f"{stem}.lora_A.weight"] = uniform(f"{stem}.A", (LORA_R, shape[1]), seed) * np.float32(0.2)
        out[f"{stem}.lora_B.weight"] = uniform(f"{stem}.B", (shape[0], LORA_R), seed) * np.float32(0.2)
    return out


def adapter_config(base_name: str) -> dict:
    """adapter_config.json as peft wrote McGill's adapters in 2024 (fields every peft since reads)."""
    return {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base_name, "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
            "layers_to_transform": None, "loftq_config": {}, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.05,
            "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA",
            "r": LORA_R, "rank_pattern": {}, "revision": None, "target_modules": SEVEN, "task_type": None,
            "use_dora": False, "use_rslora": False}


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")


def _into_cache(cache: Path, repo: str, folder: Path) -> None:
    commit = f"{zlib.crc32(repo.encode()):08x}" * 5
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def build(root: Path, family: str = "llama", positions: int = 512) -> Replica:
    """Write the replica of `family` under `root` (see the module docstring)."""
    spec = FAMILIES[family]
    root = Path(root)
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30)) for i in range(200)]
    tokenizer = _tokenizer(family, texts)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id if "pad_token" in spec["specials"] else None}
    config = base_config(family, len(tokenizer), ids, positions)
    names = shapes(family, config)
    seed = 8 * list(FAMILIES).index(family)  # each family its own numbers
    base = root / "base"
    base.mkdir(parents=True)
    save_tensors({n: tensor_values(n, s, spec["norm_offset"], seed) for n, s in names.items()}, base / "model.safetensors",
                 {"format": "pt"})
    _write_json(base / "config.json", config)
    tokenizer.save_pretrained(base)

    folders = {"base": base}
    if "mntp" in spec:
        for n, kind in enumerate(ADAPTERS, start=1):
            folder = root / kind
            folder.mkdir()
            save_tensors(adapter_tensors(names, seed + n), folder / "adapter_model.safetensors", {"format": "pt"})
            _write_json(folder / "adapter_config.json", adapter_config(spec["base"] if kind == "mntp" else spec["mntp"]))
            folders[kind] = folder
        # McGill's -mntp repositories carry the base's config, named after the hub base, and its tokenizer
        _write_json(folders["mntp"] / "config.json", {"_name_or_path": spec["base"], **config})
        tokenizer.save_pretrained(folders["mntp"])

    cache = root / "hf_cache"
    for kind, folder in folders.items():
        _into_cache(cache, spec[kind], folder)
    return Replica(family, base, folders.get("mntp"), folders.get("supervised"), folders.get("simcse"), cache,
                   {k: spec[k] for k in ("base", *ADAPTERS) if k in spec})
