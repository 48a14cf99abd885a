"""A toy-size replica of the McGill-NLP hub layout, built offline for the tests.

Per family (Llama-3, Mistral) it writes, with random weights:

- `base/`: the base LLM saved like `meta-llama/Meta-Llama-3-8B-Instruct` or
  `mistralai/Mistral-7B-Instruct-v0.2` (a `*ForCausalLM` checkpoint and its tokenizer, which adds
  BOS; Llama-3's chat-turn markers are special tokens);
- `mntp/`: like `McGill-NLP/LLM2Vec-…-mntp`: `config.json` (naming the hub base), the tokenizer
  and a PEFT LoRA adapter trained on the bidirectional model, whose `adapter_config.json` names
  the hub base, exactly as shipped: the folder alone cannot be loaded without the base;
- `supervised/`: like `…-mntp-supervised`: a second LoRA adapter made on the merged model;
- `hf_cache/`: a Hugging Face cache (`HF_HUB_CACHE` layout) holding all three under their hub names.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

FAMILIES = {
    "llama": {
        "base": "meta-llama/Meta-Llama-3-8B-Instruct",
        "mntp": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
        "supervised": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-supervised",
        "specials": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "extra": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
        "kv_heads": 2,
    },
    "mistral": {
        "base": "mistralai/Mistral-7B-Instruct-v0.2",
        "mntp": "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp",
        "supervised": "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised",
        "specials": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "extra": [],
        "kv_heads": 2,
    },
}
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis pneumonia "
         "diabetes mellitus intubation catheter patient admitted discharged stable history chronic "
         "obstructive pulmonary disease coronary artery bypass graft hyperlipidemia anemia user INST").split()


@dataclass
class Replica:
    family: str
    base: Path
    mntp: Path
    supervised: Path
    hf_cache: Path
    names: dict


def _tokenizer(family: str, texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    specials = list(spec["specials"].values()) + spec["extra"]
    tok = Tokenizer(models.BPE(unk_token=spec["specials"].get("unk_token")))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    # "_" is a token of both real vocabularies: llm2vec's MNTP uses it as the mask token
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=800, special_tokens=specials,
                                                                show_progress=False, initial_alphabet=["_"]))
    bos = spec["specials"]["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"],
                                   additional_special_tokens=spec["extra"], clean_up_tokenization_spaces=False,
                                   **spec["specials"])


def _perturb_lora(model, seed: int) -> None:
    """LoRA B starts at zero; give it values so that merging the adapter visibly changes the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _rename_base(adapter_dir: Path, name: str) -> None:
    path = adapter_dir / "adapter_config.json"
    values = json.loads(path.read_text())
    values["base_model_name_or_path"] = name
    path.write_text(json.dumps(values, indent=2))


def _into_cache(cache: Path, repo: str, folder: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef" + f"{abs(hash(repo)) % 10**8:08d}"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def build(root: Path, family: str = "llama", positions: int = 512) -> Replica:
    """Write the replica of `family` under `root` (see the module docstring)."""
    from llm2vec.models import LlamaBiModel, MistralBiModel
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    spec = FAMILIES[family]
    root = Path(root)
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30)) for i in range(200)]
    tokenizer = _tokenizer(family, texts)
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=spec["kv_heads"], max_position_embeddings=positions,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    if family == "llama":
        config, causal, bi = LlamaConfig(rope_theta=500000.0, **shape), LlamaForCausalLM, LlamaBiModel
    else:
        config, causal, bi = MistralConfig(sliding_window=None, **shape), MistralForCausalLM, MistralBiModel
    torch.manual_seed(0)
    base = root / "base"
    causal(config).save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)

    lora = dict(r=4, lora_alpha=8, target_modules=SEVEN, bias="none")
    mntp = root / "mntp"
    model = get_peft_model(bi.from_pretrained(base), LoraConfig(**lora))
    _perturb_lora(model, 1)
    model.save_pretrained(mntp)
    _rename_base(mntp, spec["base"])
    config_values = json.loads((base / "config.json").read_text())
    (mntp / "config.json").write_text(json.dumps({"_name_or_path": spec["base"], **config_values}, indent=2))
    tokenizer.save_pretrained(mntp)

    supervised = root / "supervised"
    merged = PeftModel.from_pretrained(bi.from_pretrained(base), mntp).merge_and_unload()
    del merged.peft_config
    model = get_peft_model(merged, LoraConfig(**lora))
    _perturb_lora(model, 2)
    model.save_pretrained(supervised)
    _rename_base(supervised, spec["mntp"])

    cache = root / "hf_cache"
    for key, folder in (("base", base), ("mntp", mntp), ("supervised", supervised)):
        _into_cache(cache, spec[key], folder)
    return Replica(family, base, mntp, supervised, cache, {k: spec[k] for k in ("base", "mntp", "supervised")})
