"""A disk that fills up while a checkpoint is saved: one line saying where, how much is free and
which checkpoints are still whole; the previous copies intact, no temporary copy left behind."""

import errno
import os
import shutil
import weakref
from collections import namedtuple

import pandas as pd
import peft.peft_model
import pytest
import torch
from safetensors import SafetensorError

from icdlib.model import backbones, checkpoint, train
from icdlib import cli
from icdlib.run import config, runfolder
from icdlib.run.errors import DiskFullError
from icdlib.model.models import ICDCoder
from icdlib.run.runfolder import amount, atomic_path, atomic_write_text, out_of_space, tree_hash

Usage = namedtuple("Usage", "total used free")
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch 2.13 on a full tmpfs
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors 0.8, same
LABELS = pd.DataFrame({"code": ["401.9", "427.31"], "kind": ["diagnosis"] * 2, "short_title": ["a", "b"]})


@pytest.fixture(scope="module")
def lora(tiny_backbone):
    """A LoRA coder on the tiny backbone: saves an adapter (peft), a head (safetensors), a trainer state (torch)."""
    cfg = config.resolve("tiny", {"train_backbone": "lora", "attention_dim": 8})
    encoder, tokenizer = backbones.load(tiny_backbone)
    torch.manual_seed(0)
    coder = ICDCoder(backbones.make_trainable(encoder, cfg), len(LABELS), cfg.head, cfg.attention_dim)
    return coder, cfg, tokenizer, checkpoint.backbone_record(str(tiny_backbone), encoder=encoder)


def save(folder, lora, step=None):
    """A model folder of the LoRA coder; with `step`, a checkpoint to resume from (a small trainer state)."""
    coder, cfg, tokenizer, record = lora
    state = None if step is None else {"step": step, "optimizer": {"w": torch.ones(1000)}}
    return checkpoint.save(folder, coder, cfg, LABELS, record, tokenizer, trainer_state=state)


@pytest.fixture
def run(tmp_path, monkeypatch, lora):
    """`run/03_train/` with `last/` of step 2 and `best/`, the working directory `tmp_path` (paths shown as typed)."""
    monkeypatch.chdir(tmp_path)
    trained = tmp_path / "run" / "03_train"
    save(trained / "last", lora, step=2)
    save(trained / "best", lora)
    return trained


