"""`predict` on a tiny model folder: NUL-only text is refused, truncation is reported and exact, and the
run's tuned threshold decides which codes are assigned."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from icdlib.model import backbones, checkpoint
from icdlib import cli, predict
from icdlib.run import config
from icdlib.model.encoding import SegmentFormat
from icdlib.run.errors import IcdlibError
from icdlib.model.models import ICDCoder

SEGMENT, SEGMENTS = 16, 2
KEPT = (SEGMENT - 1) * SEGMENTS  # a BOS opens every segment: 15 note tokens per segment
WORDS = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis "
         "pneumonia diabetes mellitus intubation catheter patient admitted discharged stable").split()


@pytest.fixture(scope="module")
def model_dir(tiny_backbone, tmp_path_factory):
    """A model folder as 03 writes it (frozen tiny backbone, fresh label-attention head), untrained."""
    cfg = config.resolve("tiny", {"segment_length": SEGMENT, "max_segments": SEGMENTS, "train_backbone": "frozen",
                                  "attention_dim": 16, "output_root": str(tmp_path_factory.mktemp("out"))})
    encoder, tokenizer = backbones.load(tiny_backbone)
    encoder = backbones.make_trainable(encoder, cfg)
    torch.manual_seed(0)
    coder = ICDCoder(encoder, 3, cfg.head, cfg.attention_dim)
    labels = pd.DataFrame({"code": ["401.9", "427.31", "38.93"], "kind": ["diagnosis", "diagnosis", "procedure"],
                           "short_title": ["Hypertension NOS", "Atrial fibrillation", "Venous cath NEC"]})
    fmt = SegmentFormat(prefix=(tokenizer.bos_token_id,))
    record = checkpoint.backbone_record(str(tiny_backbone), encoder=encoder, fmt=fmt)
    return checkpoint.save(tmp_path_factory.mktemp("model") / "best", coder, cfg, labels, record, tokenizer)


@pytest.fixture(scope="module")
def coder(model_dir):
    return predict.load(model_dir, device="cpu")


def note(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def n_tokens(coder, text: str) -> int:
    return len(coder.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_nul_only_text_is_empty(coder):
    for text in ("\x00", "\x00\x00 \n\x00\t", "   "):
        with pytest.raises(IcdlibError) as e:
            coder.predict(text)
        assert str(e.value) == "text 0 is empty: nothing to code"
    with pytest.raises(IcdlibError, match=r"^text 1 is empty: nothing to code$"):
        coder.predict([note(5), "\x00" * 100])
    assert len(coder.predict("sepsis\x00")[0]) == 3  # NUL among words is still a note


def test_truncation_is_counted_and_only_the_head_is_read(coder):
    assert coder.max_tokens == KEPT == 30
    short, long = note(6), note(200)
    n_short, n_long = n_tokens(coder, short), n_tokens(coder, long)
    assert n_short <= KEPT < n_long
    tables = coder.predict([short, long], top_k=2)
    assert tables[0].attrs == {"tokens": n_short, "kept_tokens": n_short, "truncated_tokens": 0}
    assert tables[1].attrs == {"tokens": n_long, "kept_tokens": KEPT, "truncated_tokens": n_long - KEPT}
    assert len(tables[1]) == 2 and tables[1]["score"].is_monotonic_decreasing
    counts = coder.truncation([short, long])
    assert counts.to_dict("records") == [tables[0].attrs, tables[1].attrs]
    # what lies beyond the kept tokens changes the counts, never the scores
    longer = long + " " + note(50)
    np.testing.assert_array_equal(coder.scores([long]), coder.scores([longer]))
    assert coder.truncation(longer)["tokens"].item() > n_long
    # ... and the kept head is what the model reads: the same scores as the head alone
    head = coder.tokenizer.decode(coder.tokenizer(long, add_special_tokens=False)["input_ids"][:KEPT])
    assert n_tokens(coder, head) == KEPT
    np.testing.assert_allclose(coder.scores([head]), coder.scores([long]), atol=1e-6)


def test_max_segments_can_be_raised_at_load(model_dir, coder):
    wide = predict.load(model_dir, device="cpu", max_segments=4)
    assert wide.max_tokens == 60
    text = note(200)
    assert wide.truncation(text).to_dict("records") == [
        {"tokens": n_tokens(coder, text), "kept_tokens": 60, "truncated_tokens": n_tokens(coder, text) - 60}]
    with pytest.raises(IcdlibError, match=r"max_segments must be a positive integer, got 0"):
        predict.load(model_dir, device="cpu", max_segments=0)


def test_truncation_line():
    line = predict.truncation_line({"tokens": 3210, "kept_tokens": 1024, "truncated_tokens": 2186})
    assert line == "note truncated: kept the first 1,024 of 3,210 tokens (68% dropped); raise max_segments to read more (predict --max-segments N)"
    assert predict.truncation_line({"tokens": 1000, "kept_tokens": 999}) == (
        "note truncated: kept the first 999 of 1,000 tokens (<1% dropped); raise max_segments to read more (predict --max-segments N)")
    assert predict.truncation_line({"tokens": 30, "kept_tokens": 30}) == ""


def test_cli_says_when_a_note_was_truncated(model_dir, coder, tmp_path, capsys):
    long, short, nul = tmp_path / "long.txt", tmp_path / "short.txt", tmp_path / "nul.txt"
    long.write_text(note(200))
    short.write_text(note(6))
    nul.write_bytes(b"\x00" * 64 + b"\n")
    n = n_tokens(coder, note(200))

    assert cli.main(["predict", "--model", str(model_dir), "--text-file", str(long), "--device", "cpu", "--top-k", "2",
                     "--threshold", "1.0"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"note truncated: kept the first {KEPT} of {n:,} tokens ({100 * (n - KEPT) / n:.0f}% dropped); "
                   f"raise max_segments to read more (predict --max-segments N)\n")
    assert len(out.strip().splitlines()) == 3  # header + top 2

    assert cli.main(["predict", "--model", str(model_dir), "--text-file", str(short), "--device", "cpu", "--json",
                     "--threshold", "1.0"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.lstrip().startswith("[")

    assert cli.main(["predict", "--model", str(model_dir), "--text-file", str(nul), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert err == f"icdlib: error: the note in {nul} is empty: nothing to code\n"  # the API says "text 0"


def test_cli_max_segments_reads_more_of_the_note(model_dir, coder, tmp_path, capsys):
    long = tmp_path / "long.txt"
    long.write_text(note(200))
    assert cli.main(["predict", "--model", str(model_dir), "--text-file", str(long), "--device", "cpu",
                     "--max-segments", "4", "--top-k", "2"]) == 0
    assert f"kept the first {2 * KEPT} of" in capsys.readouterr().err


def test_a_model_folder_names_what_differs_in_another_backbone(model_dir, tmp_path):
    """--backbone-path pointing at a backbone of another shape: the field that differs, in one line."""
    cfg = config.resolve("tiny", {"tiny_hidden": 32, "tiny_vocab": 300, "tiny_init": "random"})
    other = backbones.make_tiny(cfg, [" ".join(WORDS)] * 20, tmp_path / "other")
    recorded = json.loads((model_dir / "icdlib.json").read_text())
    assert recorded["backbone"]["architecture"]["hidden_size"] == 64 and recorded["versions"]["transformers"]
    with pytest.raises(IcdlibError) as e:
        predict.load(model_dir, device="cpu", model_path=str(other))
    text = str(e.value)
    assert "\n" not in text and f"the backbone at {other} is not the one {model_dir} was trained on" in text
    assert "hidden_size 32 here, 64 recorded" in text


# ---------------------------------------------------------------- a damaged model folder, a wrong path: one line

@pytest.fixture(scope="module")
def full_dir(tiny_backbone, tmp_path_factory):
    """A model folder of a fully fine-tuned tiny backbone: backbone/ (weights, config, tokenizer) and head."""
    cfg = config.resolve("tiny", {"segment_length": SEGMENT, "max_segments": SEGMENTS, "train_backbone": "full",
                                  "attention_dim": 16, "output_root": str(tmp_path_factory.mktemp("out"))})
    encoder, tokenizer = backbones.load(tiny_backbone)
    coder = ICDCoder(encoder, 3, cfg.head, cfg.attention_dim)
    labels = pd.DataFrame({"code": ["401.9", "427.31", "38.93"], "kind": ["diagnosis", "diagnosis", "procedure"],
                           "short_title": ["Hypertension NOS", "Atrial fibrillation", "Venous cath NEC"]})
    record = checkpoint.backbone_record(str(tiny_backbone), encoder=encoder)
    return checkpoint.save(tmp_path_factory.mktemp("full") / "best", coder, cfg, labels, record, tokenizer)


def cli_lines(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(["predict", *args])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).splitlines()


@pytest.mark.parametrize("damage, said", [
    ("cut", "backbone/model.safetensors is damaged (Error while deserializing header: incomplete metadata, file not "
            "fully covered): it was cut short or is not a safetensors file; copy the model folder again"),
    ("header", "head.safetensors is damaged (Error while deserializing header: invalid header length): it was cut "
               "short or is not a safetensors file; copy the model folder again"),
    ("tokenizer", "has no tokenizer in backbone/ (none of tokenizer.json, tokenizer.model, vocab.json): copy the model "
                  "folder again"),
])
def test_a_damaged_model_folder_is_one_line_naming_the_file(full_dir, tmp_path, capsys, damage, said):
    """Was: 26-37 lines of SafetensorError for a cut file; a missing tokenizer.json blamed the software versions."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(full_dir, copy)
    if damage == "cut":
        weights = copy / "backbone" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "header":
        (copy / "head.safetensors").write_bytes((copy / "head.safetensors").read_bytes()[:200])
    else:
        (copy / "backbone" / "tokenizer.json").unlink()
    (tmp_path / "note.txt").write_text("patient admitted with pneumonia")
    code, lines = cli_lines(capsys, "--model", str(copy), "--text-file", str(tmp_path / "note.txt"))
    assert code == 2 and lines == [f"icdlib: error: model folder {copy}{':' if damage != 'tokenizer' else ''} {said}"]


