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
# `make test` runs pytest-xdist with `--dist loadgroup --no-loadscope-reorder`: each test is a unit of
# work of its own, sent to whichever worker is free, except where tests share something built once.
# Tests sharing a chain of CHAINS (a session fixture: a whole run) form one unit, so one worker builds
# it once and runs them all; tests of a file with a module-scoped fixture form their file's unit.
# Units holding an `end_to_end` test go first, the longest first (by the seconds its mark says): they
# start while short tests remain to fill the other worker, so the run does not end on a late long one.
CHAINS = ("relative_run", "done")
# A test reading one of these fixtures (a whole `icdlib run`, papermill or bench chain) is end_to_end;
# the seconds its fixture took on 2 busy cores (pytest --durations) order the units.
RUNS = {"demo_run": 240, "run4": 180, "small_run": 120, "run_x": 120, "relative_run": 60, "smoke": 60}


def work_unit(item) -> str | None:
    """The xdist group of a test: the chain it shares, its file when it uses a module fixture, or None."""
    defs = {name: fixturedefs[-1] for name, fixturedefs in item._fixtureinfo.name2fixturedefs.items() if fixturedefs}
    chains = sorted(name for name in CHAINS if name in defs and defs[name].scope == "session")
    if chains:
        return "+".join(chains)
    if any(d.scope == "module" for d in defs.values()):
        return item.path.stem
    return None


def seconds(item) -> float:
    """How long an end_to_end test's unit may take, as its marks say; -1 for any other test."""
    marks = list(item.iter_markers("end_to_end"))
    return max((mark.kwargs.get("seconds", 0) for mark in marks), default=-1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in RUNS:
            if name in item.fixturenames:
                item.add_marker(pytest.mark.end_to_end(seconds=RUNS[name]))
    units = {item.nodeid: work_unit(item) or item.nodeid for item in items}
    longest = {}
    for item in items:
        longest[units[item.nodeid]] = max(longest.get(units[item.nodeid], -1), seconds(item))
    items.sort(key=lambda item: -longest[units[item.nodeid]])  # stable: the order of the files otherwise
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            if units[item.nodeid] != item.nodeid:
                item.add_marker(pytest.mark.xdist_group(units[item.nodeid]))


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
    import shutil
    import subprocess
    from types import SimpleNamespace

    import hub_replica
    from icdlib.twin import synth

    root = tmp_path_factory.mktemp("offline")
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
    built once for test_run_record and test_headline; tests that change a run work on a copy of it."""
    from test_run_record import run_cfg

    from icdlib import steps

    cfg = run_cfg(tmp_path_factory.mktemp("record"), "r")
    steps.s01_preprocess(cfg, progress=False)
    steps.s03_train(cfg, progress=False)
    steps.s04_evaluate(cfg)
    return cfg
