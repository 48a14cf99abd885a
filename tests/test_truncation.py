"""Truncation is measured and chosen: head / tail / head_tail cuts, full lengths, 03's tokens.json,
and `predict` cutting as the run did."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from icdlib.model import backbones, checkpoint, encoding, train, trained
from icdlib.run import config
from icdlib import predict
from icdlib.report import label_stats, train as train_report
from icdlib.model.encoding import SegmentFormat
from icdlib.model.models import ICDCoder
from icdlib.run.runfolder import Run

from test_train import small_cfg


class Ids:
    """A tokenizer whose note "a b c" is the ids [a, b, c] (what tokenize needs of one)."""

    def __call__(self, texts, **kw):
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


TEN = " ".join(str(i) for i in range(10, 20))  # a 10-token note: ids 10..19


@pytest.mark.parametrize("mode, kept", [("head", [10, 11, 12, 13]), ("tail", [16, 17, 18, 19]),
                                        ("head_tail", [10, 11, 18, 19])])
def test_a_ten_token_note_in_a_four_token_budget(mode, kept):
    tok = encoding.tokenize([TEN, "1 2 3"], Ids(), 4, mode=mode)
    assert tok.note(0).tolist() == kept
    assert tok.note(1).tolist() == [1, 2, 3]  # within the budget: whole, whatever the mode
    assert tok.full_lengths.tolist() == [10, 3] and tok.lengths().tolist() == [4, 3]
    assert encoding.truncation_stats(tok) == {
        "notes": 2, "truncated_notes": 1, "share_truncated": 0.5, "tokens": 13, "tokens_kept": 7,
        "share_dropped": 6 / 13, "median_tokens": 6.5, "p90_tokens": 9.3}


def test_odd_budgets_and_edges():
    ids = np.arange(10)
    assert encoding.cut(ids, 5, "head_tail").tolist() == [0, 1, 2, 8, 9]  # ceil(5/2) from the start
    assert encoding.cut(ids, 1, "head_tail").tolist() == [0]
    assert encoding.cut(ids, 0, "tail").tolist() == []
    assert encoding.cut(ids, 10, "tail").tolist() == list(range(10))
    with pytest.raises(ValueError, match="truncation must be one of head, tail, head_tail"):
        encoding.cut(ids, 4, "middle")
    assert encoding.tokenize([TEN], Ids(), 0).full_lengths.tolist() == [10]  # lengths only


def test_the_cache_keys_the_mode_and_keeps_full_lengths(tmp_path):
    cache, tokenizer = tmp_path / "tokens", Ids()
    head = encoding.tokenize_cached([TEN], tokenizer, 4, cache, "train")
    [first] = cache.glob("train-*.npz")
    tail = encoding.tokenize_cached([TEN], tokenizer, 4, cache, "train", mode="tail")
    [second] = cache.glob("train-*.npz")  # the head tokens pruned
    assert second != first and head.ids.tolist() == [10, 11, 12, 13] and tail.ids.tolist() == [16, 17, 18, 19]
    again = encoding.tokenize_cached([TEN], tokenizer, 4, cache, "train", mode="tail")
    assert again.ids.tolist() == [16, 17, 18, 19] and again.full_lengths.tolist() == [10]
    with np.load(second) as z:
        assert z["full_lengths"].tolist() == [10]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = small_cfg(tmp_path_factory.mktemp("trunc"), "t", max_steps=2, eval_every=2, save_every=2,
                    segment_length=32, truncation="head_tail")
    train.fit(cfg, progress=False)
    return cfg


def test_tokens_json_counts_what_03_cut(tiny_run):
    cfg, run = tiny_run, Run.of(tiny_run)
    stats = json.loads(run.tokens_json.read_text())
    assert stats == train.load_token_stats(cfg.run_dir)
    notes = pd.read_parquet(run.notes)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.backbone)
    budget = 32 * 2  # the tiny recipe puts no BOS before segments: 32 note tokens each
    assert stats["max_note_tokens"] == budget and stats["truncation"] == "head_tail"
    for split in ("train", "val", "test"):
        texts = notes.loc[notes["split"] == split, "text"].tolist()
        whole = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        full = np.array([len(w) for w in whole])
        kept = np.minimum(full, budget)
        s = stats["splits"][split]
        assert s["notes"] == len(texts) and s["truncated_notes"] == int((full > budget).sum()) > 0
        assert s["tokens"] == full.sum() and s["tokens_kept"] == kept.sum()
        assert s["share_truncated"] == pytest.approx((full > budget).mean())
        assert s["share_dropped"] == pytest.approx(1 - kept.sum() / full.sum())
        assert s["median_tokens"] == np.median(full) and s["p90_tokens"] == pytest.approx(np.percentile(full, 90))
        [cache] = run.tokens.glob(f"{split}-*.npz")
        with np.load(cache) as z:
            assert z["full_lengths"].tolist() == full.tolist()
            cached = encoding.Tokenized(z["ids"], z["offsets"])
        longest = int(full.argmax())
        assert cached.note(longest).tolist() == whole[longest][:32] + whole[longest][-32:]
    assert "03_train/tokens.json" in json.loads(run.manifest("03").read_text())["outputs"]
    table = train_report.truncation(stats)
    assert table.index.tolist() == ["train", "val", "test"]
    assert table.loc["val", "truncated notes"] == stats["splits"]["val"]["truncated_notes"]


def test_predict_cuts_as_the_run_did(tiny_backbone, tmp_path, monkeypatch):
    cfg = config.resolve("tiny", {"segment_length": 8, "max_segments": 1, "train_backbone": "frozen",
                                  "attention_dim": 16, "truncation": "tail", "output_root": str(tmp_path)})
    encoder, tokenizer = backbones.load(tiny_backbone)
    torch.manual_seed(0)
    coder = ICDCoder(backbones.make_trainable(encoder, cfg), 1, cfg.head, cfg.attention_dim)
    labels = pd.DataFrame({"code": ["401.9"], "kind": ["diagnosis"], "short_title": ["Hypertension NOS"]})
    fmt = SegmentFormat(prefix=(tokenizer.bos_token_id,))
    folder = checkpoint.save(tmp_path / "best", coder, cfg, labels,
                             checkpoint.backbone_record(str(tiny_backbone), encoder=encoder, fmt=fmt), tokenizer)
    assert json.loads((folder / "icdlib.json").read_text())["config"]["truncation"] == "tail"
    loaded = predict.load(folder, device="cpu")
    assert loaded.truncation_mode == "tail" and loaded.max_tokens == 7
    seen = []
    monkeypatch.setattr(trained, "score", lambda model, tokens, *a, **k: seen.append(tokens) or np.zeros((len(tokens), 1)))
    text = "congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 7
    table = loaded.predict(text)[0]
    assert seen[0].note(0).tolist() == ids[-7:] and seen[0].full_lengths.tolist() == [len(ids)]
    assert table.attrs == {"tokens": len(ids), "kept_tokens": 7, "truncated_tokens": len(ids) - 7}
    assert loaded.truncation(text).to_dict("records") == [table.attrs]
    assert predict.truncation_line(table.attrs, loaded.truncation_mode).startswith(
        f"note truncated: kept the last 7 of {len(ids)} tokens")


def test_token_lengths_draws_the_budget():
    notes = pd.DataFrame({"split": ["train", "train", "val", "test"]})
    fig = label_stats.token_lengths(notes, [100, 700, 300, 900], budget=512)
    ax = fig.axes[0]
    assert ax.get_title() == "Note length in tokens (4 notes): 50% longer than the budget"
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [512]


def test_a_tiny_backbones_tokenizer_is_the_one_step_03_saves(tmp_path):
    """02 draws token lengths for the tiny backbone too: the BPE it learns from the train notes is
    the tokenizer 03's backbone is saved with, and the budget is 03's."""
    from transformers import AutoTokenizer

    cfg = config.resolve("tiny", {"tiny_layers": 1, "tiny_hidden": 16, "tiny_heads": 2, "tiny_vocab": 120,
                                  "segment_length": 32, "max_segments": 3})
    texts = [f"patient {i} admitted with congestive heart failure and atrial fibrillation, discharged stable"
             for i in range(30)]
    tokenizer, budget = backbones.tokenizer_without_training(cfg, texts)
    saved = AutoTokenizer.from_pretrained(backbones.make_tiny(cfg, texts, tmp_path / "backbone"))
    assert tokenizer.get_vocab() == saved.get_vocab() and len(tokenizer) == len(saved) > 50
    note = "sepsis after congestive heart failure 17"
    assert tokenizer(note)["input_ids"] == saved(note)["input_ids"]
    assert budget == 3 * 32  # no BOS, no instruction turn around a tiny backbone's segments


def test_a_real_backbones_tokenizer_loads_without_training(tmp_path):
    import hub_replica

    replica = hub_replica.build(tmp_path / "hub", "llama")
    cfg = config.resolve("llama3", {"model_path": str(replica.mntp), "base_model_path": str(replica.base),
                                    "adapter_path": str(replica.supervised), "segment_length": 64, "max_segments": 3})
    tokenizer, budget = backbones.tokenizer_without_training(cfg, [])  # train texts: for a tiny backbone only
    text = "congestive heart failure atrial fibrillation"
    assert tokenizer(text)["input_ids"] == backbones.load(str(replica.mntp), base_model_path=str(replica.base))[1](text)["input_ids"]
    fmt = backbones.segment_format(cfg, tokenizer, replica.names["base"])
    assert len(fmt.prefix) + len(fmt.suffix) > 1 and budget == 3 * (64 - len(fmt.prefix) - len(fmt.suffix))