def test_the_undamaged_full_folder_codes_a_note(full_dir, tmp_path, capsys):
    (tmp_path / "note.txt").write_text("patient admitted with pneumonia")
    code, lines = cli_lines(capsys, "--model", str(full_dir), "--text-file", str(tmp_path / "note.txt"))
    assert code == 0 and lines[0].split() == ["code", "kind", "title", "score", "assigned"] and len(lines) == 5
    assert lines[-1] == (f"assigned at 0.5, the run's fixed threshold: no tuned one ({full_dir} is not a run's "
                         f"03_train/best/); --threshold sets one")  # on stderr


def test_a_folder_as_text_file_is_one_line(model_dir, tmp_path, capsys):
    """Was: 21 lines ending in IsADirectoryError."""
    code, lines = cli_lines(capsys, "--model", str(model_dir), "--text-file", str(tmp_path))
    assert code == 2 and lines == [f"icdlib: error: {tmp_path} is a folder: --text-file takes one text file (one note)"]


# ---------------------------------------------------------------- evidence with every prediction

EVIDENCE_NOTE = ("Patient <admitted> with sepsis & fever. Denies atrial fibrillation!\n"
                 "Congestive heart failure and hypertension treated; discharged stable.")


@pytest.fixture(scope="module")
def evidence_dir(model_dir, tmp_path_factory):
    """model_dir with random output weights in its head (a fresh head's are zero: every gradient
    would be zero, every span empty)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("evidence") / "best"
    shutil.copytree(model_dir, folder)
    head = load_file(folder / "head.safetensors")
    torch.manual_seed(1)
    head["weight"] = torch.randn_like(head["weight"]) * 2.0
    save_file(head, folder / "head.safetensors")
    return folder


@pytest.fixture(scope="module")
def evidence_coder(evidence_dir):
    return predict.load(evidence_dir, device="cpu")


def expected_spans(coder, text: str, code: str, method: str, n: int = 3):
    """The evidence of one code through explain's parts: tokens and offsets, scores, words, spans."""
    from icdlib.model import explain

    ids, offsets = explain.token_spans(text, coder.tokenizer, coder.max_tokens, coder.truncation_mode)
    label = coder.labels["code"].tolist().index(code)
    scores = explain.token_scores(coder.model, [ids], [label], method, SEGMENT, coder.fmt, coder.tokenizer.pad_token_id,
                                  sentences=[explain.sentence_ids(text, offsets)])[0]
    words = explain.word_scores(text, offsets, scores, "max" if method == "occlusion" else "sum")
    return explain.top_spans(text, words, n)


