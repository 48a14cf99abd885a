"""icdlib on today's stack equals llm2vec 0.2.3 on its own, on the Llama-3 and Mistral hub replicas.

The reference tensors were made by llm2vec itself, in its pinned 2024 environment
(`make llm2vec-reference`: tests/llm2vec_reference/make_reference.py, transformers 4.44.2), from the
same replica files (their sha256 are checked first). Here the same models are loaded the way
icdlib loads them (`backbones.load` of the `-mntp` folder on its base; the `-supervised` and
`-unsup-simcse` adapters as `adapter_path` puts them on, through `backbones.make_trainable`) and
must give llm2vec's last hidden states, mean-pooled embeddings, `encode` output and MNTP loss.

Tolerance: fp32 on the CPU, absolute 1e-5 on hidden states and embeddings (values of order 1;
measured largest differences are printed with `-s` and stated in the README), 1e-5 on the loss.
"""

import json
from pathlib import Path

import pytest
import torch

import hub_replica
from icdlib.model import backbone_files, backbones, mntp
from icdlib.run import config
from icdlib.model.bidirectional import is_bidirectional
from llm2vec_reference.make_reference import load_tensors

REFERENCE = Path(__file__).resolve().parent / "llm2vec_reference"
ATOL = 1e-5
ADAPTERS = ("mntp", "supervised", "simcse")
FAMILIES = ("llama", "mistral")


@pytest.fixture(scope="module")
def reference():
    return load_tensors(REFERENCE / "llm2vec-0.2.3.json"), json.loads((REFERENCE / "reference.json").read_text())


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    return {family: hub_replica.build(tmp_path_factory.mktemp(f"ref-{family}"), family) for family in FAMILIES}


def encoder(replica, adapter: str, attention: str = "auto"):
    """The encoder as icdlib builds it for fine-tuning, eval mode (frozen LoRA when an adapter is set)."""
    model, tokenizer = backbones.load(str(replica.mntp), base_model_path=str(replica.base), attention=attention)
    if adapter != "mntp":
        cfg = config.resolve("llama3", {"train_backbone": "lora"})
        model = backbones.make_trainable(model, cfg, getattr(replica, adapter))
    return model.eval(), tokenizer


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def mean_pool(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens `keep` marks (llm2vec pools the last `keep.sum()` tokens of left-padded rows)."""
    keep = keep.to(hidden.dtype).unsqueeze(-1)
    return (hidden * keep).sum(1) / keep.sum(1)


def test_the_replica_is_the_one_llm2vec_read(reference, replicas):
    import hashlib

    _, record = reference
    for family, replica in replicas.items():
        for rel, digest in record["families"][family]["hashes"].items():
            kind, name = rel.split("/")
            path = getattr(replica, kind) / name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{family} {rel} differs from the reference's"
    assert record["versions"]["llm2vec"] == "0.2.3" and record["versions"]["transformers"] == "4.44.2"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hidden_states_and_embeddings_equal_llm2vecs(family, adapter, reference, replicas):
    tensors, _ = reference
    key = f"{family}.{adapter}"
    model, _ = encoder(replicas[family], adapter)
    assert is_bidirectional(model.get_base_model() if hasattr(model, "get_base_model") else model)
    ids, mask = tensors[f"{key}.input_ids"], tensors[f"{key}.attention_mask"]
    with torch.no_grad():  # as llm2vec calls its model: left padding, positions 0..L-1
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    diff = largest(hidden[real], tensors[f"{key}.hidden"][real])
    pooled = largest(mean_pool(hidden, mask), tensors[f"{key}.embedding"])
    print(f"\n{key}: largest difference {diff:.2e} (hidden), {pooled:.2e} (embedding)")
    assert diff <= ATOL and pooled <= ATOL
    # as icdlib reads a segment: right padding, positions counted over real tokens; RoPE is
    # relative, so each row's states are llm2vec's up to rounding
    from icdlib.model.models import position_ids

    lengths = mask.sum(1)
    right = torch.zeros_like(ids)
    right_mask = torch.zeros_like(mask)
    for row, n in enumerate(lengths.tolist()):
        right[row, :n] = ids[row, -n:]
        right_mask[row, :n] = 1
    with torch.no_grad():
        ours = model(input_ids=right, attention_mask=right_mask, position_ids=position_ids(right_mask.bool())).last_hidden_state
    for row, n in enumerate(lengths.tolist()):
        assert largest(ours[row, :n], tensors[f"{key}.hidden"][row, -n:]) <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_the_eager_kernel_equals_llm2vecs_too(family, reference, replicas):
    tensors, _ = reference
    model, _ = encoder(replicas[family], "mntp", attention="eager")
    ids, mask = tensors[f"{family}.mntp.input_ids"], tensors[f"{family}.mntp.attention_mask"]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    diff = largest(hidden[mask.bool()], tensors[f"{family}.mntp.hidden"][mask.bool()])
    print(f"\n{family} eager: largest difference {diff:.2e}")
    assert diff <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_of_notes_equals_llm2vecs(family, reference, replicas):
    """llm2vec's `encode` of two notes (its chat turn for the base, pooled over the note's tokens)."""
    tensors, _ = reference
    model, _ = encoder(replicas[family], "mntp")
    ids, mask, keep = (tensors[f"{family}.text.{k}"] for k in ("input_ids", "attention_mask", "embed_mask"))
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    diff = largest(mean_pool(hidden, keep), tensors[f"{family}.text.embedding"])
    print(f"\n{family} encode: largest difference {diff:.2e}")
    assert diff <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_mntp_loss_equals_llm2vecs_bi_for_mntp(family, reference, replicas):
    """LlamaBiForMNTP / MistralBiForMNTP's loss on the base (its own LM head) = icdlib.model.mntp's."""
    tensors, _ = reference
    replica = replicas[family]
    base, _ = backbones.load(str(replica.base))
    found = backbone_files.locate(str(replica.base))
    head, trainable = mntp.lm_head_for(base, found)
    assert trainable  # the checkpoint's own head, which the recipe's Trainer trains beside the LoRA
    with torch.no_grad():
        loss = mntp.mntp_loss(base.eval(), head, tensors[f"{family}.objective.inputs"], tensors[f"{family}.objective.labels"])
    diff = abs(loss.item() - tensors[f"{family}.objective.loss"].item())
    print(f"\n{family} MNTP loss {loss.item():.6f}: difference {diff:.2e}")
    assert diff <= ATOL
