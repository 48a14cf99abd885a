"""LLM2Vec backbones: the real McGill-NLP checkpoints, any supported decoder, or a tiny random one for CPUs.

All load through `load`: transformers' own model class for the architecture (`AutoModel`), made
bidirectional by `icdlib.model.bidirectional` (llm2vec's first step, owned here), an adapter-only
`-mntp` model's LoRA merged in as llm2vec merges it; so the tests exercise the same loading code
as a GPU run. A tiny backbone is transformers' `LlamaModel` / `MistralModel` built from a small
config with random weights and a BPE tokenizer trained on the training notes, saved in Hugging
Face format in the run folder first. Trainability is set here: a LoRA adapter (fresh, or
continued from a second LLM2Vec adapter), the full backbone, or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, MistralConfig, PreTrainedTokenizerFast

from icdlib.model import bidirectional
from icdlib.model.backbone_files import BackboneError, Located, local_folder, locate
from icdlib.model.encoding import SegmentFormat
from icdlib.run.config import Config
from icdlib.run.errors import IcdlibError
from icdlib.run.runfolder import atomic_path, content_key, read_key, source_hash, write_key


SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-piece-sized BPE tokenizer learnt from `texts` (whitespace and punctuation split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False,
                                  initial_alphabet=["_"])  # llm2vec's MNTP mask token
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"],
                                   padding_side="right", clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def tiny_config(cfg: Config, tokenizer: PreTrainedTokenizerFast):
    """A small Llama or Mistral config; positions cover one segment."""
    common = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.tiny_hidden, intermediate_size=cfg.tiny_hidden * 4,
        num_hidden_layers=cfg.tiny_layers, num_attention_heads=cfg.tiny_heads, num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=max(cfg.segment_length, 128), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return MistralConfig(sliding_window=None, **common) if cfg.model_type == "mistral" else LlamaConfig(**common)


def lsa_embeddings(texts: list[str], tokenizer, dim: int, seed: int = 0) -> torch.Tensor:
    """Token vectors from a truncated SVD of the TF-IDF token-by-note matrix (latent semantic analysis).

    Random embeddings carry no knowledge; tokens that co-occur across notes (`heart`, `failure`,
    `CHF`) get neighbouring vectors here, which lets a tiny model learn code mentions within a
    CPU budget. Rows are scaled to the usual initialisation spread (std 0.02).
    """
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = np.repeat(np.arange(len(ids)), [len(x) for x in ids])
    counts = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(ids))),
                               shape=(len(ids), len(tokenizer)))
    tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    k = min(dim, min(tfidf.shape) - 1)
    svd = TruncatedSVD(n_components=k, random_state=seed).fit(tfidf)
    vectors = np.zeros((len(tokenizer), dim), np.float32)
    vectors[:, :k] = (svd.components_ * svd.singular_values_[:, None]).T
    vectors /= vectors.std() + 1e-8
    return torch.from_numpy(vectors * 0.02)


TINY_PARAMS = ("model_type", "tiny_layers", "tiny_hidden", "tiny_heads", "tiny_vocab", "tiny_init", "seed")


def tiny_key(cfg: Config, train_texts: list[str]) -> str:
    """The cache key of a tiny backbone: its parameters, the positions it needs, the training
    notes (content hash), the code that builds it and the libraries that code calls."""
    from importlib import metadata

    texts = hashlib.sha256()
    for t in train_texts:
        texts.update(t.encode("utf-8", "replace") + b"\0")
    return content_key({"params": {k: getattr(cfg, k) for k in TINY_PARAMS},
                        "positions": max(cfg.segment_length, 128), "texts": texts.hexdigest(),
                        "code": source_hash(make_tiny, train_tokenizer, tiny_config, lsa_embeddings),
                        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "tokenizers",
                                                                      "scikit-learn")}})


def make_tiny(cfg: Config, train_texts: list[str], out_dir: Path) -> Path:
    """Save a random tiny bidirectional backbone + tokenizer at `out_dir` (Hugging Face format),
    or reuse the one there when it was built with the same `tiny_key` (recorded in cache_key.txt)."""
    from transformers import AutoModel

    out_dir = Path(out_dir)
    key = tiny_key(cfg, train_texts)
    if read_key(out_dir) == key and (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(train_texts, cfg.tiny_vocab)
    config = tiny_config(cfg, tokenizer)
    model = bidirectional.make_bidirectional(AutoModel.from_config(config))
    if cfg.tiny_init == "lsa":
        with torch.no_grad():
            model.embed_tokens.weight.copy_(lsa_embeddings(train_texts, tokenizer, cfg.tiny_hidden, cfg.seed))
    with atomic_path(out_dir) as tmp, quiet():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_key(tmp, key)
    return out_dir


# what decides the numbers a backbone computes, besides its weights
ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "hidden_activation",
                "rms_norm_eps", "max_position_embeddings", "sliding_window", "layer_types", "tie_word_embeddings",
                "attention_bias", "rope_theta", "rope_scaling", "rope_parameters", "query_pre_attn_scalar",
                "attn_logit_softcapping", "final_logit_softcapping")


def architecture(config) -> dict:
    """A backbone's architecture as JSON values: the config fields of ARCHITECTURE it has (names,
    dtypes, versions and bookkeeping left out), so that a model folder can tell its backbone apart
    from another one and say which field differs."""
    values = {}
    for key in ARCHITECTURE:
        value = getattr(config, key, None)
        if value is not None:
            values[key] = json.loads(json.dumps(value, sort_keys=True, default=str))
    return values


def fingerprint(config) -> str:
    """A short hash of `architecture(config)` (cache keys)."""
    return hashlib.sha256(json.dumps(architecture(config), sort_keys=True).encode()).hexdigest()[:16]


def architecture_difference(recorded: dict, config) -> str:
    """'' when `config` has the `recorded` architecture, else the fields that differ (`hidden_size 64 here, 4096 recorded`)."""
    now = architecture(config)
    keys = [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    return "; ".join(f"{k} {now.get(k)!r} here, {recorded.get(k)!r} recorded" for k in keys)


# ---------------------------------------------------------------- loading

@contextlib.contextmanager
def quiet():
    """Silence the loaders' chatter (load reports of unused lm_head weights, weight-loading bars, peft
    notices); real errors still raise."""
    import warnings

    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="peft")
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            # peft (0.21) still asks the renamed attribute; the model answers right, with a FutureWarning
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load(model_path: str | Path, dtype: torch.dtype = torch.float32, base_model_path: str = "",
         device: torch.device | None = None, load_in: str = "native", merge: bool = True, attention: str = "auto"):
    """(bidirectional model, tokenizer), MNTP merged; offline-safe for local folders.

    What `llm2vec.LLM2Vec.from_pretrained` does — the bare model of the base's architecture made
    bidirectional, the adapter of an adapter-only model merged in — with transformers' own model
    classes (`icdlib.model.bidirectional`), the base named explicitly, no hub lookups for local folders,
    and the weights placed on `device` before the merge (an 8B merge on the CPU is slow and needs
    the RAM of a second copy). `merge=False` keeps the adapter of an adapter-only model as a
    trainable peft model (to continue its MNTP). `attention` picks the kernel (`auto`: SDPA where
    the architecture has it, else eager).
    """
    from peft import PeftModel
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    found = locate(str(model_path), base_model_path)
    bidirectional.check(AutoConfig.from_pretrained(found.base or found.model))
    kwargs = {"dtype": dtype}
    if attention != "auto":
        bidirectional.check_attention(attention)
        kwargs["attn_implementation"] = attention
    if device is not None and device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    from icdlib.model import quantize

    if load_in != "native":
        if dtype == torch.float32:
            raise BackboneError(f"load_in={load_in} keeps the base frozen in {load_in}: train it with "
                                "train_backbone=lora (QLoRA) or frozen, not full, and precision bf16 or fp16")
        quantize.check(load_in, device or torch.device("cpu"))
        kwargs["quantization_config"] = quantize.bnb_config(load_in, dtype)
    with quiet():
        model = bidirectional.make_bidirectional(AutoModel.from_pretrained(found.base or found.model, **kwargs))
        if found.base:
            model = PeftModel.from_pretrained(model, found.model, is_trainable=not merge)
            if merge:
                model = merged(model)
        tokenizer = AutoTokenizer.from_pretrained(found.tokenizer)
    if found.base and not merge:
        model.get_base_model().config._name_or_path = found.name_or_path or model.config._name_or_path
    else:
        model._hf_peft_config_loaded = False  # a full model too (see `merged`)
        model.config._name_or_path = found.name_or_path or model.config._name_or_path
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def merged(model):
    """A peft model's base with its adapter merged in, clean of the adapter bookkeeping."""
    base = model.merge_and_unload()
    # transformers' own adapter bookkeeping must not survive the merge: save_pretrained of a
    # fully trained backbone would look for adapters that no longer exist
    base._hf_peft_config_loaded = False
    if hasattr(base, "peft_config"):  # left by merge_and_unload; a new LoRA would warn of "multiple adapters"
        del base.peft_config
    return base


