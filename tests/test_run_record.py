"""The run record: one Run object for every path, per-step manifests checked by later steps, one
cache rule, stale predictions and resume refused honestly, one writer per run folder.

One small run (01 → 03 → 04, 3 steps of a tiny model, no baseline: conftest's `done`) is built once
for the suite; tests that change a run work on a copy of it. Step functions are called directly (no papermill).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icdlib.model import backbones, checkpoint, encoding, train
from icdlib.evaluation import baseline, evaluate
from icdlib.run import config, record
from icdlib.data import preprocess
from icdlib import steps, twin
from icdlib.model.bidirectional import is_bidirectional
from icdlib.run.errors import DataError
from icdlib.run.provenance import file_hash
from icdlib.run.runfolder import LOCK_ENV, Run, RunLockedError, lock, read_key, tree_hash
from test_train import SMALL

ROOT = Path(__file__).resolve().parent.parent
FAST = {**SMALL, "max_steps": 3, "baseline": False}


def run_cfg(root, name, **over):
    return config.load("tiny", params={"output_root": str(root), "run": name, **FAST, **over})


def copy_of(cfg, tmp_path, name="copy", **over):
    """The finished run copied to `tmp_path/name`, and its Config there (with `over` applied)."""
    shutil.copytree(cfg.run_dir, tmp_path / name)
    return dataclasses.replace(cfg, output_root=str(tmp_path), run=name, **over)


def manifest(cfg, step):
    return json.loads(Run.of(cfg).manifest(step).read_text())


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class Killed(Exception):
    pass


# ---------------------------------------------------------------- the Run object

def test_run_names_every_artifact_of_the_contract(tmp_path):
    run = Run(tmp_path / "x")
    rel = lambda p: p.relative_to(tmp_path / "x").as_posix()  # noqa: E731
    assert [rel(p) for p in (run.config, run.notes, run.labels, run.stats, run.checkpoint("best"), run.checkpoint("last"),
                             run.history, run.predictions("val"), run.predictions("test"), run.metrics, run.per_code,
                             run.manifest("03"), run.report("04_evaluate", "html"), run.synthetic_mimic, run.lock)] == [
        "config.json", "01_preprocess/notes.parquet", "01_preprocess/labels.parquet", "01_preprocess/stats.json",
        "03_train/best", "03_train/last", "03_train/history.csv", "03_train/predictions_val.npz",
        "03_train/predictions_test.npz", "04_evaluate/metrics.json", "04_evaluate/per_code.parquet",
        "03_train/manifest.json", "reports/04_evaluate.html", "synthetic_mimic", ".lock"]
    assert run.step(1) == run.step("01") == run.step("preprocess") == run.step("01_preprocess") == tmp_path / "x/01_preprocess"
    with pytest.raises(ValueError, match="unknown step"):
        run.step("06")
    with pytest.raises(ValueError):
        run.checkpoint("middle")
    assert Run.of(config.resolve("tiny", {"output_root": str(tmp_path), "run": "x"})) == run


def test_steps_are_named_in_order():
    assert list(steps.STEPS) == ["01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis"]
    assert steps.s04_evaluate == evaluate.run  # 01: the twin first, then preprocess.run
    assert (steps.s02_label_stats, steps.s05_error_analysis) == (preprocess.read, evaluate.read)


def test_step_03_is_train_run_imported_when_called(monkeypatch):
    calls = []
    monkeypatch.setattr(train, "run", lambda cfg, progress=True: calls.append((cfg, progress)) or "history")
    assert steps.s03_train("cfg", progress=False) == "history" and calls == [("cfg", False)]


def test_importing_steps_and_the_run_command_loads_no_torch():
    """notebook 01's imports and `icdlib run`'s process: backbone files are checked without
    loading torch or transformers (4 s of each process's start on 2 cores)."""
    code = ("import sys, icdlib.steps, icdlib.cli, icdlib.pipeline, icdlib.model.backbone_files, icdlib.data.preprocess; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]"]


def test_predict_does_not_import_training():
    code = "import sys, icdlib.predict; print(sorted(m for m in sys.modules if m in ('icdlib.model.train', 'icdlib.model.inference')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['icdlib.model.inference']"]
    from icdlib.model import inference

    assert (train.score, train.Env, train.pick_device, train.weights_dtype) == (
        inference.score, inference.Env, inference.pick_device, inference.weights_dtype)


