"""llm2vec 0.2.3's own outputs on the hub replica: the yardstick icdlib's bidirectional conversion must equal.

Run by `make llm2vec-reference`, in llm2vec's pinned 2024 environment (`.venv-llm2vec`: transformers
4.44.2, peft 0.17.1, tokenizers 0.19.1, llm2vec 0.2.3, torch 2.13.0 on the CPU, which that make
target builds). For the Llama-3 and Mistral replicas (tests/hub_replica.py, the same bytes in any
environment) it records, with llm2vec's own loaders and classes, in fp32:

- `{family}.{adapter}.hidden` / `.embedding`: `LLM2Vec.from_pretrained(<-mntp hub name>)` (the base found
  through the Hugging Face cache, the MNTP adapter merged), then with `peft_model_name_or_path=` the
  `-mntp-supervised` and `-mntp-unsup-simcse` adapters: the last hidden states of a fixed batch of
  token ids, left-padded as llm2vec pads, and llm2vec's mean-pooled embeddings of that batch;
- `{family}.text.*`: `LLM2Vec.encode` of two notes: the ids, attention mask and pooling mask
  (`embed_mask`: the note's tokens, not the chat turn before them) it builds, and its embeddings;
- `{family}.objective.loss`: `LlamaBiForMNTP` / `MistralBiForMNTP` (the base with its LM head) on a fixed
  masked batch: the MNTP loss, token i predicted from the output at i-1.

It writes `llm2vec-0.2.3.json` (the tensors as numbers: outputs, no weights) and `reference.json`
(versions, the sha256 of every replica file it read) beside itself. tests/test_llm2vec_reference.py
builds the replica again on today's stack, checks the hashes and compares icdlib's outputs to these
tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for hub_replica

BATCH_LENGTHS = (12, 8, 5)  # real tokens per row of the fixed batch; rows padded on the left to 12
TEXTS = ["Discharge diagnosis: congestive heart failure, atrial fibrillation.",
         "History of chronic obstructive pulmonary disease; admitted with pneumonia and sepsis."]


def fixed_batch(vocab_size: int, pad_id: int, first_id: int):
    """(input_ids, attention_mask): ids from a fixed formula, left padding as llm2vec's tokenizer pads."""
    import torch

    width = max(BATCH_LENGTHS)
    ids = torch.full((len(BATCH_LENGTHS), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(BATCH_LENGTHS):
        ids[row, width - n:] = torch.tensor([first_id + (row * 31 + 7 * j) % (vocab_size - first_id) for j in range(n)])
        mask[row, width - n:] = 1
    return ids, mask


def masked_batch(vocab_size: int, mask_id: int, first_id: int):
    """(inputs, labels) for the MNTP loss: 2 × 16 ids, every third token replaced by the mask token."""
    import torch

    ids = torch.tensor([[first_id + (r * 13 + 5 * j) % (vocab_size - first_id) for j in range(16)] for r in range(2)])
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    chosen[:, 2::3] = True
    inputs = ids.masked_fill(chosen, mask_id)
    labels = ids.masked_fill(~chosen, -100)
    return inputs, labels


def save_tensors(tensors: dict, path: Path) -> None:
    """Tensors as JSON: {name: {dtype, shape, values}}; floats with 9 significant digits, which
    give every float32 back exactly."""
    out = {}
    for name, t in sorted(tensors.items()):
        flat = t.detach().reshape(-1).tolist()
        floating = t.dtype.is_floating_point
        out[name] = {"dtype": "float32" if floating else "int64", "shape": list(t.shape),
                     "values": [float(f"{v:.9g}") for v in flat] if floating else flat}
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")


def load_tensors(path: Path) -> dict:
    """`save_tensors`' file back as torch tensors."""
    import torch

    return {name: torch.tensor(t["values"], dtype=getattr(torch, t["dtype"])).reshape(t["shape"])
            for name, t in json.loads(Path(path).read_text()).items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replica_hashes(replica) -> dict:
    out = {}
    for kind in ("base", "mntp", "supervised", "simcse"):
        folder = getattr(replica, kind)
        for name in ("model.safetensors", "adapter_model.safetensors", "adapter_config.json", "config.json"):
            if (folder / name).is_file():
                out[f"{kind}/{name}"] = sha256(folder / name)
    return out


def main() -> None:
    import shutil

    work = Path(tempfile.mkdtemp(prefix="llm2vec-ref-"))
    # llm2vec finds the base by its hub name: one offline cache for both families, set before any import
    os.environ["HF_HUB_CACHE"] = str(work / "hf_cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    import hub_replica

    tensors, record = {}, {"families": {}}
    for family in ("llama", "mistral"):
        replica = hub_replica.build(work / family, family)
        shutil.copytree(replica.hf_cache, work / "hf_cache", dirs_exist_ok=True)
        from llm2vec import LLM2Vec
        from llm2vec.models import LlamaBiForMNTP, MistralBiForMNTP

        torch.manual_seed(0)
        names = replica.names
        entry = {"hashes": replica_hashes(replica)}
        for adapter in ("mntp", "supervised", "simcse"):
            extra = {} if adapter == "mntp" else {"peft_model_name_or_path": names[adapter]}
            l2v = LLM2Vec.from_pretrained(names["mntp"], pooling_mode="mean", **extra).eval()
            tok = l2v.tokenizer
            ids, mask = fixed_batch(len(tok), tok.pad_token_id, 10)
            with torch.no_grad():
                hidden = l2v.model(input_ids=ids, attention_mask=mask).last_hidden_state
                embedding = l2v.forward({"input_ids": ids, "attention_mask": mask, "embed_mask": mask.clone()})
            tensors[f"{family}.{adapter}.input_ids"] = ids
            tensors[f"{family}.{adapter}.attention_mask"] = mask
            tensors[f"{family}.{adapter}.hidden"] = hidden.float().contiguous()
            tensors[f"{family}.{adapter}.embedding"] = embedding.float().contiguous()
            if adapter == "mntp":  # the ids, masks and pooling mask exactly as `encode` builds them
                features = l2v.tokenize([l2v.prepare_for_tokenization(l2v._convert_to_str("", t)) for t in TEXTS])
                with torch.no_grad():
                    encoded = l2v.encode(TEXTS, batch_size=2, show_progress_bar=False, convert_to_tensor=True)
                tensors[f"{family}.text.input_ids"] = features["input_ids"]
                tensors[f"{family}.text.attention_mask"] = features["attention_mask"]
                tensors[f"{family}.text.embed_mask"] = features["embed_mask"]
                tensors[f"{family}.text.embedding"] = encoded.float().contiguous()
                entry["texts"] = TEXTS
                entry["prepared"] = [l2v.prepare_for_tokenization(t) for t in TEXTS]
        mntp_class = LlamaBiForMNTP if family == "llama" else MistralBiForMNTP
        model = mntp_class.from_pretrained(str(replica.base), torch_dtype=torch.float32).eval()
        inputs, labels = masked_batch(model.config.vocab_size, tok.convert_tokens_to_ids("_"), 10)
        with torch.no_grad():
            loss = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels).loss
        tensors[f"{family}.objective.inputs"] = inputs
        tensors[f"{family}.objective.labels"] = labels
        tensors[f"{family}.objective.loss"] = loss.float().reshape(1)
        record["families"][family] = entry
    out = HERE / "llm2vec-0.2.3.json"
    save_tensors(tensors, out)
    record["versions"] = {p: metadata.version(p) for p in ("llm2vec", "transformers", "peft", "tokenizers", "torch",
                                                          "safetensors", "numpy")}
    record["python"] = platform.python_version()
    record["batch_lengths"] = list(BATCH_LENGTHS)
    (HERE / "reference.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(tensors)} tensors to {out}")


if __name__ == "__main__":
    main()
