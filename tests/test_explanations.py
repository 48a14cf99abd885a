"""Step 04's measure of the explanation methods (icdlib.evaluation.explanations) on small exact cases."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from icdlib.measure import evidence_metrics as em
from icdlib.model import explain
from icdlib.evaluation import explanations
from icdlib.model.encoding import PLAIN


def test_overlap_marks_every_token_that_touches_a_span():
    offsets = np.array([[0, 4], [4, 9], [10, 15], [15, 16], [17, 20]])
    assert explanations.overlap(offsets, np.array([[5, 11]])).tolist() == [0, 1, 1, 0, 0]
    assert explanations.overlap(offsets, np.array([[9, 10]])).tolist() == [0, 0, 0, 0, 0]  # the gap between
    assert explanations.overlap(offsets, np.array([[0, 1], [19, 30]])).tolist() == [1, 0, 0, 0, 1]
    assert explanations.overlap(offsets, np.zeros((0, 2))).tolist() == [0, 0, 0, 0, 0]


def test_true_positive_pairs_keep_codes_with_evidence_on_the_first_admissions():
    notes = pd.DataFrame({"hadm_id": [30, 10, 20]})
    labels = pd.DataFrame({"code": ["A", "B", "C"]})
    y_true = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    y_score = np.array([[0.9, 0.8, 0.9], [0.7, 0.9, 0.2], [0.1, 0.6, 0.6]])
    evidence = pd.DataFrame({"hadm_id": [30, 30, 10, 10, 20, 20], "code": ["A", "B", "A", "C", "C", "Z"],
                             "begin": 0, "end": 1, "kind": ["evidence", "negated", "evidence", "evidence",
                                                            "evidence", "evidence"]})
    # hadm 10 (row 1): A is a hit with evidence, C is missed; hadm 20 (row 2): C is a hit with evidence, B has
    # none; hadm 30 (row 0): A is a hit with evidence, B's only span is a negation
    assert explanations.true_positive_pairs(notes, y_true, y_score, 0.5, labels, evidence, 5) == \
        [(1, 0), (2, 2), (0, 0)]
    assert explanations.true_positive_pairs(notes, y_true, y_score, 0.5, labels, evidence, 2) == [(1, 0), (2, 2)]
    assert explanations.true_positive_pairs(notes, y_true, y_score, 0.95, labels, evidence, 5) == []


def _coder(tiny_backbone, n_labels=3, max_tokens=40):
    from icdlib.model import backbones
    from icdlib.model.models import ICDCoder

    encoder, tokenizer = backbones.load(tiny_backbone)
    torch.manual_seed(0)
    model = ICDCoder(encoder, n_labels, "label_attention", attention_dim=16).eval()
    return SimpleNamespace(model=model, tokenizer=tokenizer, max_tokens=max_tokens, truncation_mode="head",
                           cfg=SimpleNamespace(segment_length=16), fmt=PLAIN)


TEXT = "patient admitted with sepsis. no evidence of pneumonia. stable and discharged"


def test_build_pairs_mask_the_code_s_evidence_and_every_negated_mention(tiny_backbone):
    coder = _coder(tiny_backbone)
    notes = pd.DataFrame({"hadm_id": [7], "text": [TEXT]})
    labels = pd.DataFrame({"code": ["A", "B", "C"]})
    sepsis, pneumonia = TEXT.index("sepsis"), TEXT.index("pneumonia")
    evidence = pd.DataFrame({"hadm_id": [7, 7, 7], "code": ["A", "C", "B"],
                             "begin": [sepsis, 0, pneumonia], "end": [sepsis + 6, 7, pneumonia + 9],
                             "kind": ["evidence", "evidence", "negated"]})
    pairs = explanations.build_pairs(coder, notes, [(0, 0), (0, 2)], labels, evidence)
    assert len(pairs.texts) == 1 and pairs.note == [0, 0] and pairs.label == [0, 2]
    pieces = [TEXT[b:e] for b, e in pairs.offsets[0]]
    assert "".join(pieces).replace(" ", "") == TEXT.replace(" ", "")
    on = lambda mask: "".join(p for p, m in zip(pieces, mask) if m).strip()  # noqa: E731
    assert on(pairs.evidence[0]) == "sepsis" and on(pairs.evidence[1]) == "patient"
    assert on(pairs.negated[0]) == "pneumonia" == on(pairs.negated[1])


def test_measure_tunes_on_validation_and_reports_every_method(tiny_backbone):
    """Each method's figures on the reported split are evidence_metrics' on its token scores at the
    threshold tuned on validation; faithfulness is scored by the coder itself."""
    coder = _coder(tiny_backbone)
    texts = [TEXT, "sepsis with pneumonia. patient stable", "atrial fibrillation and sepsis. discharged"]
    notes = pd.DataFrame({"hadm_id": [1, 2, 3], "text": texts})
    labels = pd.DataFrame({"code": ["A", "B", "C"]})
    rows = [{"hadm_id": h, "code": "A", "begin": t.index("sepsis"), "end": t.index("sepsis") + 6, "kind": "evidence"}
            for h, t in zip([1, 2, 3], texts)]
    rows.append({"hadm_id": 1, "code": "B", "begin": TEXT.index("pneumonia"), "end": TEXT.index("pneumonia") + 9,
                 "kind": "negated"})
    evidence = pd.DataFrame(rows)
    split_pairs = {"val": explanations.build_pairs(coder, notes, [(1, 0), (2, 0)], labels, evidence),
                   "test": explanations.build_pairs(coder, notes, [(0, 0), (1, 0), (2, 0)], labels, evidence)}
    out = explanations.measure(coder, split_pairs, ("attention", "input_x_gradient"), ig_steps=4, resamples=20)
    json.dumps(out, allow_nan=False)
    assert out["notes"] == {"val": 2, "test": 3} and out["pairs"] == {"val": 2, "test": 3}
    assert out["best_method"] in ("attention", "input_x_gradient") and out["split"] == "test"
    test = split_pairs["test"]
    for method in ("attention", "input_x_gradient"):
        val_scores, _ = explanations.score_method(coder, split_pairs["val"], method, 4, 8)
        threshold = em.tune_threshold(val_scores, split_pairs["val"].evidence)
        scores, _ = explanations.score_method(coder, test, method, 4, 8)
        got = out["methods"][method]
        assert got["threshold"] == threshold
        assert got["token_f1"] == pytest.approx(em.precision_recall_f1(scores, test.evidence, threshold)["f1"])
        assert got["token_auprc"] == pytest.approx(em.auprc(scores, test.evidence))
        assert got["n_pairs"]["negation"] == 1 and got["seconds_per_note"] > 0
        assert got["ci95"]["token_f1"][0] <= got["ci95"]["token_f1"][1]
    # faithfulness's full-input probability is the coder's own on the note
    words = explanations.groups(test)
    faithful = explanations.faithfulness(coder, test, scores, words, 8)
    z = explain.logits(coder, [test.tokens[0]], 16, fmt=PLAIN, pad_id=coder.tokenizer.pad_token_id or 0)[0, 0]
    assert faithful["probability"][0] == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    assert np.isfinite(faithful["comprehensiveness"]).all() and np.isfinite(faithful["sufficiency"]).all()


def test_groups_give_each_whitespace_token_its_own_word():
    pairs = explanations.Pairs(texts=["ab cd"], offsets=[np.array([[0, 1], [1, 2], [2, 3], [3, 5]])], note=[0, 0])
    assert [g.tolist() for g in explanations.groups(pairs)] == [[0, 0, 2, 1], [0, 0, 2, 1]]


def test_the_share_safe_spans_table_holds_offsets_codes_and_scores_only():
    from icdlib.report import error_analysis

    found = [{"hadm_id": 5, "code": "428.0", "spans": [{"begin": 3, "end": 9, "text": "heart failure", "score": 0.5}]}]
    safe = error_analysis.spans_table(found, share_safe=True)
    assert safe.columns.tolist() == ["Admission", "Code", "Rank", "Begin", "End", "Score"]
    assert "heart failure" not in safe.to_string()
    assert error_analysis.spans_table(found, share_safe=False)["Text"].tolist() == ["heart failure"]