# ---------------------------------------------------------------- manifests

def test_each_step_records_what_it_used_read_and_wrote(done):
    run = Run.of(done)
    m01, m03, m04 = (manifest(done, s) for s in ("01_preprocess", "03_train", "04_evaluate"))
    assert m01["params"] == {k: json.loads(json.dumps(getattr(done, k))) for k in preprocess.data_params(done)}
    assert m01["params"]["synth_admissions"] == 120 and m01["params"]["min_count"] == 3
    assert set(m03["params"]) == set(train.PARAMS) and m03["params"]["max_steps"] == 3
    assert m04["params"] == {"threshold": 0.5, "baseline": False, "seed": done.seed, "bootstrap": 1000,
                             "explain_notes": done.explain_notes, "ig_steps": done.ig_steps,
                             "faithfulness_step": done.faithfulness_step}
    # inputs: the content hashes of the upstream artifacts; outputs: of what the step wrote, as it is now
    assert m01["inputs"] == {} and m01["source"]["synthetic_mimic"] == read_key(run.synthetic_mimic)
    assert m03["inputs"] == m01["outputs"] == {f"01_preprocess/{n}": file_hash(run.step("01") / n)
                                               for n in ("notes.parquet", "labels.parquet", "stats.json",
                                                         "evidence.parquet")}  # the twin's evidence spans
    assert m04["inputs"] == {**m01["outputs"], **m03["outputs"]}
    assert m03["outputs"] == {"03_train/best": tree_hash(run.checkpoint("best")), "03_train/history.csv": file_hash(run.history),
                              "03_train/tokens.json": file_hash(run.tokens_json),
                              "03_train/predictions_val.npz": file_hash(run.predictions("val")),
                              "03_train/predictions_test.npz": file_hash(run.predictions("test"))}
    assert m04["outputs"] == {"04_evaluate/metrics.json": file_hash(run.metrics),
                              "04_evaluate/per_code.parquet": file_hash(run.per_code)}
    for m in (m01, m03, m04):
        assert len(m["commit"]) == 40 and isinstance(m["dirty"], bool)
        assert m["versions"]["torch"] == torch.__version__ and m["device"].startswith("cpu")
        assert m["started"] <= m["ended"] and m["wall_s"] > 0 and m["peak_memory"]["rss_mib"] > 50
    assert m03["device_used"] == "cpu" and m03["processes"] == 1
    # the steps that only read write no record
    assert not run.step("02").exists() and not run.step("05").exists()


def test_03_writes_its_predictions_after_its_checkpoints(done):
    run = Run.of(done)
    newest_checkpoint = max(os.stat(p).st_mtime_ns for p in (run.checkpoint("best") / "head.safetensors",
                                                               run.checkpoint("last") / "trainer_state.pt", run.history))
    predictions = [os.stat(run.predictions(s)).st_mtime_ns for s in ("val", "test")]
    assert min(predictions) >= newest_checkpoint
    assert os.stat(run.manifest("03")).st_mtime_ns >= max(predictions)
    for split in ("val", "test"):
        with np.load(run.predictions(split)) as z:
            assert str(z["best"]) == tree_hash(run.checkpoint("best"))


def test_04_owns_its_outputs_and_05_reads_them(done):
    run = Run.of(done)
    metrics = json.loads(run.metrics.read_text())
    assert set(metrics) == {"threshold", "val", "test", "val_tuned", "test_tuned", "val_edin", "test_edin", "val_tuned_edin",
                            "test_tuned_edin", "provenance", "prior", "paired", "bootstrap", "explanations"} and \
        0 < metrics["threshold"] < 1
    ev = steps.s05_error_analysis(done)
    assert ev.results == metrics and ev.per_code["code"].tolist() == ev.labels["code"].tolist()
    assert ev.per_code.equals(pd.read_parquet(run.per_code))
    assert ev.cfg == done


def test_01_reused_keeps_its_manifest(done):
    before = Run.of(done).manifest("01").read_bytes()
    assert steps.s01_preprocess(done, progress=False).stats["reused from cache"] is True
    assert Run.of(done).manifest("01").read_bytes() == before


