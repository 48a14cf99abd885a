"""LLM2Vec backbones: the real McGill-NLP checkpoints, or a tiny random one for CPUs.

Both load through `llm2vec.LLM2Vec.from_pretrained`, so the tests exercise the same loading
code as a GPU run. A tiny backbone is llm2vec's `LlamaBiModel` / `MistralBiModel` built from a
small config with random weights and a BPE tokenizer trained on the training notes, saved in
Hugging Face format in the run folder first. Trainability is set here: a LoRA adapter (fresh,
or continued from a second LLM2Vec adapter), the full backbone, or nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, MistralConfig, PreTrainedTokenizerFast

from icdlib.config import Config
from icdlib.runfolder import atomic_path

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-piece-sized BPE tokenizer learnt from `texts` (whitespace and punctuation split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False)
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


def make_tiny(cfg: Config, train_texts: list[str], out_dir: Path) -> Path:
    """Save a random tiny bidirectional backbone + tokenizer at `out_dir` (Hugging Face format)."""
    from llm2vec.models import LlamaBiModel, MistralBiModel

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(train_texts, cfg.tiny_vocab)
    config = tiny_config(cfg, tokenizer)
    model = (MistralBiModel if cfg.model_type == "mistral" else LlamaBiModel)(config)
    if cfg.tiny_init == "lsa":
        with torch.no_grad():
            model.embed_tokens.weight.copy_(lsa_embeddings(train_texts, tokenizer, cfg.tiny_hidden, cfg.seed))
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def load(model_path: str | Path, dtype: torch.dtype = torch.float32):
    """(bidirectional model, tokenizer) through llm2vec's loader; works offline on a local folder."""
    from llm2vec import LLM2Vec

    l2v = LLM2Vec.from_pretrained(str(model_path), torch_dtype=dtype, attn_implementation="sdpa")
    tokenizer = l2v.tokenizer
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return l2v.model, tokenizer


def make_trainable(model: torch.nn.Module, cfg: Config, adapter_path: str | Path = ""):
    """Apply `train_backbone`: LoRA (fresh, or continued from `adapter_path`), full, or frozen."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.train_backbone == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if cfg.train_backbone == "frozen":
        return model
    if adapter_path:
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")
    return get_peft_model(model, lora)