@pytest.mark.parametrize("method", ["attention", "attingrad", "occlusion"])
def test_evidence_is_the_top_spans_of_the_method(evidence_coder, method):
    plain = evidence_coder.predict(EVIDENCE_NOTE, top_k=2)[0]
    table = evidence_coder.predict(EVIDENCE_NOTE, top_k=2, evidence=True, evidence_method=method)[0]
    pd.testing.assert_frame_equal(table.drop(columns="evidence"), plain)
    assert table.attrs == plain.attrs
    for code, spans in zip(table["code"], table["evidence"]):
        assert spans == expected_spans(evidence_coder, EVIDENCE_NOTE, code, method)
        assert 1 <= len(spans) <= 3 and all(EVIDENCE_NOTE[s["begin"]:s["end"]] == s["text"] for s in spans)
        assert all(s["score"] > 0 for s in spans)
    assert evidence_coder.evidence_method() == "attingrad"


def test_evidence_offsets_point_into_the_text_as_given_when_the_run_cleans_it(evidence_coder):
    """text_cleaning=caml lower-cases and drops punctuation and numbers: the words are scored on the
    cleaned text, and their offsets lead back to the text the user gave."""
    import copy
    import dataclasses

    from icdlib.model import explain
    from icdlib.data.preprocess import clean_caml

    coder = copy.copy(evidence_coder)
    coder.cfg = dataclasses.replace(coder.cfg, text_cleaning="caml")
    text = "Pt ADMITTED w/ Sepsis, 2 days.\n  Denies Atrial-Fibrillation!"
    cleaned = clean_caml(text)
    assert cleaned == "pt admitted w sepsis days denies atrial fibrillation"
    words = coder.explain(text, ["427.31"], "attention")[0]
    assert words["word"].tolist() == ["Pt", "ADMITTED", "w/", "Sepsis,", "days.", "Denies", "Atrial-Fibrillation!"]
    assert all(text[b:e] == w for w, b, e in zip(words["word"], words["begin"], words["end"]))
    ids, offsets = explain.token_spans(cleaned, coder.tokenizer, coder.max_tokens)
    scores = explain.token_scores(coder.model, [ids], [1], "attention", SEGMENT, coder.fmt, coder.tokenizer.pad_token_id)
    on_cleaned = explain.word_scores(cleaned, offsets, scores[0])
    # "w/" holds "w"; "Atrial-Fibrillation!" holds the cleaned words "atrial" and "fibrillation"
    expected = on_cleaned["score"].tolist()
    np.testing.assert_allclose(words["score"], expected[:6] + [expected[6] + expected[7]], rtol=1e-6)
    spans = coder.predict(text, top_k=1, evidence=True, evidence_method="attention")[0]["evidence"][0]
    assert spans and all(text[s["begin"]:s["end"]] == s["text"] for s in spans)