def test_a_step_refuses_data_built_with_other_parameters(done):
    with pytest.raises(record.RecordError) as e:
        record.check(dataclasses.replace(done, split="seed"), "05_error_analysis")
    assert str(e.value) == ("01_preprocess was built with split=patient, this run asks split=seed: rerun 01 "
                            "(or use a new run folder)")
    with pytest.raises(record.RecordError, match=r"built with synth_admissions=120, this run asks synth_admissions=200: "):
        train.fit(dataclasses.replace(done, synth_admissions=200), progress=False)
    with pytest.raises(record.RecordError, match=r"built with min_count=3, this run asks min_count=4"):
        steps.s02_label_stats(dataclasses.replace(done, min_count=4))
    with pytest.raises(record.RecordError, match=r"built with labels=observed, this run asks labels=all"):
        evaluate.run(dataclasses.replace(done, labels="all"))


def test_parameters_the_run_does_not_ask_follow_the_data(done):
    """`papermill 03_train.ipynb -p backbone tiny -p run X` on data built with other values: the
    params file's values are not asked for, so the run takes 01's (and records them)."""
    plain = config.resolve("tiny", {"output_root": done.output_root, "run": done.run})
    assert (plain.synth_admissions, plain.min_count) == (800, 5)
    assert record.check(plain, "02_label_stats").tiny_hidden == plain.tiny_hidden == 64  # before 03: data only
    adopted = record.check(plain, "05_error_analysis")  # after 03: also what 03 trained with
    assert (adopted.synth_admissions, adopted.min_count, adopted.tiny_hidden) == (120, 3, 32)


def test_a_rerun_upstream_step_is_caught_downstream(done, tmp_path):
    cfg = copy_of(done, tmp_path, min_count=4)
    preprocess.run(cfg, progress=False)  # 01 again, with another label space: 03 and 04 are now stale
    with pytest.raises(record.RecordError) as e:
        evaluate.run(cfg)
    assert str(e.value) == ("03_train was built from another 01_preprocess/labels.parquet (01_preprocess was rerun "
                            "since): rerun 03_train")
    with pytest.raises(record.RecordError, match=r"03_train was built from another 01_preprocess/"):
        evaluate.read(cfg)


# ---------------------------------------------------------------- atomic 03, honest resume

def test_predictions_older_than_best_are_refused(done, tmp_path, monkeypatch):
    """A 03 rerun (another lr) that dies after its checkpoints: new best/, last/, history.csv beside
    the old predictions. 04 and 05 refuse them in one line; 03's manifest is gone."""
    cfg = copy_of(done, tmp_path, lr=done.lr * 3)
    before = Run.of(cfg).predictions("val").read_bytes()

    def dies(*a, **k):
        raise Killed()

    monkeypatch.setattr(train, "write_predictions", dies)
    with pytest.raises(Killed):
        train.fit(cfg, progress=False)
    run = Run.of(cfg)
    assert run.predictions("val").read_bytes() == before and not run.manifest("03").exists()
    for step in (evaluate.run, evaluate.read):
        with pytest.raises(record.RecordError) as e:
            step(cfg)
        assert str(e.value) == ("03_train/predictions_val.npz was scored by an earlier best/ than 03_train/best (a later "
                                "03 run stopped before scoring): rerun 03 (resume=true continues from last/)")
    monkeypatch.undo()
    cfg = dataclasses.replace(cfg, resume=True)
    assert train.fit(cfg, progress=False)["step"].tolist() == [3]
    assert evaluate.run(cfg).results["threshold"] > 0  # scored again: accepted


def test_resume_recovers_a_checkpoint_left_between_the_two_renames(done, tmp_path):
    """Killed inside atomic_path, after `last/` went to `.last.old-PID` and before `.last.tmp-PID`
    came into place: resume puts the complete new copy back instead of starting over."""
    cfg = copy_of(done, tmp_path, resume=True, max_steps=6)
    run, dead = Run.of(cfg), dead_pid()
    tmp = run.step("03") / f".last.tmp-{dead}"
    os.replace(run.checkpoint("last"), tmp)
    shutil.copytree(tmp, run.step("03") / f".last.old-{dead}")
    (run.step("03") / f".last.tmp-{dead_pid()}").mkdir()  # a broken copy of another kill: not taken
    history = train.fit(cfg, progress=False)
    assert history["step"].tolist() == [3, 6]
    assert checkpoint.load_trainer_state(run.checkpoint("last"))["step"] == 6 and not tmp.exists()


