"""Precision: fp16 needs loss scaling with thousands of labels; `precision: auto` picks what the device has.

BCE averaged over batch × 8,922 cells makes d(loss)/d(logit) about 1/(4 · 8,922) ≈ 3e-5 for a
positive cell and ≈ p/(4 · 8,922) ≈ 1e-8 for a negative one; times small head weights that is
below fp16's smallest subnormal (6e-8) where it enters the fp16 backward of the label attention,
so every encoder gradient is exactly 0 without a GradScaler.
"""

import copy

import numpy as np
import pytest
import torch

from icdlib.model import backbones, checkpoint, train
from icdlib.run import config
from icdlib.model.encoding import collate, tokenize
from icdlib.run.errors import IcdlibError
from icdlib.model.models import ICDCoder, loss_fn

N_LABELS = 8922  # MIMIC-III full
CPU = torch.device("cpu")


def coder_mid_training(path):
    """A tiny LoRA coder in the state of early training: label biases at their log-odds (a long
    tail), head weights and LoRA B no longer zero but small, as a few steps leave them."""
    cfg = config.resolve("tiny", {"train_backbone": "lora", "lora_r": 4})
    encoder, tokenizer = backbones.load(path)
    torch.manual_seed(0)
    encoder = backbones.make_trainable(encoder, cfg)
    coder = ICDCoder(encoder, N_LABELS, "label_attention", attention_dim=32)
    frequency = torch.full((N_LABELS,), 5e-4)
    frequency[:50] = 0.05
    coder.init_bias(frequency)
    with torch.no_grad():
        coder.head.weight.normal_(0.0, 1e-3)
        for name, p in coder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    return coder.eval(), tokenizer  # eval: no dropout, so every precision sees the same network


def encoder_gradient(coder, batch, targets, dtype, scaled):
    """(norm, flat vector) of the encoder's (LoRA) gradient after one backward under `dtype`."""
    coder.zero_grad(set_to_none=True)
    trainable = [p for p in coder.parameters() if p.requires_grad]
    scaler = train.grad_scaler(coder, CPU, dtype) if scaled else torch.amp.GradScaler("cpu", enabled=False)
    optimizer = torch.optim.SGD(trainable, lr=0.0)
    with train.autocast(CPU, dtype):
        logits = coder(batch["input_ids"], batch["attention_mask"])
    scaler.scale(loss_fn(logits, targets)).backward()
    scaler.unscale_(optimizer)  # what fit() does before clipping
    grads = [p.grad.float().flatten() for n, p in coder.named_parameters()
             if p.requires_grad and not n.startswith("head.")]
    flat = torch.cat(grads)
    assert torch.isfinite(flat).all()
    return torch.linalg.vector_norm(flat).item(), flat


def test_fp16_encoder_gradient_underflows_without_a_scaler_and_not_with_one(tiny_backbone):
    coder, tok = coder_mid_training(tiny_backbone)
    texts = ["heart failure atrial fibrillation sepsis " * 4, "pneumonia diabetes mellitus " * 5,
             "acute kidney injury catheter " * 3, "hypertension patient admitted stable " * 4]
    toks = tokenize(texts, tok, max_tokens=64)
    batch = collate([(toks.note(i), np.zeros(N_LABELS, np.float32), i) for i in range(4)], 32, tok.pad_token_id)
    targets = torch.zeros(4, N_LABELS)
    targets[:, :10] = 1.0

    fp32, g32 = encoder_gradient(coder, batch, targets, torch.float32, scaled=False)
    bf16, _ = encoder_gradient(coder, batch, targets, torch.bfloat16, scaled=False)
    fp16, _ = encoder_gradient(coder, batch, targets, torch.float16, scaled=False)
    scaled, g16 = encoder_gradient(coder, batch, targets, torch.float16, scaled=True)
    # the LoRA path of fit(): frozen base weights in fp16 (weights_dtype), LoRA and head in fp32
    half_base = copy.deepcopy(coder)
    for p in half_base.parameters():
        if not p.requires_grad:
            p.data = p.data.half()
    assert {p.dtype for p in half_base.parameters() if p.requires_grad} == {torch.float32}
    half_base_scaled, g16w = encoder_gradient(half_base, batch, targets, torch.float16, scaled=True)
    print(f"\nencoder gradient norm with {N_LABELS} labels: fp32 {fp32:.4g}, bf16 {bf16:.4g}, "
          f"fp16 unscaled {fp16:.4g}, fp16 GradScaler {scaled:.4g}, fp16 weights + GradScaler {half_base_scaled:.4g}")

    assert fp32 > 0
    assert fp16 < 0.01 * fp32, "fp16 without loss scaling should lose the encoder gradient"
    assert abs(bf16 - fp32) < 0.1 * fp32
    for norm, flat in ((scaled, g16), (half_base_scaled, g16w)):
        assert norm > 0 and abs(norm - fp32) < 0.1 * fp32
        assert torch.nn.functional.cosine_similarity(flat, g32, dim=0) > 0.99