def test_cli_evidence_as_json_text_and_html(evidence_dir, evidence_coder, tmp_path, capsys):
    import json

    note_file, page = tmp_path / "note.txt", tmp_path / "evidence.html"
    note_file.write_text(EVIDENCE_NOTE)
    base = ["predict", "--model", str(evidence_dir), "--text-file", str(note_file), "--device", "cpu", "--top-k", "2",
            "--evidence-method", "attention"]
    assert cli.main([*base, "--json", "--evidence", "--evidence-html", str(page)]) == 0
    out, err = capsys.readouterr()
    records = json.loads(out)
    table = evidence_coder.predict(EVIDENCE_NOTE, top_k=2, evidence=True, evidence_method="attention")[0]
    assert [r["code"] for r in records] == table["code"].tolist()
    assert [r["evidence"] for r in records] == table["evidence"].tolist()
    assert err.splitlines()[-1] == f"[icdlib] evidence of 2 codes highlighted in {page}"  # after the truncation line
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "label attention" in html
    assert all(f"<b>{code}</b>" in html for code in table["code"])
    assert "&lt;admitted&gt;" in html and "<admitted>" not in html and "&amp;" in html
    assert str(tmp_path) not in html and str(evidence_dir) not in html and "<script" not in html

    assert cli.main([*base, "--evidence", "--evidence-spans", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["code", "kind", "title", "score", "assigned"] and lines[3] == ""
    assert lines[4] == "evidence (attention): code  [begin:end]  score  text"
    first = table["evidence"][0][0]
    assert lines[5] == f"{table['code'][0]}  [{first['begin']}:{first['end']}]  {first['score']:.4f}  {json.dumps(first['text'])}"
    assert len(lines) == 7

    assert cli.main([*base[:-1], "lime", "--evidence"]) == 2
    assert capsys.readouterr().err == ("icdlib: error: explanation method must be one of attention, attingrad, "
                                       "input_x_gradient, integrated_gradients, occlusion, got 'lime'\n")
    assert cli.main([*base, "--evidence-html", str(tmp_path / "no" / "such" / "x.html")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"icdlib: error: cannot write {tmp_path / 'no' / 'such' / 'x.html'}: No such file or directory")


# ---------------------------------------------------------------- predict decides: the run's tuned threshold

def evaluated_run(model_dir, root, threshold: float):
    """A run folder whose 03_train/best/ is a copy of `model_dir` and whose 04_evaluate tuned `threshold`,
    with 04's manifest naming the best/ it scored (as `record.step` writes it)."""
    import shutil

    from icdlib.run.record import artifact_hash
    from icdlib.run.runfolder import Run

    from safetensors.torch import load_file, save_file

    run = Run(root / "run")
    shutil.copytree(model_dir, run.checkpoint("best"))
    head = run.checkpoint("best") / "head.safetensors"  # an untrained head scores every code 0.5: spread them
    generator = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=generator) for k, v in load_file(head).items()}, head)
    run.metrics.parent.mkdir(parents=True)
    run.metrics.write_text(json.dumps({"threshold": threshold, "with_mntp": {"threshold": 0.9}}))
    run.manifest("04").write_text(json.dumps({"inputs": {"03_train/best": artifact_hash(run.checkpoint("best"))},
                                              "outputs": {"04_evaluate/metrics.json": artifact_hash(run.metrics)}}))
    return run