def test_recover_takes_another_node_s_copy_only_once_it_is_quiet(done, tmp_path):
    """`.last.tmp-<pid>.<host>`: this host's copy of a dead pid is taken at once; another node's
    (its pid means nothing here) only when untouched for QUIET_S, as it may be a live save."""
    from icdlib.run.runfolder import QUIET_S, host_tag

    cfg = copy_of(done, tmp_path, resume=True, max_steps=6)
    run, dead = Run.of(cfg), dead_pid()
    elsewhere = run.step("03") / f".last.tmp-{dead}.othernode"
    os.replace(run.checkpoint("last"), elsewhere)
    assert checkpoint.recover(run.checkpoint("last")) is None and elsewhere.is_dir()
    quiet = time.time() - QUIET_S - 60
    for path in [elsewhere, *elsewhere.rglob("*")]:
        os.utime(path, (quiet, quiet))
    assert checkpoint.recover(run.checkpoint("last")) == run.checkpoint("last") and not elsewhere.exists()
    here = run.step("03") / f".last.tmp-{dead}.{host_tag()}"
    os.replace(run.checkpoint("last"), here)
    assert checkpoint.recover(run.checkpoint("last")) == run.checkpoint("last") and not here.exists()


def test_resume_without_a_checkpoint_stops_in_one_line(done, tmp_path, monkeypatch):
    cfg = copy_of(done, tmp_path, resume=True, max_steps=6)
    run = Run.of(cfg)
    shutil.rmtree(run.checkpoint("last"))
    broken = run.step("03") / f".last.tmp-{dead_pid()}"
    broken.mkdir()
    (broken / "icdlib.json").write_text("{}")  # no trainer_state.pt: not a checkpoint
    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("must stop before building the model"))
    with pytest.raises(train.TrainingError) as e:
        train.fit(cfg, progress=False)
    assert str(e.value) == ("resume=true but 03_train/last is not a checkpoint to resume from (no trainer_state.pt, "
                            "and no intact .last.tmp-* left by a killed save): set resume=false to start over")
    assert broken.is_dir() and not run.checkpoint("last").exists()
    assert run.manifest("03").exists()  # nothing was replaced: the old record still describes the folder


def test_resume_refuses_a_checkpoint_of_another_tiny_backbone(done, tmp_path):
    cfg = copy_of(done, tmp_path, resume=True, max_steps=6, tiny_vocab=400)
    with pytest.raises(train.TrainingError) as e:  # the parameter that makes another backbone is named
        train.fit(cfg, progress=False)
    assert str(e.value) == ("resume=true but 03_train/last was trained with tiny_vocab=500, this run asks "
                            "tiny_vocab=400: resume with the values it was trained with, or set resume=false to start "
                            "over")
    copy_of(done, tmp_path, "moved")  # the same parameters, and a last/ trained on another backbone
    moved = dataclasses.replace(cfg, run="moved", tiny_vocab=500)
    written = Run.of(moved).checkpoint("last") / "icdlib.json"
    record_of_last = json.loads(written.read_text())
    record_of_last["backbone"]["cache_key"] = "another backbone"
    written.write_text(json.dumps(record_of_last))
    with pytest.raises(train.TrainingError, match=r"03_train/last was trained on another tiny backbone"):
        train.fit(moved, progress=False)


# ---------------------------------------------------------------- one cache rule

def test_the_twin_is_rebuilt_when_its_parameters_change(tmp_path):
    """Step 01 reads a folder: `steps.s01_preprocess` makes the twin first (`twin.ensure`), and
    `preprocess.run` on a run whose twin was never made says so in one line."""
    small = {"output_root": str(tmp_path), "run": "t", "min_count": 1}
    cfg = config.load("tiny", params={**small, "synth_admissions": 40})
    run = Run(tmp_path / "t")
    with pytest.raises(DataError) as e:
        preprocess.run(cfg, progress=False)
    assert str(e.value) == (f"no synthetic twin in {run.synthetic_mimic}: step 01 reads a MIMIC folder, so make the "
                            "twin first (icdlib.twin.ensure, which steps.s01_preprocess calls) or set mimic_dir")
    first = steps.s01_preprocess(cfg, progress=False)
    key, mtime = read_key(run.synthetic_mimic), os.stat(run.synthetic_mimic / "NOTEEVENTS.csv").st_mtime_ns
    assert key == twin.key(cfg) and manifest(cfg, "01")["source"]["synthetic_mimic"] == key
    assert steps.s01_preprocess(config.load("tiny", params={**small, "synth_admissions": 40}), progress=False).stats[
        "reused from cache"] is True
    assert os.stat(run.synthetic_mimic / "NOTEEVENTS.csv").st_mtime_ns == mtime
    second = steps.s01_preprocess(config.load("tiny", params={**small, "synth_admissions": 60}), progress=False)
    assert read_key(run.synthetic_mimic) != key
    assert len(first.notes) < len(second.notes) <= 60
    assert manifest(config.resolve("tiny", small), "01")["params"]["synth_admissions"] == 60


