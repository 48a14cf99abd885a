import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # set by pytest-xdist in each worker, before torch is imported
    # the workers share the cores: each, and every process it starts, computes on its share of them
    # (threads of two workers on the same cores wait on one another)
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

# ---------------------------------------------------------------- the suite on several workers
# `make test` runs pytest-xdist with `--dist loadfile --no-loadscope-reorder`: each file is a unit of
# work, sent to whichever worker is free, so a module fixture is built once. (`--dist loadgroup`
# would split files, but pytest-xdist 3.8 cannot group on pytest 9, whose node ids it no longer
# renames.) A chain that tests of several files read is a session fixture built once for the whole
# run by `built_once`, whichever worker asks first. Files holding an `end_to_end` test go first, the
# longest first (by the seconds its mark says): they start while short files remain to fill the
# other worker, so the run does not end waiting on one late long file.
# A test reading one of RUNS (a whole `icdlib run`, papermill, step or bench chain built by a
# fixture) is end_to_end: the seconds the fixture took on 2 cores beside the other worker (pytest
# --durations, load average 5-6).
RUNS = {"demo_run": 240, "run4": 200, "small_run": 150, "relative_run": 90, "smoke": 80, "run_x": 60, "done": 60}


def seconds(item) -> float:
    """How long an end_to_end test may take, as its marks say; -1 for any other test."""
    return max((mark.kwargs.get("seconds", 0) for mark in item.iter_markers("end_to_end")), default=-1)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in RUNS:
            if name in item.fixturenames:
                item.add_marker(pytest.mark.end_to_end(seconds=RUNS[name]))
    longest = {}
    for item in items:
        longest[item.path] = max(longest.get(item.path, -1), seconds(item))
    items.sort(key=lambda item: -longest[item.path])  # stable: each file's tests stay in their order


def built_once(tmp_path_factory, name: str, build):
    """`build(folder)`'s result for the whole test run: the first xdist worker to ask builds it into
    a folder of the run's shared temporary folder, holding a file lock; the others wait for it and
    read the result it saved (pickled). Without xdist, simply built."""
    import pickle
    import shutil

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    folder, saved = shared / f"built-{name}", shared / f"built-{name}.pickle"
    with FileLock(f"{saved}.lock"):
        if saved.is_file():
            return pickle.loads(saved.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        result = build(folder)
        saved.write_bytes(pickle.dumps(result))
        return result


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A tiny random bidirectional Llama (transformers' LlamaModel) + BPE tokenizer saved in Hugging Face format."""
    from icdlib.model import backbones
    from icdlib.run import config

    cfg = config.resolve("tiny", {"tiny_layers": 2, "tiny_hidden": 64, "tiny_heads": 4, "tiny_vocab": 300})
    words = ("congestive heart failure atrial fibrillation hypertension acute kidney injury sepsis "
             "pneumonia diabetes mellitus intubation catheter patient admitted discharged stable").split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(60)]
    return backbones.make_tiny(cfg, texts, tmp_path_factory.mktemp("tiny") / "backbone")


LLAMA_MODELS = {"base_model_path": "Meta-Llama-3-8B-Instruct", "model_path": "LLM2Vec-Meta-Llama-3-8B-Instruct-mntp",
                "adapter_path": "LLM2Vec-Meta-Llama-3-8B-Instruct-mntp-supervised"}
OFFLINE_SIZE = {"synth_admissions": 120, "segment_length": 64, "max_segments": 2, "attention_dim": 16,
                "batch_size": 8, "grad_accum": 1, "warmup_steps": 1, "max_steps": 4, "eval_every": 2, "save_every": 2,
                "lr": 1.0e-3, "baseline": False}


def write_caml_splits(mimic_dir: Path, out: Path):
    """CAML-style `{train,dev,test}_full_hadm_ids.csv` for a twin (patient-level, as CAML's are)."""
    import pandas as pd

    from icdlib.data import splits

    notes = pd.read_csv(mimic_dir / "NOTEEVENTS.csv", usecols=["SUBJECT_ID", "HADM_ID"]).dropna().drop_duplicates()
    notes = notes.astype("int64").drop_duplicates("HADM_ID")
    assigned = pd.Series(splits.patient_rule(notes["SUBJECT_ID"].to_numpy()), index=notes["HADM_ID"].to_numpy())
    out.mkdir(parents=True)
    for split, pattern in splits.CAML_FILES.items():
        ids = assigned.index[assigned == split]
        (out / pattern.format("full")).write_text("".join(f"{i}\n" for i in ids))
    return assigned


@pytest.fixture(scope="session")
def relative_run(tmp_path_factory):
    """The README's offline recipe as a user runs it, once for the whole suite: `python -m icdlib run
    --backbone llama3` on a toy replica of the hub layout (tests/hub_replica.py) copied to `../models`,
    from a working directory of its own where every path is relative (`--output-root relout`,
    `--mimic-dir mimic`, CAML split files in `splits`), with HF_HUB_OFFLINE=1 and an empty HF cache.

    Returns a namespace: work, models, run_dir, done (the CompletedProcess), assigned (hadm_id →
    split of the split files), before (whether stray output folders existed before the run)."""
    return built_once(tmp_path_factory, "relative_run", offline_run)


def offline_run(root: Path):
    """relative_run, built in `root`."""
    import shutil
    import subprocess
    from types import SimpleNamespace

    import hub_replica
    from icdlib.twin import synth

    replica = hub_replica.build(root / "hub", "llama")
    models = root / "models"
    for key, name in LLAMA_MODELS.items():
        shutil.copytree({"base_model_path": replica.base, "model_path": replica.mntp,
                         "adapter_path": replica.supervised}[key], models / name)
    work = root / "work"
    synth.generate(work / "mimic", admissions=OFFLINE_SIZE["synth_admissions"], seed=0, short=True, progress=False)
    assigned = write_caml_splits(work / "mimic", work / "splits")
    repo = Path(__file__).resolve().parent.parent
    before = {p: p.exists() for p in (repo / "notebooks" / "relout", repo / "relout")}
    size = {**OFFLINE_SIZE, "split": "caml_full", "split_dir": "splits",
            **{k: f"../models/{name}" for k, name in LLAMA_MODELS.items()}}
    args = [sys.executable, "-m", "icdlib", "run", "--backbone", "llama3", "--run", "r", "--output-root", "relout",
            "--mimic-dir", "mimic", "--quiet", *[a for k, v in size.items() for a in ("-p", f"{k}={v}")]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "empty-cache")}
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(root=root, work=work, models=models, run_dir=work / "relout" / "r", done=done,
                           assigned=assigned, before=before)


@pytest.fixture(scope="session")
def done(tmp_path_factory):
    """A finished small run (test_run_record's FAST size: 01, 03 and 04 through their step functions),
    built once for the suite (test_run_record, test_headline, test_report, test_compare); tests that
    change a run work on a copy of it."""
    return built_once(tmp_path_factory, "done", finished_run)


def finished_run(root: Path):
    """done, built in `root`."""
    from test_run_record import run_cfg

    from icdlib import steps

    cfg = run_cfg(root, "r")
    steps.s01_preprocess(cfg, progress=False)
    steps.s03_train(cfg, progress=False)
    steps.s04_evaluate(cfg)
    return cfg