def test_predict_marks_the_codes_the_runs_tuned_threshold_assigns(model_dir, tmp_path, capsys):
    text = note(6)
    (tmp_path / "note.txt").write_text(text)
    run = evaluated_run(model_dir, tmp_path, 0.5)
    ranked = predict.load(run.checkpoint("best"), device="cpu").predict(text)[0]  # three scores, best first
    first, second = ranked["score"].iloc[:2]
    assert first > second > ranked["score"].iloc[2]
    between = float(first + second) / 2
    run = evaluated_run(model_dir, tmp_path / "again", between)
    tuned = predict.load(run.checkpoint("best"), device="cpu")
    assert (tuned.threshold, tuned.threshold_source) == (between, "tuned on validation by the run's 04_evaluate")
    table = tuned.predict(text)[0]
    assert table.columns.tolist() == ["code", "kind", "title", "score", "assigned"]
    assert table["assigned"].tolist() == [True, False, False]

    code, lines = cli_lines(capsys, "--model", str(run.checkpoint("best")), "--text-file", str(tmp_path / "note.txt"),
                            "--device", "cpu")
    expected = table.assign(assigned=["yes", "no", "no"]).to_string(index=False, float_format=lambda x: f"{x:.4f}")
    assert code == 0 and lines == expected.splitlines()  # the tuned threshold: nothing to say on stderr
    assert lines[0].split() == ["code", "kind", "title", "score", "assigned"] and lines[1].split()[-1] == "yes"

    # --threshold overrides it; assigned codes past --top-k are counted on stderr
    low = ranked["score"].min() - 0.01
    code, lines = cli_lines(capsys, "--model", str(run.checkpoint("best")), "--text-file", str(tmp_path / "note.txt"),
                            "--device", "cpu", "--top-k", "1", "--threshold", f"{low}")
    assert code == 0 and lines[-1] == "2 more codes assigned beyond these 1: raise --top-k to see them"  # stderr
    assert len(lines) == 3 and lines[1].split()[-1] == "yes"
    code, lines = cli_lines(capsys, "--model", str(run.checkpoint("best")), "--text-file", str(tmp_path / "note.txt"),
                            "--device", "cpu", "--json", "--threshold", "1.0")
    assert code == 0 and [r["assigned"] for r in json.loads("\n".join(lines))] == [False] * 3

    # a best/ changed since 04 scored it: the fixed threshold, and why
    (run.checkpoint("best") / "note").write_text("retrained")
    stale = predict.load(run.checkpoint("best"), device="cpu")
    assert (stale.threshold, stale.threshold_source) == (
        0.5, "the run's fixed threshold: no tuned one (04_evaluate has not scored the current model "
             "(03_train/best changed since it ran))")


def test_a_missing_model_folder_and_an_empty_note_are_said_plainly(model_dir, tmp_path, capsys):
    (tmp_path / "note.txt").write_text("patient admitted with pneumonia")
    code, lines = cli_lines(capsys, "--model", str(tmp_path / "nope"), "--text-file", str(tmp_path / "note.txt"))
    assert code == 2 and lines == [f"icdlib: error: {tmp_path / 'nope'} does not exist"]
    (tmp_path / "empty.txt").write_text("  \n\n")
    code, lines = cli_lines(capsys, "--model", str(model_dir), "--text-file", str(tmp_path / "empty.txt"))
    assert code == 2 and lines == [f"icdlib: error: the note in {tmp_path / 'empty.txt'} is empty: nothing to code"]


def test_one_option_names_the_model_folder():
    """--model is the trained model folder; where its backbone moved is --backbone-path (was --model-path, which
    still parses, unlisted)."""
    parser = cli.parser()
    args = parser.parse_args(["predict", "--model", "m", "--text-file", "t", "--backbone-path", "b"])
    assert (args.model, args.backbone_path) == ("m", "b")
    assert parser.parse_args(["predict", "--model", "m", "--text-file", "t", "--model-path", "b"]).backbone_path == "b"
    sub = next(a for a in parser._actions if a.dest == "command").choices["predict"]
    listed = [o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
    assert [o for o in listed if "model" in o] == ["--model", "--base-model-path"]