def test_the_tiny_backbone_is_rebuilt_for_another_architecture(done, tmp_path):
    """`tiny-mistral` into a `tiny` run trains a Mistral backbone, not the cached Llama one."""
    cfg = copy_of(done, tmp_path)
    run = Run.of(cfg)
    weights = run.backbone / "model.safetensors"
    mtime = os.stat(weights).st_mtime_ns
    assert json.loads((run.backbone / "config.json").read_text())["model_type"] == "llama"
    train.prepare(cfg)
    assert os.stat(weights).st_mtime_ns == mtime  # unchanged parameters: reused
    mistral = config.resolve("tiny-mistral", {**FAST, "output_root": cfg.output_root, "run": cfg.run})
    prep = train.prepare(mistral)
    assert json.loads((run.backbone / "config.json").read_text())["model_type"] == "mistral"
    assert type(prep.coder.encoder).__name__ == "MistralModel" and is_bidirectional(prep.coder.encoder)
    assert prep.backbone["cache_key"] == read_key(run.backbone) == backbones.tiny_key(
        mistral, prep.notes.loc[prep.notes["split"] == "train", "text"].tolist())


def test_token_caches_keep_only_the_current_tokens(tmp_path):
    class Tokenizer:  # what tokenize_cached needs of a tokenizer
        def __call__(self, texts, **kw):
            return {"input_ids": [[len(w) for w in t.split()] for t in texts]}

    cache, tokenizer = tmp_path / "tokens", Tokenizer()  # one: its repr is part of the key
    texts = ["a bb ccc", "dddd"]
    encoding.tokenize_cached(texts, tokenizer, 2, cache, "train")
    encoding.tokenize_cached(texts, tokenizer, 2, cache, "val")
    [first] = cache.glob("train-*.npz")
    mtime = os.stat(first).st_mtime_ns
    assert encoding.tokenize_cached(texts, tokenizer, 2, cache, "train").ids.tolist() == [1, 2, 4]
    assert list(cache.glob("train-*.npz")) == [first] and os.stat(first).st_mtime_ns == mtime  # reused
    assert encoding.tokenize_cached(texts, tokenizer, 3, cache, "train").ids.tolist() == [1, 2, 3, 4]
    [second] = cache.glob("train-*.npz")
    assert second != first and len(list(cache.glob("val-*.npz"))) == 1  # the old train tokens pruned, val kept


# ---------------------------------------------------------------- the baseline is its own call

def test_score_all_scores_and_the_baseline_trains_only_when_asked(done, tmp_path, monkeypatch):
    cfg = copy_of(done, tmp_path, baseline=True)
    monkeypatch.setattr(baseline, "fit_predict", lambda *a, **k: pytest.fail("score_all must not train"))
    ev = evaluate.load(cfg)
    assert "baseline" not in evaluate.score_all(ev, cfg) and not ev.baseline
    asked = []
    monkeypatch.setattr(baseline, "fit_for", lambda c, e, progress=False, say=None: asked.append(c) or
                        {k: np.full_like(s.y_score, 0.1) for k, s in e.splits.items()})
    ev = evaluate.run(cfg)
    assert len(asked) == 1 and ev.results["baseline"]["test_tuned"]["auroc_micro"] == pytest.approx(0.5)
    assert "baseline" in json.loads(Run.of(cfg).metrics.read_text())
    assert manifest(cfg, "04")["params"]["baseline"] is True


# ---------------------------------------------------------------- one writer per run folder

