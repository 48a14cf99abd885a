"""Atomic writes leave group-readable files (0644, folders 0755 under umask 022); leftovers of dead
processes are cleaned, those of live ones and the only copies of a checkpoint are kept."""

import contextlib
import os
import stat
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from icdlib.model import encoding
from icdlib.run import runfolder
from icdlib.run.runfolder import atomic_path, atomic_write_text, clean_stale


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_text_files_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        assert runfolder.umask() == mask
        path = atomic_write_text(tmp_path / "run" / "config.json", "{}\n")
        atomic_write_text(path, '{"a": 1}\n')  # replacing keeps the mode
    assert path.read_text() == '{"a": 1}\n'
    assert mode(path) == file_mode
    assert mode(tmp_path / "run") == dir_mode
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]


@pytest.mark.parametrize("mask,file_mode,dir_mode,exec_mode", [(0o022, 0o644, 0o755, 0o755), (0o027, 0o640, 0o750, 0o750)])
def test_folders_written_through_atomic_path(tmp_path, mask, file_mode, dir_mode, exec_mode):
    target = tmp_path / "03_train" / "best"
    with umask(mask):
        for round_ in range(2):  # the second replaces the first
            with atomic_path(target) as tmp:
                (tmp / "adapter").mkdir(parents=True)
                save_file({"w": torch.zeros(2)}, tmp / "head.safetensors")  # safetensors writes 0600
                save_file({"w": torch.ones(2)}, tmp / "adapter" / "adapter_model.safetensors")
                torch.save({"step": round_}, tmp / "trainer_state.pt")
                os.chmod(tmp / "adapter", 0o700)
                (tmp / "run.sh").write_text("#!/bin/sh\n")
                os.chmod(tmp / "run.sh", 0o700)
                (tmp / "link").symlink_to("head.safetensors")
    assert torch.load(target / "trainer_state.pt")["step"] == 1
    assert mode(target) == dir_mode and mode(target / "adapter") == dir_mode
    for name in ("head.safetensors", "adapter/adapter_model.safetensors", "trainer_state.pt"):
        assert mode(target / name) == file_mode, name
    assert mode(target / "run.sh") == exec_mode  # executables stay executable
    assert (target / "link").is_symlink()
    assert sorted(p.name for p in target.parent.iterdir()) == ["best"]  # no .tmp-/.old- left


def test_a_file_through_atomic_path_and_the_token_cache(tmp_path):
    with umask(0o022):
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, tmp)

        class Tokenizer:  # what tokenize_cached needs of a tokenizer
            def __call__(self, texts, **kw):
                return {"input_ids": [[len(w) for w in t.split()] for t in texts]}

        tokenizer = Tokenizer()
        first = encoding.tokenize_cached(["a bb ccc", "dddd"], tokenizer, 2, tmp_path / "cache", "train")
        again = encoding.tokenize_cached(["a bb ccc", "dddd"], tokenizer, 2, tmp_path / "cache", "train")
    assert mode(tmp_path / "w.safetensors") == 0o644
    [cache] = list((tmp_path / "cache").iterdir())
    assert cache.name.startswith("train-") and cache.suffix == ".npz" and mode(cache) == 0o644
    assert first.ids.tolist() == again.ids.tolist() == [1, 2, 4] and again.offsets.tolist() == [0, 2, 3]


def test_clean_stale_removes_only_dead_processes_leftovers(tmp_path):
    live, dead = os.getpid(), dead_pid()
    assert runfolder.alive(live) and not runfolder.alive(dead)
    (tmp_path / "last").mkdir()
    (tmp_path / "history.csv").write_text("step\n")
    (tmp_path / "reports").mkdir()
    made = {
        f".last.tmp-{dead}": "dir", f".last.old-{dead}": "dir", f".history.csv.tmp-{dead}.k2x_9q": "file",
        f".03_train.running-{dead}.ipynb": "file",
        f".last.tmp-{live}": "dir", f".history.csv.tmp-{live}.ab12cd": "file", f".04_evaluate.running-{live}.ipynb": "file",
        f".best.tmp-{dead}": "dir",  # its target best/ is missing: maybe the only copy, kept
        ".hidden": "file", f"notes.tmp-{dead}": "file",  # not ours: untouched
    }
    for name, kind in made.items():
        if kind == "dir":
            (tmp_path / name).mkdir()
            (tmp_path / name / "head.safetensors").write_bytes(b"x")
        else:
            (tmp_path / name).write_text("x")
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.tmp-{dead}", f".last.old-{dead}",
                                                      f".history.csv.tmp-{dead}.k2x_9q", f".03_train.running-{dead}.ipynb"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last", "history.csv", "reports", f".last.tmp-{live}", f".history.csv.tmp-{live}.ab12cd",
         f".04_evaluate.running-{live}.ipynb", f".best.tmp-{dead}", ".hidden", f"notes.tmp-{dead}"])
    assert clean_stale(tmp_path / "missing") == []