def free(monkeypatch, n: int) -> None:
    """The disk reports `n` bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - n, n))


def writes_then_fails(error):
    """A writer that puts a few bytes at its target, as a real one does before the disk is full, then raises."""
    def writer(obj, target, *a, **k):
        with open(target, "wb") as f:
            f.write(b"\0" * 4096)
        raise error
    return writer


def settled(trained, *names):
    """The folder holds exactly `names` (no `.last.tmp-*`, no `.last.old-*`)."""
    return sorted(p.name for p in trained.iterdir()) == sorted(names)


def test_the_space_of_the_partial_copy_is_free_when_said(run, lora, monkeypatch):
    """A writer's open file (torch's, in a frame of the traceback) is closed before the free space is read
    for the message: a removed file that is still open keeps its blocks (the line said 213 kB free, not 397)."""
    opened, closed_when_read = [], []

    def writer(obj, target, *a, **k):
        f = open(target, "wb")
        f.write(b"\0" * 4096)
        opened.append(weakref.ref(f))
        raise RuntimeError(TORCH_FULL)

    def usage(path):
        closed_when_read.append(bool(opened) and opened[0]() is None)
        return Usage(10**12, 10**12, 0)

    monkeypatch.setattr(torch, "save", writer)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(DiskFullError) as e:
        save(run / "last", lora, step=4)
    assert closed_when_read[-1] and e.value.__context__ is not None and settled(run, "last", "best")


@pytest.mark.parametrize("writer, error", [
    ("torch.save", OSError(errno.ENOSPC, "No space left on device")),
    ("safetensors", SafetensorError(SAFETENSORS_FULL)),
    ("peft", OSError(errno.EDQUOT, "Disk quota exceeded")),
])
def test_a_full_disk_while_saving_last_is_one_line_and_keeps_the_previous(run, lora, monkeypatch, writer, error):
    before, size = tree_hash(run / "last", skip=()), runfolder._size(run / "last")
    target = {"torch.save": (torch, "save"), "safetensors": (checkpoint, "save_file"),
              "peft": (peft.peft_model, "safe_save_file")}[writer]
    monkeypatch.setattr(*target, writes_then_fails(error))
    free(monkeypatch, 123_456)
    with pytest.raises(DiskFullError) as e, checkpoint.full_disk_said(4, run / "last", run / "best"):
        save(run / "last", lora, step=4)
    assert str(e.value) == (f"no space left on run/03_train/last (123.5 kB free, about {amount(size)} needed) saving "
                            f"step 4: kept last/ of step 2 and best/ as they were, nothing half-written is left; "
                            f"free space there, then rerun the command with -p resume=true")
    assert tree_hash(run / "last", skip=()) == before and checkpoint.resumable(run / "last")
    assert checkpoint.load_trainer_state(run / "last")["step"] == 2
    assert settled(run, "last", "best")


def test_a_full_disk_while_saving_best_names_both_kept(run, lora, monkeypatch):
    monkeypatch.setattr(checkpoint, "save_file", writes_then_fails(SafetensorError(SAFETENSORS_FULL)))
    free(monkeypatch, 0)
    with pytest.raises(DiskFullError, match=r"^no space left on run/03_train/best \(0 bytes free, about .* needed\) "
                                            r"saving step 4: kept best/ and last/ of step 2 as they were, "):
        with checkpoint.full_disk_said(4, run / "best", run / "last"):
            save(run / "best", lora)
    assert settled(run, "last", "best") and checkpoint.read_manifest(run / "best")


def test_torch_s_error_without_errno_is_a_full_disk_only_when_the_disk_is_full(run, lora, monkeypatch):
    before = tree_hash(run / "last", skip=())
    error = RuntimeError(TORCH_FULL)
    monkeypatch.setattr(torch, "save", writes_then_fails(error))
    free(monkeypatch, 10**12)  # plenty: not the disk, torch's error as it was
    with pytest.raises(RuntimeError) as e, checkpoint.full_disk_said(4, run / "last", run / "best"):
        save(run / "last", lora, step=4)
    assert e.value is error and settled(run, "last", "best")
    free(monkeypatch, 1000)
    with pytest.raises(DiskFullError) as e, checkpoint.full_disk_said(4, run / "last", run / "best"):
        save(run / "last", lora, step=4)
    assert str(e.value).startswith("no space left on run/03_train/last (1.0 kB free, about ")
    assert " saving step 4: kept last/ of step 2 and best/ as they were, nothing half-written is left; " in str(e.value)
    assert tree_hash(run / "last", skip=()) == before and settled(run, "last", "best")


@pytest.mark.parametrize("error, free_bytes, full", [
    (OSError(errno.ENOSPC, "No space left on device"), 10**12, True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 10**12, True),
    (OSError(errno.EIO, "Input/output error"), 0, False),
    (SafetensorError(SAFETENSORS_FULL), 10**12, True),
    (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), 0, False),
    (RuntimeError(TORCH_FULL), 0, True),
    (RuntimeError(TORCH_FULL), 60 << 20, True),  # under LOW_FREE
    (RuntimeError(TORCH_FULL), 10**12, False),
    (RuntimeError("Expected all tensors to be on the same device"), 10**12, False),
    (ValueError("not a disk"), 0, False),
])
def test_what_counts_as_a_full_disk(tmp_path, monkeypatch, error, free_bytes, full):
    free(monkeypatch, free_bytes)
    assert out_of_space(error, tmp_path / "x") is full


def test_an_errno_under_another_error_counts(tmp_path, monkeypatch):
    free(monkeypatch, 10**12)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from cause
    except RuntimeError as e:
        assert out_of_space(e, tmp_path)
    assert out_of_space(RuntimeError(TORCH_FULL), tmp_path, needed=2 * 10**12)  # less free than was left to write


def test_the_first_save_on_a_full_disk(tmp_path, lora, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", writes_then_fails(OSError(errno.ENOSPC, "No space left on device")))
    free(monkeypatch, 5_000)
    with pytest.raises(DiskFullError, match=r"^no space left on run/last \(5.0 kB free\) saving "
                                            r"step 2: no checkpoint was written before, nothing half-written is "
                                            r"left; free space there and rerun$"):
        with checkpoint.full_disk_said(2, tmp_path / "run" / "last", tmp_path / "run" / "best"):
            save(tmp_path / "run" / "last", lora, step=2)
    assert settled(tmp_path / "run")


def test_a_rename_that_fails_puts_the_previous_folder_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "a.txt").write_text("old")
    real = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    free(monkeypatch, 0)
    with pytest.raises(DiskFullError, match=r"^no space left on last \(0 bytes free\): the "
                                            r"previous last is kept as it was, nothing half-written is left"):
        with atomic_path(tmp_path / "last") as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("new")
    assert (tmp_path / "last" / "a.txt").read_text() == "old" and settled(tmp_path, "last")


def test_a_full_disk_while_writing_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text(tmp_path / "history.csv", "step\n1\n")
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    free(monkeypatch, 2_500_000)
    with pytest.raises(DiskFullError, match=r"^no space left on history.csv \(2.5 MB free\): "
                                            r"the previous history.csv is kept as it was"):
        atomic_write_text(tmp_path / "history.csv", "step\n1\n2\n")
    assert (tmp_path / "history.csv").read_text() == "step\n1\n" and settled(tmp_path, "history.csv")


def test_the_cli_prints_it_as_one_line(run, lora, monkeypatch, capsys):
    def full_disk(args):
        monkeypatch.setattr(torch, "save", writes_then_fails(RuntimeError(TORCH_FULL)))
        with checkpoint.full_disk_said(4, run / "last", run / "best"):
            save(run / "last", lora, step=4)

    monkeypatch.setattr(cli, "cmd_synth", full_disk)
    free(monkeypatch, 0)
    assert cli.main(["synth", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("icdlib: error: no space left on run/03_train/last (0 bytes free, ")
    assert err[0].endswith("saving step 4: kept last/ of step 2 and best/ as they were, nothing half-written is left; "
                           "free space there, then rerun the command with -p resume=true")


def test_training_stops_on_a_full_disk_and_resumes_where_it_said(tmp_path, monkeypatch):
    """A real fit (last/ at steps 3 and 6) whose step-6 trainer state meets a full disk; the advised resume
    completes."""
    from test_train import SMALL, small_cfg

    cfg = small_cfg(tmp_path, "full")
    real, states = torch.save, []

    def second_state_fails(obj, target, *a, **k):
        states.append(obj["step"])
        if len(states) == 2:
            writes_then_fails(OSError(errno.ENOSPC, "No space left on device"))(obj, target)
        return real(obj, target, *a, **k)

    monkeypatch.setattr(torch, "save", second_state_fails)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DiskFullError) as e:
        train.fit(cfg, progress=False)
    assert states == [3, 6] and str(e.value).startswith("no space left on full/03_train/last (")
    assert str(e.value).endswith(" saving step 6: kept last/ of step 3 and best/ as they were, nothing half-written "
                                 "is left; free space there, then rerun the command with -p resume=true")
    trained = cfg.run_dir / "03_train"
    assert checkpoint.saved_step(trained / "last") == 3 and not list(trained.glob(".*.tmp-*"))
    monkeypatch.setattr(torch, "save", real)
    resumed = config.load("tiny", params={"output_root": str(tmp_path), "run": "full", **SMALL, "resume": True})
    history = train.fit(resumed, progress=False)
    assert history["step"].tolist() == [3, 6] and checkpoint.saved_step(trained / "last") == 6