HOLD = """
import sys, time
from icdlib.run.runfolder import lock
with lock(sys.argv[1], "03_train"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of run folder tmp_path/busy for its step 03."""
    run_dir = tmp_path / "busy"
    env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        yield run_dir, p
    finally:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder, tmp_path):
    run_dir, p = holder
    since = time.strftime("%H:%M", time.localtime(json.loads(Run(run_dir).lock.read_text())["since"]))
    cfg = config.load("tiny", params={"output_root": str(tmp_path), "run": "busy", **FAST})
    with pytest.raises(RunLockedError) as e:
        preprocess.run(cfg, progress=False)
    assert str(e.value) == (f"run folder {run_dir} is in use by pid {p.pid} (03_train since {since}); "
                            f"wait for it or use another run")
    assert not Run(run_dir).step("01").exists()
    # the CLI says it in one line and exits 2
    done = subprocess.run([sys.executable, "-m", "icdlib", "train", "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != LOCK_ENV})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"icdlib: error: run folder {run_dir} is in use by pid {p.pid} (03_train since {since}); wait for it or use another run"]
    # a second `icdlib run` on the same run stops before its first notebook
    done = subprocess.run([sys.executable, "-m", "icdlib", "run", "--backbone", "tiny", "--run", run_dir.name,
                           "--output-root", str(run_dir.parent), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != LOCK_ENV})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"icdlib: error: run folder {run_dir} is in use by pid {p.pid} (03_train since {since}); wait for it or use another run"]
    assert not Run(run_dir).report("01_preprocess", "ipynb").exists()
    # torchrun ranks other than 0 do not take it
    with record.step(cfg, "01_preprocess", (), master=False) as step:
        assert step.cfg == cfg
    p.kill()
    p.wait()
    with lock(run_dir, "04_evaluate"):  # freed by the kernel when its holder died
        assert json.loads(Run(run_dir).lock.read_text())["pid"] == os.getpid()


def test_the_lock_passes_to_the_holders_own_children(tmp_path):
    """`train.launch` runs torchrun inside a locked 03: its workers inherit the lock; others do not."""
    run_dir = tmp_path / "mine"
    probe = "import sys; from icdlib.run.runfolder import lock\nwith lock(sys.argv[1], 'child'): print('ok')"
    with lock(run_dir, "03_train"):
        with lock(run_dir, "03_train"):  # re-entrant in this process
            pass
        child = subprocess.run([sys.executable, "-c", probe, str(run_dir)], cwd=ROOT, capture_output=True, text=True)
        assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-2000:]
        stranger = subprocess.run([sys.executable, "-c", probe, str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                                  env={k: v for k, v in os.environ.items() if k != LOCK_ENV})
        assert stranger.returncode != 0 and f"is in use by pid {os.getpid()} (03_train since" in stranger.stderr
    assert LOCK_ENV not in os.environ


# ---------------------------------------------------------------- later steps read the run, not the params file

def test_04_and_05_take_the_training_parameters_03_recorded(done, tmp_path):
    """A run trained with mntp_compare=none, then 04 and 05 as `icdlib run --only 04 05` starts
    them (the params file alone): they use the run's values. Was: `03_train/with_mntp/best does
    not exist: run 03_train for this run first` (tiny.yaml's mntp_compare: with)."""
    copy_of(done, tmp_path)
    bare = config.load("tiny", params={"output_root": str(tmp_path), "run": "copy"}, record=False)
    assert (bare.mntp_compare, bare.max_steps) == ("with", -1)  # what the params file says
    ev = evaluate.run(bare)
    assert (ev.cfg.mntp_compare, ev.cfg.mntp_steps, ev.cfg.max_steps) == ("none", 0, 3)
    assert evaluate.read(bare).cfg.mntp_compare == "none"
    assert evaluate.run(dataclasses.replace(bare, threshold=0.3, device="cpu")).cfg.threshold == 0.3  # 04's own, how


def test_a_later_step_asking_another_training_value_stops_in_one_line(done, tmp_path):
    cfg = copy_of(done, tmp_path, mntp_compare="without", mntp_steps=5)
    for step in (evaluate.run, evaluate.read):
        with pytest.raises(record.RecordError) as e:
            step(cfg)
        assert str(e.value) == ("03_train was trained with mntp_steps=0, mntp_compare=none, this run asks "
                                "mntp_steps=5, mntp_compare=without: rerun 03 (or use a new run folder)")
