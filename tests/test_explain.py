"""Explanation methods on a 2-layer tiny model, each against a slow reference computed another way:
through the model's ordinary forward pass (token ids in, a hook on the embedding layer where an
embedding must change), one pair and one step at a time."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from icdlib.model import backbones, explain
from icdlib.run import config
from icdlib.model.encoding import SegmentFormat, collate, tokenize
from icdlib.run.errors import IcdlibError
from icdlib.model.models import ICDCoder

SEGMENT = 16
TEXTS = ["Patient admitted with sepsis. denies atrial fibrillation!\npneumonia treated; discharged stable.",
         "congestive heart failure, acute kidney injury? intubation catheter.\nhypertension diabetes mellitus",
         "sepsis pneumonia"]
KNOWN = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis pneumonia diabetes "
         "mellitus intubation catheter patient admitted discharged stable sepsis pneumonia heart")  # no <unk>


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    """(coder, tokenizer, fmt): the 2-layer tiny backbone, a label-attention head over 3
    codes with random output weights (a fresh head's are zero: every gradient would be zero)."""
    cfg = config.resolve("tiny", {"train_backbone": "frozen"})
    encoder, tokenizer = backbones.load(tiny_backbone)
    encoder = backbones.make_trainable(encoder, cfg)
    torch.manual_seed(0)
    coder = ICDCoder(encoder, 3, "label_attention", attention_dim=16)
    with torch.no_grad():
        coder.head.weight.normal_(0, 2.0)
        coder.head.bias.normal_(0, 1.0)
    fmt = SegmentFormat((tokenizer.bos_token_id,), (tokenizer.eos_token_id,))  # 14 note tokens per segment
    return coder.eval(), tokenizer, fmt


def spans(tokenizer, max_tokens=40, mode="head"):
    return [explain.token_spans(t, tokenizer, max_tokens, mode) for t in TEXTS]


def forward_logits(coder, notes, fmt, pad_id, replace=None):
    """Logits of the ordinary forward pass (token ids in), one note at a time; `replace(emb, positions)`
    may change the embedding layer's output (positions: the note tokens in the flattened segments)."""
    out = []
    for ids in notes:
        batch = collate([(np.asarray(ids), np.zeros(0, np.float32), 0)], SEGMENT, pad_id, fmt=fmt)
        seg_len, body = batch["input_ids"].shape[-1], fmt.body(SEGMENT)
        j = np.arange(len(ids))
        positions = torch.as_tensor((j // body) * seg_len + len(fmt.prefix) + j % body)
        hook = None
        if replace is not None:
            def change(module, args, output):
                flat = output.reshape(-1, output.shape[-1]).clone()
                used = batch["attention_mask"].reshape(-1, seg_len).bool().any(-1)  # encode embeds used segments only
                where = torch.full((used.numel() * seg_len,), -1)
                where[torch.arange(used.numel() * seg_len).reshape(-1, seg_len)[used].reshape(-1)] = \
                    torch.arange(int(used.sum()) * seg_len)
                return replace(flat, where[positions]).reshape(output.shape)
            hook = coder.encoder.get_input_embeddings().register_forward_hook(change)
        try:
            out.append(coder(batch["input_ids"], batch["attention_mask"])[0])
        finally:
            if hook is not None:
                hook.remove()
    return out


def test_token_spans_are_the_tokens_the_model_reads(tiny):
    _, tok, _ = tiny
    for mode in ("head", "tail", "head_tail"):
        for text in TEXTS:
            ids, offsets = explain.token_spans(text, tok, 17, mode)
            assert ids.tolist() == tokenize([text], tok, 17, mode=mode).note(0).tolist()
            pieces = tok.convert_ids_to_tokens(ids.tolist())  # "<unk>" for letters outside the tiny vocabulary
            assert [text[b:e] if p != tok.unk_token else p for (b, e), p in zip(offsets, pieces)] == pieces
    ids, offsets = explain.token_spans("sepsis, pneumonia", tok, 2, "tail")
    assert offsets.tolist() == [[6, 7], [8, 17]] and tok.convert_ids_to_tokens(ids.tolist())[1] == "pneumonia"


def test_attention_is_the_label_attention_of_token_attention(tiny):
    coder, tok, fmt = tiny
    notes = [ids for ids, _ in spans(tok)]
    got = explain.token_scores(coder, notes, [1, 2, 0], "attention", SEGMENT, fmt, pad_id=tok.pad_token_id)
    for text, label, scores in zip(TEXTS, [1, 2, 0], got):
        table = explain.token_attention(coder, tok, text, label, 40, SEGMENT, fmt=fmt)
        assert len(scores) == len(table)
        np.testing.assert_allclose(scores, table["weight"].to_numpy(), rtol=1e-6)


def test_input_x_gradient_is_the_finite_difference_along_each_embedding(tiny):
    """reduce="sum": e_t · ∂z/∂e_t, the derivative of z as token t's embedding is scaled by (1 + h)
    (float32 throughout: Llama's RMSNorm computes in float32 whatever the weights' dtype);
    reduce="l2": ‖e_t ⊙ ∂z/∂e_t‖₂ with the gradient from backward() through the ids' forward pass."""
    coder, tok, fmt = tiny
    ids = explain.token_spans(KNOWN, tok, 40)[0]
    label, h = 1, 1e-2
    signed = explain.token_scores(coder, [ids], [label], "input_x_gradient", SEGMENT, fmt, tok.pad_token_id,
                                  reduce="sum")[0]
    assert len(signed) == len(ids) == 22 and tok.unk_token_id not in ids  # two segments of 14 note tokens
    for t in range(len(ids)):
        def scaled(by):
            def replace(flat, where):
                flat[where[t]] = flat[where[t]] * by
                return flat
            return forward_logits(coder, [ids], fmt, tok.pad_token_id, replace)[0][label].item()

        def derivative(h):
            return (scaled(1 + h) - scaled(1 - h)) / (2 * h)
        # Richardson's extrapolation: error O(h⁴); what is left is float32's rounding of z over h
        assert signed[t] == pytest.approx((4 * derivative(h) - derivative(2 * h)) / 3, rel=1e-2,
                                          abs=1e-3 * float(np.abs(signed).max()))

    kept = {}

    def keep(flat, where):
        flat.requires_grad_(True)
        kept["flat"], kept["where"] = flat, where
        return flat
    with torch.enable_grad():
        forward_logits(coder, [ids], fmt, tok.pad_token_id, keep)[0][label].backward()
    rows = kept["flat"][kept["where"]]
    reference = (rows * kept["flat"].grad[kept["where"]]).norm(dim=-1).detach().numpy()
    coder.zero_grad(set_to_none=True)
    l2 = explain.token_scores(coder, [ids], [label], "input_x_gradient", SEGMENT, fmt, tok.pad_token_id)[0]
    np.testing.assert_allclose(l2, reference, rtol=1e-6)


def test_attingrad_is_attention_times_input_x_gradient(tiny):
    coder, tok, fmt = tiny
    notes, labels = [ids for ids, _ in spans(tok)], [0, 1, 2]
    kw = dict(segment_length=SEGMENT, fmt=fmt, pad_id=tok.pad_token_id)
    attention = explain.token_scores(coder, notes, labels, "attention", **kw)
    gradient = explain.token_scores(coder, notes, labels, "input_x_gradient", **kw)
    got = explain.token_scores(coder, notes, labels, "attingrad", **kw)
    for a, g, ag in zip(attention, gradient, got):
        np.testing.assert_allclose(ag, a * g, rtol=1e-6)
        assert (ag >= 0).all() and ag.max() > 0


def slow_integrated_gradients(coder, ids, label, fmt, pad_id, steps):
    """One Gauss–Legendre point at a time, through the ids' forward pass: the embedding layer's output
    at the note tokens replaced by the point on the path, its gradient kept; Σ_k w_k g_k ⊙ (e − e')."""
    base = explain.baseline_embedding(coder)
    alphas, weights = np.polynomial.legendre.leggauss(steps)
    total, diff = 0.0, None
    for a, w in zip((alphas + 1) / 2, weights / 2):
        kept = {}

        def replace(flat, where, a=a):
            x = flat[where]
            path = (base + a * (x - base)).detach().requires_grad_(True)
            kept["path"], kept["diff"] = path, (x - base).detach()
            flat = flat.clone()
            flat[where] = path
            return flat
        with torch.enable_grad():
            z = forward_logits(coder, [ids], fmt, pad_id, replace)[0][label]
            (grad,) = torch.autograd.grad(z, kept["path"])
        total = total + w * grad
        diff = kept["diff"]
    return (diff * total).sum(-1).numpy()


def test_integrated_gradients_is_complete_within_its_step_error(tiny):
    """On words the tiny tokenizer knows: an unknown token's embedding row is all zero in the tiny
    model, the singular point of RMSNorm, where the path's end is too steep for any quadrature."""
    coder, tok, fmt = tiny
    ids = explain.token_spans(KNOWN, tok, 40)[0]
    label = 1
    z = forward_logits(coder, [ids], fmt, tok.pad_token_id)[0][label].item()
    base = explain.baseline_embedding(coder)

    def to_base(flat, where):
        flat[where] = base
        return flat
    z0 = forward_logits(coder, [ids], fmt, tok.pad_token_id, to_base)[0][label].item()
    assert abs(z - z0) > 0.1
    errors = {}
    for steps in (4, explain.IG_STEPS, 64):
        scores = explain.token_scores(coder, [ids], [label], "integrated_gradients", SEGMENT, fmt,
                                      tok.pad_token_id, ig_steps=steps, reduce="sum")[0]
        errors[steps] = abs(scores.sum() - (z - z0)) / abs(z - z0)
    # Gauss–Legendre's error falls with the points: the default within 1e-3 of z − z', 64 within 1e-5
    # (the scores are float32)
    assert errors[explain.IG_STEPS] < 1e-3 and errors[64] < 1e-5
    assert errors[64] <= errors[explain.IG_STEPS] <= errors[4]
    # and each token's score is the slow loop's, to rounding
    for steps in (3, explain.IG_STEPS):
        fast = explain.token_scores(coder, [ids], [label], "integrated_gradients", SEGMENT, fmt, tok.pad_token_id,
                                    ig_steps=steps, reduce="sum")[0]
        np.testing.assert_allclose(fast, slow_integrated_gradients(coder, ids, label, fmt, tok.pad_token_id, steps),
                                   rtol=1e-5, atol=1e-7)


def test_occlusion_is_the_logit_drop_without_each_sentence(tiny):
    coder, tok, fmt = tiny
    text = TEXTS[0]
    ids, offsets = explain.token_spans(text, tok, 40)
    sentences = explain.sentence_ids(text, offsets)
    assert sentences.max() == 2  # "Patient ... sepsis." | "denies ... fibrillation!" | "pneumonia ... stable."
    got = explain.token_scores(coder, [ids, ids], [0, 2], "occlusion", SEGMENT, fmt, tok.pad_token_id,
                               sentences=[sentences, sentences])
    full = forward_logits(coder, [ids], fmt, tok.pad_token_id)[0]
    for label, scores in zip([0, 2], got):
        for s in range(3):
            without = forward_logits(coder, [ids[sentences != s]], fmt, tok.pad_token_id)[0]
            np.testing.assert_allclose(scores[sentences == s], (full[label] - without[label]).item(), rtol=1e-6)
    # a note whose only sentence goes scores the head's bias (nothing is left to attend to)
    for fmt in (fmt, SegmentFormat()):
        alone = explain.token_scores(coder, [ids[:3]], [1], "occlusion", SEGMENT, fmt, tok.pad_token_id,
                                     sentences=[np.zeros(3, np.int64)])[0]
        z = forward_logits(coder, [ids[:3]], fmt, tok.pad_token_id)[0][1]
        np.testing.assert_allclose(alone, (z - coder.head.bias[1]).item(), rtol=1e-6)


@pytest.mark.parametrize("method", explain.METHODS)
def test_batching_gives_the_scores_of_one_pair_at_a_time(tiny, method):
    coder, tok, fmt = tiny
    found = spans(tok, max_tokens=33)
    notes = [found[0][0], found[1][0], found[2][0], found[0][0]]
    sentences = [explain.sentence_ids(TEXTS[i], found[i][1]) for i in (0, 1, 2, 0)]
    labels = [0, 1, 2, 2]
    kw = dict(segment_length=SEGMENT, fmt=fmt, pad_id=tok.pad_token_id, sentences=sentences, ig_steps=4)
    together = explain.token_scores(coder, notes, labels, method, batch_size=3, **kw)
    for i in range(len(notes)):
        alone = explain.token_scores(coder, notes[i:i + 1], labels[i:i + 1], method, batch_size=1,
                                     **{**kw, "sentences": sentences[i:i + 1]})[0]
        assert together[i].dtype == np.float32 and len(together[i]) == len(notes[i])
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-7)


def test_the_model_is_left_as_it_was(tiny):
    coder, tok, fmt = copy.deepcopy(tiny[0]), tiny[1], tiny[2]
    coder.train()
    coder.head.weight.requires_grad_(True)
    coder.encoder.requires_grad_(False)
    before = {k: v.clone() for k, v in coder.state_dict().items()}
    flags = {n: p.requires_grad for n, p in coder.named_parameters()}
    ids, offsets = spans(tok)[0]
    for method in explain.METHODS:
        explain.token_scores(coder, [ids], [1], method, SEGMENT, fmt, tok.pad_token_id, ig_steps=2,
                             sentences=[explain.sentence_ids(TEXTS[0], offsets)])
    assert coder.training
    assert {n: p.requires_grad for n, p in coder.named_parameters()} == flags
    assert all(p.grad is None for p in coder.parameters())
    assert all(torch.equal(before[k], v) for k, v in coder.state_dict().items())


def test_attention_methods_need_a_label_attention_head(tiny_backbone, tiny):
    _, tok, fmt = tiny
    encoder, _ = backbones.load(tiny_backbone)
    coder = ICDCoder(encoder, 3, "mean")
    ids = spans(tok)[2][0]
    with pytest.raises(IcdlibError, match="explanation method attingrad needs head: label_attention"):
        explain.token_scores(coder, [ids], [0], "attingrad", SEGMENT, fmt)
    with pytest.raises(IcdlibError, match="explanation method must be one of attention, attingrad"):
        explain.token_scores(coder, [ids], [0], "lime", SEGMENT, fmt)
    assert len(explain.token_scores(coder, [ids], [0], "input_x_gradient", SEGMENT, fmt)[0]) == len(ids)


def test_normalize_divides_by_the_l1_norm(tiny):
    coder, tok, fmt = tiny
    ids = spans(tok)[0][0]
    raw, unit = (explain.token_scores(coder, [ids], [0], "input_x_gradient", SEGMENT, fmt, reduce="sum",
                                      normalize=n)[0] for n in (False, True))
    np.testing.assert_allclose(unit, raw / np.abs(raw).sum(), rtol=1e-6)


def test_sentences_end_at_stops_and_newlines_and_long_ones_are_cut():
    text = "Dose 1.5 mg. PE ruled out!\nNo fever? ok"
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    offsets = np.asarray(words)
    # Dose 1.5 mg. | PE ruled out! | No fever? | ok
    assert explain.sentence_ids(text, offsets).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    assert explain.sentence_ids(text, offsets, max_tokens=2).tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    assert explain.sentence_ids(text, offsets[:0]).tolist() == []


def test_word_scores_sum_the_pieces_of_each_word():
    text = "Diphtheria  ruled out.\nPE"
    offsets = np.array([[0, 1], [1, 4], [4, 10], [10, 12], [12, 17], [17, 21], [21, 22], [22, 23], [23, 25]])
    scores = np.array([0.1, 0.2, 0.3, 9.0, 0.5, 0.25, 0.05, 7.0, 1.0])  # [10, 12) and [22, 23) are whitespace
    table = explain.word_scores(text, offsets, scores)
    assert table["word"].tolist() == ["Diphtheria", "ruled", "out.", "PE"]
    assert table[["begin", "end"]].to_numpy().tolist() == [[0, 10], [12, 17], [18, 22], [23, 25]]
    np.testing.assert_allclose(table["score"], [0.6, 0.5, 0.3, 1.0])
    top = explain.word_scores(text, offsets, scores, agg="max")
    np.testing.assert_allclose(top["score"], [0.3, 0.5, 0.25, 1.0])
    # a piece carrying its leading space (byte-level BPE: "Ġruled") belongs to the word after it
    assert explain.word_scores(text, np.array([[11, 17]]), np.array([2.0]))["word"].tolist() == ["ruled"]
    # words the model did not read are not listed
    assert explain.word_scores(text, offsets[:3], scores[:3])["word"].tolist() == ["Diphtheria"]


def test_top_spans_grow_around_the_best_words():
    text = "no PE. atrial fibrillation with RVR noted\nrate control"
    words = pd.DataFrame({"word": text.split(), "score": [0.0, -1.0, 0.9, 1.0, 0.6, 0.2, 0.1, 0.3, 0.05]})
    starts = [text.index(w, i) for w, i in zip(words["word"], [0, 3, 7, 14, 27, 32, 36, 42, 47])]
    words["begin"], words["end"] = starts, [s + len(w) for s, w in zip(starts, words["word"])]
    got = explain.top_spans(text, words, n=3)
    assert [(s["text"], round(s["score"], 6)) for s in got] == [
        ("atrial fibrillation with", 2.5), ("rate", 0.3), ("RVR noted", 0.3)]
    assert all(text[s["begin"]:s["end"]] == s["text"] for s in got)
    assert explain.top_spans(text, words, n=1, max_words=2)[0]["text"] == "atrial fibrillation"
    # a newline is whitespace: "noted" and "rate" are neighbours; no positive score, no evidence
    assert [s["text"] for s in explain.top_spans(text, words.assign(score=[0, -1, 0, 0, 0, 0, 1, 1, 0]), 5)] == [
        "noted\nrate"]


def test_words_html_escapes_text_and_shows_the_scale():
    text = "<b>PE</b> ruled & out"
    words = pd.DataFrame({"word": ["<b>PE</b>", "ruled", "&", "out"], "begin": [0, 10, 16, 18],
                          "end": [9, 15, 17, 21], "score": [-0.5, 2.0, 0.0, 1.0]})
    page = explain.page_html([explain.words_html(text, words, "415.19", "Pulm embol <NEC>")], "Evidence <x>")
    assert "<b>PE" not in page and "&lt;b&gt;PE&lt;/b&gt;" in page and "&amp;" in page
    assert "<b>415.19</b> Pulm embol &lt;NEC&gt;" in page and "<title>Evidence &lt;x&gt;</title>" in page
    assert "word score -0.5" in page and "> 2</span>" in page  # the legend's ends: the lowest and highest score
    assert "rgba(255,140,0,1.00)'>ruled<" in page and "rgba(30,110,255,1.00)'>&lt;b&gt;PE&lt;/b&gt;<" in page
    assert "rgba(255,140,0,0.50)'>out<" in page
    assert "<script" not in page and "http" not in page
    part = explain.words_html(text, words, "c", "t", window=2)
    assert ">ruled<" in part and "&amp;" not in part and ">out<" not in part and part.endswith("</span> …</p>")