def test_clean_stale_spares_recently_touched_leftovers(tmp_path):
    dead = dead_pid()
    (tmp_path / "best").mkdir()
    old = tmp_path / f".best.old-{dead}"
    (old / "adapter").mkdir(parents=True)
    (old / "adapter" / "adapter_model.safetensors").write_bytes(b"x")  # still being written, say
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(old / "adapter", (hour_ago, hour_ago))
    assert clean_stale(tmp_path, min_age_s=300) == []
    os.utime(old / "adapter" / "adapter_model.safetensors", (hour_ago, hour_ago))
    assert clean_stale(tmp_path, min_age_s=300) == [old]
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_atomic_path_cleans_its_folder_first_and_names_its_temp_by_pid_and_host(tmp_path):
    """The host in the name too: ranks on two nodes of a shared filesystem may have the same pid."""
    dead = dead_pid()
    (tmp_path / "last").mkdir()
    (tmp_path / f".last.old-{dead}").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / f".config.json.tmp-{dead}.zz").write_text("{")
    hour_ago = time.time() - 3600
    for name in (f".last.old-{dead}", f".config.json.tmp-{dead}.zz"):
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    (tmp_path / f".notes.parquet.tmp-{dead}").write_text("")  # dead here, but just written: maybe another
    (tmp_path / "notes.parquet").write_text("")                 # node's live writer on a shared filesystem
    seen = []
    with atomic_path(tmp_path / "last") as tmp:
        seen.append(tmp.name)
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        tmp.mkdir()
    assert runfolder.host_tag() and runfolder.host_tag().replace("_", "").isalnum()
    assert seen == [f".last.tmp-{os.getpid()}.{runfolder.host_tag()}",
                    sorted(["config.json", "last", "notes.parquet", f".notes.parquet.tmp-{dead}"])]
    assert runfolder.LEFTOVER.match(seen[0])["rest"] == f".{runfolder.host_tag()}"
    assert runfolder.running_notebook(tmp_path, "03_train").name == f".03_train.running-{os.getpid()}.ipynb"
    assert runfolder.LEFTOVER.match(runfolder.running_notebook(tmp_path, "03_train").name)


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "best") as tmp:
            tmp.mkdir()
            np.save(tmp / "x.npy", np.zeros(2))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_leaves_no_folder_when_the_step_wrote_nothing(tmp_path):
    """A step refused before writing (papermill on 03 of a run 01 never made) left `.lock` behind in a
    new folder; a folder that existed, or one the step wrote into, keeps its `.lock`."""
    new = tmp_path / "out" / "run"
    with pytest.raises(RuntimeError), runfolder.lock(new, "03_train"):
        assert (new / ".lock").is_file()
        raise RuntimeError("refused")
    assert not (tmp_path / "out").exists()
    with runfolder.lock(new, "01_preprocess"):
        (new / "config.json").write_text("{}")
    assert sorted(p.name for p in new.iterdir()) == [".lock", "config.json"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with runfolder.lock(existing, "03_train"):
        pass
    assert [p.name for p in existing.iterdir()] == [".lock"]


def test_an_unwritable_run_folder_is_one_line(tmp_path, monkeypatch):
    """A read-only output folder was 20 lines ending in `OSError ... .lock`. A file where the output
    root should be fails the same way on any machine (root ignores permission bits)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("not a folder")
    with pytest.raises(runfolder.RunFolderError) as e, runfolder.lock(tmp_path / "outputs" / "run", "01_preprocess"):
        pass
    assert str(e.value) == ("cannot write the run folder outputs/run: Not a directory (outputs/run); "
                            "choose a writable --output-root (-p output_root=...)")