def lm_head_weight(found: Located) -> torch.Tensor | None:
    """The decoder's `lm_head.weight` from the checkpoint files (the base of an adapter-only
    model), read alone; None when the checkpoint has none (tied embeddings, a bare encoder)."""
    from safetensors import safe_open

    folder = Path(found.base or found.model)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text()).get("weight_map", {}).get("lm_head.weight")
        files = [folder / shard] if shard else []
    else:
        files = sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            if "lm_head.weight" in f.keys():
                return f.get_tensor("lm_head.weight")
    return None


def make_trainable(model: torch.nn.Module, cfg: Config, adapter_path: str | Path = ""):
    """Apply `train_backbone`: LoRA (fresh, or continued from `adapter_path`), full, or frozen."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_path:
        adapter_path = local_folder(str(adapter_path), "adapter_path", {})

    if cfg.train_backbone == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if cfg.train_backbone == "frozen":
        return model
    if cfg.load_in != "native":  # QLoRA: LoRA in full precision on a quantized, frozen base
        from icdlib.model import quantize

        model = quantize.prepare_for_training(model)
    if adapter_path:
        with quiet():
            return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")
    with quiet():
        return get_peft_model(model, lora)


# ---------------------------------------------------------------- how text enters the encoder

# llm2vec's chat turns per base model (LLM2Vec.prepare_for_tokenization in llm2vec 0.2.3): the
# supervised and SimCSE adapters were trained on text wrapped like this.
LLM2VEC_INSTRUCTIONS = {
    "meta-llama/Meta-Llama-3-8B-Instruct": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "mistralai/Mistral-7B-Instruct-v0.2": ("[INST] ", " [/INST]"),
    "meta-llama/Llama-2-7b-chat-hf": ("[INST] ", " [/INST]"),
    "google/gemma-2-9b-it": ("<start_of_turn>user\n", "<end_of_turn>"),
    "Qwen/Qwen2-1.5B-Instruct": ("<|im_start|>user\n", "<|im_end|>"),
    "Qwen/Qwen2-7B-Instruct": ("<|im_start|>user\n", "<|im_end|>"),
}


def segment_format(cfg: Config, tokenizer, name_or_path: str):
    """The tokens around each segment: BOS when `segment_bos`, llm2vec's chat turn when `instruction`
    says so (`auto`: when a supervised/SimCSE `adapter_path` is set and the base has a known turn)."""
    mode = cfg.instruction
    if mode == "auto":
        mode = "llm2vec" if cfg.adapter_path and name_or_path in LLM2VEC_INSTRUCTIONS else "none"
    prefix, suffix = [], []
    if cfg.segment_bos:
        if tokenizer.bos_token_id is None:
            raise IcdlibError("segment_bos=true but the tokenizer has no BOS token: set segment_bos=false")
        prefix.append(tokenizer.bos_token_id)
    if mode == "llm2vec":
        if name_or_path not in LLM2VEC_INSTRUCTIONS:
            raise IcdlibError(f"instruction=llm2vec: llm2vec has no instruction format for base {name_or_path!r}; "
                              f"known: {', '.join(LLM2VEC_INSTRUCTIONS)} (set instruction=none)")
        before, after = LLM2VEC_INSTRUCTIONS[name_or_path]
        prefix += tokenizer(before, add_special_tokens=False)["input_ids"]
        suffix += tokenizer(after, add_special_tokens=False)["input_ids"]
    fmt = SegmentFormat(tuple(prefix), tuple(suffix))
    if fmt.body(cfg.segment_length) < 1:
        raise IcdlibError(f"segment_length={cfg.segment_length} leaves no room for note tokens after "
                          f"{len(prefix) + len(suffix)} format tokens: raise segment_length")
    return fmt


def tokenizer_without_training(cfg, train_texts: list[str]) -> tuple[object, int]:
    """The tokenizer fine-tuning reads the notes with, and the note tokens a model reads
    (`max_segments` × each segment's body), without loading or training a model: a real backbone's
    (`model_path`, or `base_model_path` alone), or for a tiny backbone the BPE tokenizer step 03
    learns from the same train notes (`train_tokenizer` is deterministic: the one 03 saves).

    Args:
        train_texts: the texts of the train split (used for a tiny backbone only)."""
    if not (cfg.model_path or cfg.base_model_path):
        tokenizer = train_tokenizer(train_texts, cfg.tiny_vocab)
        return tokenizer, segment_format(cfg, tokenizer, "").budget(cfg.segment_length, cfg.max_segments)
    from transformers import AutoTokenizer

    found = locate(cfg.model_path or cfg.base_model_path, cfg.base_model_path if cfg.model_path else "")
    tokenizer = AutoTokenizer.from_pretrained(found.tokenizer)
    fmt = segment_format(cfg, tokenizer, found.name_or_path)
    return tokenizer, fmt.budget(cfg.segment_length, cfg.max_segments)
