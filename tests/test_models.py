import numpy as np
import pytest
import torch

from icdlib.model import backbones, train
from icdlib.run import config
from icdlib.model.bidirectional import is_bidirectional
from icdlib.model.encoding import collate, left_pad_segments, tokenize
from icdlib.model.models import ICDCoder, LabelAttentionHead, MeanHead, checkpoint_activations, loss_fn


def build(path, train_backbone="lora", head="label_attention", n_labels=5, checkpointing=False):
    cfg = config.resolve("tiny", {"train_backbone": train_backbone, "lora_r": 4})
    encoder, tokenizer = backbones.load(path)
    encoder = backbones.make_trainable(encoder, cfg)
    torch.manual_seed(0)
    coder = ICDCoder(encoder, n_labels, head, attention_dim=32)
    if checkpointing:
        base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        checkpoint_activations(base)
    return coder, tokenizer


def test_the_tiny_backbone_loads_bidirectional(tiny_backbone):
    coder, tok = build(tiny_backbone, "frozen")
    coder.eval()
    ids = torch.tensor([tok("heart failure with atrial fibrillation", add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    first = coder.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[0, 0]
    ids2 = ids.clone()
    ids2[0, -1] = (ids2[0, -1] + 7) % len(tok)
    first2 = coder.encoder(input_ids=ids2, attention_mask=mask).last_hidden_state[0, 0]
    assert not torch.allclose(first, first2), "changing the last token must change the first token's state"
    assert type(coder.encoder).__name__ == "LlamaModel" and is_bidirectional(coder.encoder)


def test_segments_and_padding_side_do_not_change_scores(tiny_backbone):
    coder, tok = build(tiny_backbone, "frozen")
    coder.eval()
    texts = ["heart failure " * 30, "sepsis pneumonia " * 5, "catheter " * 3]
    toks = tokenize(texts, tok, max_tokens=100)
    items = [(toks.note(i), np.zeros(5, np.float32), i) for i in range(3)]
    right = collate(items, segment_length=16, pad_id=tok.pad_token_id)
    left = collate(items, segment_length=16, pad_id=tok.pad_token_id, padding_side="left")
    assert right["input_ids"].shape == (3, 4, 16)  # 60 tokens → 4 segments of 16
    assert right["attention_mask"][2].sum() == len(toks.note(2))
    with torch.no_grad():
        a = coder(right["input_ids"], right["attention_mask"])
        b = coder(left["input_ids"], left["attention_mask"])
        alone = coder(*[collate(items[1:2], 16, tok.pad_token_id)[k] for k in ("input_ids", "attention_mask")])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1:2], alone, atol=1e-5, rtol=1e-5)


def test_left_pad_segments_moves_padding_only():
    ids = torch.tensor([[[5, 6, 0, 0], [7, 0, 0, 0]]])
    mask = (ids != 0).long()
    lid, lmask = left_pad_segments(ids, mask)
    assert lid.tolist() == [[[0, 0, 5, 6], [0, 0, 0, 7]]] and lmask.tolist() == [[[0, 0, 1, 1], [0, 0, 0, 1]]]


def test_mean_head_is_a_masked_mean():
    head = MeanHead(2, 1, dropout=0.0)
    with torch.no_grad():
        head.out.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.out.bias.zero_()
    states = torch.tensor([[[1.0, 0], [3.0, 0], [100.0, 0]]])
    mask = torch.tensor([[True, True, False]])
    assert head(states, mask).item() == pytest.approx(2.0)


def test_label_attention_ignores_padding_and_is_stable():
    torch.manual_seed(0)
    head = LabelAttentionHead(8, 3, attention_dim=4, dropout=0.0).eval()
    torch.nn.init.normal_(head.weight)
    states = torch.randn(1, 5, 8) * 1e3  # large values: the softmax must not overflow
    mask = torch.tensor([[True, True, True, False, False]])
    out = head(states, mask)
    changed = states.clone()
    changed[0, 3:] = -5e3
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, head(changed, mask))


@pytest.mark.parametrize("train_backbone", ["lora", "full"])
def test_every_trainable_parameter_gets_a_gradient_under_checkpointing(tiny_backbone, train_backbone):
    coder, tok = build(tiny_backbone, train_backbone, checkpointing=True)
    with torch.no_grad():  # LoRA B and the head's output weights start at zero, which would zero
        for name, p in coder.named_parameters():  # the gradients behind them whatever the wiring
            if "lora_B" in name or name in ("head.weight", "head.out.weight"):
                p.normal_(0, 0.02)
    coder.train()
    toks = tokenize(["heart failure sepsis " * 12, "pneumonia " * 4], tok, 64)
    batch = collate([(toks.note(i), np.ones(5, np.float32) * (i % 2), i) for i in range(2)], 16, tok.pad_token_id)
    loss = loss_fn(coder(batch["input_ids"], batch["attention_mask"]), batch["targets"])
    loss.backward()
    trainable = {n: p for n, p in coder.named_parameters() if p.requires_grad}
    if train_backbone == "lora":
        assert len([n for n in trainable if "lora_" in n]) == 2 * 7 * 2  # A and B, seven projections, two layers
        assert all("lora_" in n or n.startswith("head.") for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient: {missing[:5]}"


def test_overfits_32_notes(tiny_backbone):
    coder, tok = build(tiny_backbone, "full", n_labels=4)
    words = ["heart", "sepsis", "pneumonia", "catheter"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(32, 4)).astype(np.float32)
    texts = [" ".join([w for w, on in zip(words, row) if on] * 3 + ["patient", "stable"] * 3) for row in y]
    toks = tokenize(texts, tok, 64)
    batch = collate([(toks.note(i), y[i], i) for i in range(32)], 32, tok.pad_token_id)
    opt = train.optimizer_for(coder, config.resolve("tiny"))  # the tiny recipe's learning rates
    coder.train()
    for _ in range(80):
        opt.zero_grad()
        loss = loss_fn(coder(batch["input_ids"], batch["attention_mask"]), batch["targets"])
        loss.backward()
        opt.step()
    coder.eval()
    with torch.no_grad():
        pred = torch.sigmoid(coder(batch["input_ids"], batch["attention_mask"])).numpy() > 0.5
    assert (pred == (y > 0.5)).mean() == 1.0, f"final loss {loss.item():.4f}"


def test_tiny_mistral_loads_as_a_bidirectional_mistral(tmp_path):
    cfg = config.resolve("tiny-mistral", {"tiny_hidden": 32, "tiny_vocab": 200, "tiny_init": "random"})
    texts = ["acute kidney injury and sepsis with hypotension"] * 20
    encoder, tokenizer = backbones.load(backbones.make_tiny(cfg, texts, tmp_path / "bb"))
    assert type(encoder).__name__ == "MistralModel" and is_bidirectional(encoder)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]


