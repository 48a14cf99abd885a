"""The training loop: resume equals an uninterrupted run, DDP scores every admission once, faults."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from icdlib import steps
from icdlib.model import checkpoint, train
from icdlib.run import config
from icdlib.data import preprocess
from icdlib.run.errors import IcdlibError

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"synth_admissions": 120, "min_count": 3, "tiny_hidden": 32, "tiny_vocab": 500, "attention_dim": 16,
         "segment_length": 64, "max_segments": 2, "batch_size": 8, "eval_every": 3, "save_every": 3,
         "warmup_steps": 2, "max_steps": 6, "mntp_steps": 0, "mntp_compare": "none"}  # MNTP: tests/test_mntp.py


def small_cfg(root, run, **over):
    cfg = config.load("tiny", params={"output_root": str(root), "run": run, **SMALL, **over})
    steps.s01_preprocess(cfg, progress=False)
    return cfg


def trainable_weights(folder):
    weights = load_file(folder / "head.safetensors")
    if (folder / "adapter").exists():
        weights.update(load_file(folder / "adapter" / "adapter_model.safetensors"))
    if (folder / "backbone").exists():
        weights.update(load_file(folder / "backbone" / "model.safetensors"))
    return weights


class Killed(Exception):
    pass


def kill_at_fifth_step(cfg, monkeypatch) -> None:
    """`train.fit(cfg)` killed at its fifth optimizer step: after the step-3 checkpoint, mid-way to step 6."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed()
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(Killed):
        train.fit(cfg, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)


@pytest.mark.parametrize("train_backbone", ["full", "lora"])
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, train_backbone):
    whole = small_cfg(tmp_path, "whole", train_backbone=train_backbone)
    uninterrupted = train.fit(whole, progress=False)

    broken = small_cfg(tmp_path, "broken", train_backbone=train_backbone)
    kill_at_fifth_step(broken, monkeypatch)
    assert checkpoint.load_trainer_state(broken.run_dir / "03_train/last")["step"] == 3
    resumed = config.load("tiny", params={"output_root": str(tmp_path), "run": "broken", **SMALL,
                                          "train_backbone": train_backbone, "resume": True})
    history = train.fit(resumed, progress=False)
    assert history["step"].tolist() == [3, 6]
    assert history["tokens"].tolist() == uninterrupted["tokens"].tolist()  # counted on from last/

    a = trainable_weights(whole.run_dir / "03_train/last")
    b = trainable_weights(broken.run_dir / "03_train/last")
    assert a.keys() == b.keys() and len(a) > 2
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pa = np.load(whole.run_dir / "03_train/predictions_test.npz")["scores"]
    pb = np.load(broken.run_dir / "03_train/predictions_test.npz")["scores"]
    np.testing.assert_array_equal(pa, pb)


def test_checkpoint_from_another_label_space_is_refused(tmp_path):
    cfg = small_cfg(tmp_path, "a", max_steps=3)
    train.fit(cfg, progress=False)
    with pytest.raises(IcdlibError, match="another label space"):
        checkpoint.load(cfg.run_dir / "03_train/best", expect_labels=["401.9"])


def test_nan_loss_stops_with_the_step_named(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "nan", max_steps=3)
    monkeypatch.setattr(train, "loss_fn", lambda logits, targets, pw: logits.sum() * float("nan"))
    with pytest.raises(train.TrainingError, match=r"loss is nan at step 0"):
        train.fit(cfg, progress=False)


def test_schedule_warms_up_then_decays():
    values = [train.schedule(s, 2, 10, "cosine") for s in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[2] == 1.0 and values[-1] < 0.05
    assert train.schedule(6, 2, 10, "linear") == pytest.approx(0.5)


def assert_scored_once(cfg):
    """The validation predictions rank 0 wrote cover every admission once, in order, with exactly
    the scores one process computes from the same best checkpoint."""
    written = np.load(cfg.run_dir / "03_train/predictions_val.npz")
    notes = preprocess.load(cfg.run_dir).notes
    val = notes[notes["split"] == "val"]
    assert written["hadm_id"].tolist() == val["hadm_id"].tolist()
    coder, tokenizer, _, _ = checkpoint.load(cfg.run_dir / "03_train/best")
    prep = train.prepare(cfg)
    alone = train.score(coder, prep.tokens["val"], cfg, train.Env(torch.device("cpu")), tokenizer.pad_token_id)
    np.testing.assert_allclose(written["scores"], alone, atol=1e-5)
    assert len(written["scores"]) == len(val) and (written["scores"].sum(1) > 0).all()


@pytest.mark.end_to_end(seconds=30)
def test_ddp_two_processes_score_every_admission_once(tmp_path):
    """Two gloo processes train, then score the validation set in halves; rank 0 must write
    exactly the scores one process computes from the same best checkpoint, for every admission.
    Launched as the README says (`torchrun --nproc_per_node N -m icdlib train RUN`)."""
    cfg = small_cfg(tmp_path, "ddp", max_steps=2, eval_every=1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                           "icdlib", "train", "ddp", "--output-root", str(tmp_path), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_scored_once(cfg)


# ---------------------------------------------------------------- a resume continues the run it resumes

def test_a_resume_asking_other_training_values_is_refused_in_one_line(tmp_path, monkeypatch):
    """Was: accepted silently, the restored optimizer kept the old lr while the manifest recorded the new one."""
    import dataclasses

    cfg = small_cfg(tmp_path, "changed", max_steps=6, save_every=3)
    kill_at_fifth_step(cfg, monkeypatch)
    asked = dataclasses.replace(cfg, resume=True, lr=5.0e-4, batch_size=4, epochs=3)
    with pytest.raises(IcdlibError) as e:
        train.fit(asked, progress=False)
    assert str(e.value) == ("resume=true but 03_train/last was trained with batch_size=8, lr=0.001, this run asks "
                            "batch_size=4, lr=0.0005: resume with the values it was trained with, or set resume=false "
                            "to start over")


def test_a_resume_without_the_first_run_s_values_continues_it(tmp_path, monkeypatch, capsys):
    """`-p resume=true` alone (the params file's values) takes last/'s: the run goes on to step 6 with
    its own parameters; a longer max_steps is applied and recorded as a change at the resumed step."""
    import dataclasses
    import json

    cfg = small_cfg(tmp_path, "bare", max_steps=6, save_every=3)
    kill_at_fifth_step(cfg, monkeypatch)
    bare = config.load("tiny", params={"output_root": str(tmp_path), "run": "bare", "resume": True}, record=False)
    assert (bare.batch_size, bare.max_steps) == (16, -1)  # tiny.yaml's, not the run's
    history = train.fit(dataclasses.replace(bare, max_steps=8))
    assert history["step"].tolist() == [3, 6, 8]
    assert "resuming at step 3 with max_steps 6 → 8" in capsys.readouterr().out
    manifest = json.loads((cfg.run_dir / "03_train/manifest.json").read_text())
    assert manifest["params"]["batch_size"] == 8 and manifest["params"]["max_steps"] == 8
    assert manifest["resumed"] == {"at_step": 3, "changed": {"max_steps": [6, 8]}}