def test_grad_scaler_is_off_for_bf16_and_fp32_and_makes_trainable_weights_fp32():
    coder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).half()
    coder[0].requires_grad_(False)
    assert not train.grad_scaler(coder, CPU, torch.float32).is_enabled()
    assert not train.grad_scaler(coder, CPU, torch.bfloat16).is_enabled()
    assert coder[1].weight.dtype == torch.float16
    assert train.grad_scaler(coder, CPU, torch.float16).is_enabled()
    assert coder[1].weight.dtype == torch.float32 and coder[0].weight.dtype == torch.float16


# ---------------------------------------------------------------- fit() under fp16

from test_train import kill_at_fifth_step, small_cfg as _small_cfg, trainable_weights  # noqa: E402


def small_cfg(root, run, **over):
    return _small_cfg(root, run, precision="fp16", device="cpu", **over)


@pytest.mark.parametrize("train_backbone", ["lora", "full"])  # lora: frozen base in fp16, LoRA in fp32
def test_fp16_run_saves_and_resumes_its_loss_scale(tmp_path, monkeypatch, train_backbone):
    whole = small_cfg(tmp_path, "whole", train_backbone=train_backbone)
    train.fit(whole, progress=False)
    final = checkpoint.load_trainer_state(whole.run_dir / "03_train/last")["scaler"]
    assert final["scale"] > 0 and final["_growth_tracker"] >= 0

    broken = small_cfg(tmp_path, "broken", train_backbone=train_backbone)
    kill_at_fifth_step(broken, monkeypatch)
    saved = checkpoint.load_trainer_state(broken.run_dir / "03_train/last")
    assert saved["step"] == 3 and saved["scaler"]["scale"] > 0

    loaded = []
    real_load = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict",
                        lambda self, sd: (loaded.append(dict(sd)), real_load(self, sd))[1])
    resumed = small_cfg(tmp_path, "broken", resume=True, train_backbone=train_backbone)
    history = train.fit(resumed, progress=False)
    assert history["step"].tolist() == [3, 6]
    assert loaded == [saved["scaler"]], "the resumed run must continue with the saved loss scale"
    assert checkpoint.load_trainer_state(broken.run_dir / "03_train/last")["scaler"] == final

    a = trainable_weights(whole.run_dir / "03_train/last")
    b = trainable_weights(broken.run_dir / "03_train/last")
    assert a.keys() == b.keys() and len(a) > 2
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_still_stops_an_fp16_run(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "nan", max_steps=3)
    monkeypatch.setattr(train, "loss_fn", lambda logits, targets, pw: logits.sum() * float("nan"))
    with pytest.raises(train.TrainingError, match=r"loss is nan at step 0"):
        train.fit(cfg, progress=False)


# ---------------------------------------------------------------- which precision

def dtype_for(precision, device, monkeypatch=None, bf16=None, train_backbone="lora"):
    if monkeypatch is not None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    cfg = config.resolve("tiny", {"precision": precision, "train_backbone": train_backbone})
    return train.compute_dtype(cfg, torch.device(device)), train.weights_dtype(cfg, torch.device(device))


def test_auto_precision_follows_the_device(monkeypatch):
    assert dtype_for("auto", "cpu") == (torch.float32, torch.float32)
    assert dtype_for("auto", "mps") == (torch.float32, torch.float32)
    assert dtype_for("fp16", "cpu") == (torch.float16, torch.float16)
    assert dtype_for("fp16", "cpu", train_backbone="full") == (torch.float16, torch.float32)
    assert dtype_for("auto", "cuda", monkeypatch, bf16=True) == (torch.bfloat16, torch.bfloat16)
    assert dtype_for("auto", "cuda", monkeypatch, bf16=False) == (torch.float16, torch.float16)  # V100, T4
    assert dtype_for("auto", "cuda", monkeypatch, bf16=False, train_backbone="full") == (torch.float16, torch.float32)
    assert dtype_for("bf16", "cuda", monkeypatch, bf16=True)[0] == torch.bfloat16
    assert dtype_for("fp32", "cuda", monkeypatch, bf16=False)[0] == torch.float32


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or False)
    cfg = config.resolve("tiny", {"precision": "bf16"})
    with pytest.raises(IcdlibError, match=r"precision=bf16 .*CUDA device cuda.* no bf16 support") as e:
        train.compute_dtype(cfg, torch.device("cuda"))
    assert "\n" not in str(e.value)
    assert asked == [False], "emulated bf16 (V100, T4) must not count as support"