def test_lsa_embeddings_place_co_occurring_tokens_together(tiny_backbone):
    _, tok = backbones.load(tiny_backbone)
    texts = ["heart failure"] * 30 + ["sepsis pneumonia"] * 30
    vectors = backbones.lsa_embeddings(texts, tok, dim=8)
    ids = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in ("heart", "failure", "sepsis")}
    cos = torch.nn.functional.cosine_similarity
    same = cos(vectors[ids["heart"]], vectors[ids["failure"]], dim=0)
    other = cos(vectors[ids["heart"]], vectors[ids["sepsis"]], dim=0)
    assert same > 0.9 and other < 0.5
    assert vectors.shape == (len(tok), 8) and abs(vectors.std().item() - 0.02) < 0.005


def test_lora_can_start_from_a_saved_llm2vec_style_adapter(tiny_backbone, tmp_path):
    """adapter_path: a second adapter (like -mntp-supervised) becomes the trainable LoRA."""
    coder, _ = build(tiny_backbone, "lora")
    with torch.no_grad():
        for name, p in coder.encoder.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    coder.encoder.save_pretrained(tmp_path / "adapter")
    cfg = config.resolve("tiny", {"train_backbone": "lora"})
    encoder, _ = backbones.load(tiny_backbone)
    continued = backbones.make_trainable(encoder, cfg, tmp_path / "adapter")
    lora_b = {n: p for n, p in continued.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.requires_grad and torch.all(p == 0.01) for p in lora_b.values())
    assert not [n for n, p in continued.named_parameters() if p.requires_grad and "lora_" not in n]


def test_token_attention_is_a_distribution_over_the_note(tiny_backbone):
    from icdlib.model.explain import highlight_html, token_attention

    coder, tok = build(tiny_backbone, "frozen", n_labels=3)
    coder.eval()
    text = "patient admitted with sepsis and pneumonia " * 10
    table = token_attention(coder, tok, text, label=1, max_tokens=40, segment_length=16)
    assert len(table) == 40 and table["weight"].sum() == pytest.approx(1.0, abs=1e-5)
    assert (table["weight"] >= 0).all()
    assert "background: rgba(255,140,0,1.00)" in highlight_html(table, "code").data


def test_token_attention_reads_segments_as_training_built_them(tiny_backbone):
    """With BOS + a suffix around each segment and tail truncation, the table lists exactly the note
    tokens the model read, in order; the format tokens take some attention but are not listed."""
    from icdlib.model.encoding import SegmentFormat
    from icdlib.model.explain import token_attention

    coder, tok = build(tiny_backbone, "frozen", n_labels=3)
    coder.eval()
    text = " ".join(f"w{i % 7} sepsis" for i in range(60))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    fmt = SegmentFormat((tok.bos_token_id,), (tok.eos_token_id,))
    table = token_attention(coder, tok, text, label=1, max_tokens=42, segment_length=16, fmt=fmt, mode="tail")
    assert table["token"].tolist() == tok.convert_ids_to_tokens(ids[-42:])  # 3 segments of 14 note tokens
    assert 0.5 < table["weight"].sum() < 1.0 and (table["weight"] > 0).all()


def test_lora_takes_its_input_in_the_compute_dtype():
    """peft casts each LoRA input to the adapter's fp32 before dropout; after
    `adapters_take_input_as_is` the input stays bf16 under autocast, the adapter weights stay fp32
    (exact AdamW updates), and the output is peft's to the bit: a bf16 input cast to fp32 and back
    by autocast is the same number, so the round trip bought nothing but memory traffic."""
    from peft import LoraConfig, get_peft_model

    from icdlib.model.models import adapters_take_input_as_is

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(base, lora)
    lora_a = model.base_model.model[0].lora_A["default"]
    assert lora_a.weight.dtype == torch.float32
    seen = []
    lora_a.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x).float()
        assert adapters_take_input_as_is(model) == 1
        after = model(x).float()
    assert seen == [torch.float32, torch.bfloat16]
    assert lora_a.weight.dtype == torch.float32
    assert torch.equal(after, before)
