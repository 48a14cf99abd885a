"""The run record: each step's `NN_step/manifest.json`, and the checks a step makes before it
reads what earlier steps wrote.

Why this module exists: the notebooks talk only through files, so the files must say what made
them. A step that writes runs inside `step(cfg, name, params)`, which

1. holds the run folder's lock (`runfolder.lock`; under torchrun the master process only);
2. takes the data parameters from step 01's manifest, and for 04 and 05 the training parameters
   from 03's (`recorded_config`): a parameter the run does not ask for (it has the params file's
   value) follows the record, one it asks differently stops the step in one line: `01_preprocess
   was built with split=patient, this run asks split=seed: rerun 01 (or use a new run folder)`;
3. checks every upstream step (`check_upstream`): its manifest exists, and every artifact it
   recorded (what it read and what it wrote) still has the recorded content hash. A step that
   was rerun, or stopped half-way, after its downstream steps ran is caught here;
4. on success writes the manifest: the parameters the step depends on, the hashes of its inputs
   (the upstream artifacts) and outputs, commit, versions, device (`provenance.collect`),
   start, end, wall time and peak memory.

A step that fails writes no manifest; 03 and 04 remove their old one before they start
replacing their outputs (`Step.invalidate`), so a folder whose step did not finish has none.
Steps that only read (02, 05) call `check` and write nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

from icdlib.run.errors import DataError
from icdlib.run.runfolder import Run, atomic_write_text, lock, shown_path, tree_hash

DATA_STEP = "01_preprocess"
TRAIN_STEP = "03_train"
AFTER_TRAINING = ("04_evaluate", "05_error_analysis")  # steps that read 03's model and take its parameters
# the steps each step reads, directly or through another (checked in this order)
UPSTREAM = {
    "01_preprocess": (),
    "02_label_stats": ("01_preprocess",),
    "03_train": ("01_preprocess",),
    "04_evaluate": ("01_preprocess", "03_train"),
    "05_error_analysis": ("01_preprocess", "03_train", "04_evaluate"),
}
FORMAT = 1  # of manifest.json


class RecordError(DataError):
    """The run folder's artifacts do not fit together (or do not fit the run's parameters)."""


def artifact_hash(path: Path) -> str | None:
    """A file's short content hash, a folder's `tree_hash`; None when it does not exist."""
    from icdlib.run.provenance import file_hash

    path = Path(path)
    return tree_hash(path) if path.is_dir() else file_hash(path)


def read_manifest(run: Run, step: str) -> dict | None:
    """A step's manifest, or None when it has none; a damaged one is a RecordError."""
    path = run.manifest(step)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise RecordError(f"{run.rel(path)} is damaged ({type(e).__name__}): rerun {step}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        raise RecordError(f"{run.rel(path)} is not a step manifest: rerun {step}")
    return manifest


def scored_metrics(run: Run, model: Path) -> tuple[dict, str]:
    """04's metrics.json when it scored the model folder `model` (the run's `03_train/best/`, or a
    variant's) as it is now, and ""; else {} and why not, as a phrase (`04_evaluate has not scored
    the current model (03_train/best changed since it ran)`).

    04's manifest records the `tree_hash` of every best/ it evaluated (its `inputs`, as `step` takes
    them from 03's manifest) and the hash of the metrics.json it wrote (its `outputs`): a 03 rerun
    since (`icdlib run --only 03`) changes the first; 04 stopping half-way, or an icdlib older than
    the run record, leaves no manifest, and then nothing says which model was scored."""
    path = run.metrics
    if not path.is_file():
        return {}, "04_evaluate has not run for this run"
    try:
        manifest = read_manifest(run, "04_evaluate")
    except RecordError:
        manifest = None
    if manifest is None:
        return {}, (f"{run.rel(path)} does not record which model it scored (04_evaluate did not finish, or an "
                    f"older icdlib wrote it)")
    if manifest["outputs"].get(run.rel(path)) != artifact_hash(path):
        return {}, f"{run.rel(path)} has changed since 04_evaluate wrote it"
    if manifest.get("inputs", {}).get(run.rel(model)) != tree_hash(model):
        what = "changed since it ran" if model.is_dir() else "is missing"
        return {}, f"04_evaluate has not scored the current model ({run.rel(model)} {what})"
    return json.loads(path.read_text()), ""


def scored_by(predictions: Path) -> str | None:
    """The id (`tree_hash`) of the `best/` that wrote a `predictions_<split>.npz` of step 03; None when
    the file is missing or names none (written by an older icdlib)."""
    import numpy as np

    try:
        with np.load(predictions) as z:
            return str(z["best"]) if "best" in z.files else None
    except FileNotFoundError:
        return None


def _json(value):
    """A value as the manifest stores it (JSON's view: tuples are lists)."""
    return json.loads(json.dumps(value, default=str))


def _shown(value) -> str:
    return value if isinstance(value, str) and value else json.dumps(value)


def _file_defaults(cfg):
    """The Config the params file alone gives (what the run did not ask to change), or None."""
    from icdlib.run import config
    from icdlib.run.errors import ConfigError

    try:
        return config.resolve(cfg.backbone, {"output_root": cfg.output_root, "run": cfg.run})
    except ConfigError:  # a params file outside params/ (tests): every difference counts as asked
        return None


def data_config(cfg, run: Run | None = None):
    """`cfg` with the data parameters step 01 was built with.

    A data parameter (01's `params`) the run leaves at the params file's value takes 01's value,
    so `papermill 03_train.ipynb -p backbone tiny -p run X` trains on X's data as it was built;
    one the run asks with another value than 01 used is refused in one line."""
    run = run or Run.of(cfg)
    built = read_manifest(run, DATA_STEP)
    if built is None:
        raise RecordError(_missing(run, DATA_STEP))
    return as_recorded(cfg, built.get("params", {}), lambda was, asks: (
        f"{DATA_STEP} was built with {was}, this run asks {asks}: rerun 01 (or use a new run folder)"))


def recorded_config(cfg, run: Run, step: str, own: tuple = ()):
    """`cfg` as the run recorded it, for `step`: 01's data parameters (`data_config`) and, after
    03, the parameters 03 trained with. Such a parameter the run leaves at the params file's value
    takes the recorded one (`icdlib run --only 04` knows the run's `mntp_compare` without being
    told); one asked with another value stops in one line. Not taken from the record: `step`'s
    own parameters (`own`: 04 may tune another `threshold`) and `config.HOW_TO_RUN` (how a step
    runs, not what it computes: device, processes, ...)."""
    from icdlib.run.config import HOW_TO_RUN

    cfg = data_config(cfg, run) if step != DATA_STEP else cfg
    if step in AFTER_TRAINING:
        trained = read_manifest(run, TRAIN_STEP)
        if trained is None:
            raise RecordError(_missing(run, TRAIN_STEP))
        skip = set(own) | set(HOW_TO_RUN)
        params = {k: v for k, v in trained.get("params", {}).items() if k not in skip}
        cfg = as_recorded(cfg, params, lambda was, asks: (
            f"{TRAIN_STEP} was trained with {was}, this run asks {asks}: rerun 03 (or use a new run folder)"))
    return cfg


def as_recorded(cfg, recorded: dict, refusal):
    """`cfg` with `recorded`'s values where the run left the params file's; where it asks others, a
    RecordError with `refusal(was, asks)`: `key=value, ...` as recorded and as asked, every such key
    (`refusal=None`: the asked values stay)."""
    defaults = _file_defaults(cfg)
    changes, differ = {}, []
    for key, value in recorded.items():
        if not hasattr(cfg, key):
            continue
        asked = _json(getattr(cfg, key))
        if asked == value:
            continue
        if defaults is not None and _json(getattr(defaults, key)) == asked:
            changes[key] = value
            continue
        differ.append((key, value, asked))
    if differ and refusal is not None:
        raise RecordError(refusal(", ".join(f"{k}={_shown(v)}" for k, v, _ in differ),
                                  ", ".join(f"{k}={_shown(a)}" for k, _, a in differ)))
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _missing(run: Run, step: str) -> str:
    if not run.step(step).is_dir():
        return f"{shown_path(run.step(step))} does not exist: run {step} for this run first"
    return (f"{run.rel(run.manifest(step))} does not exist: {step} has not finished for this run "
            f"(or was made by an older icdlib): run {step} again")


def check_upstream(run: Run, step: str, hashes: dict | None = None) -> dict[str, dict]:
    """The manifests of the steps `step` reads, each checked against the folder as it is now.

    Every artifact an upstream manifest lists (inputs and outputs) must still have its recorded
    hash: otherwise that step's outputs are not what its manifest describes (it was rerun and
    stopped half-way) or were built from artifacts that have changed since (an earlier step was
    rerun). `hashes` caches artifact hashes across calls (relative path → hash)."""
    hashes = {} if hashes is None else hashes

    def now(rel: str) -> str | None:
        if rel not in hashes:
            hashes[rel] = artifact_hash(run.dir / rel)
        return hashes[rel]

    manifests = {}
    for up in UPSTREAM[step]:
        manifest = read_manifest(run, up)
        if manifest is None:
            raise RecordError(_missing(run, up))
        for rel, recorded in manifest["outputs"].items():
            if now(rel) != recorded:
                what = "is missing" if now(rel) is None else "has changed"
                raise RecordError(f"{rel} {what} since {up} finished (a later {up} run stopped half-way?): "
                                  f"rerun {up}")
        for rel, recorded in manifest.get("inputs", {}).items():
            if now(rel) != recorded:
                source = rel.split("/", 1)[0]
                raise RecordError(f"{up} was built from another {rel} ({source} was rerun since): rerun {up}")
        manifests[up] = manifest
    return manifests


def check(cfg, step: str):
    """For a step that only reads (02, 05): the run's Config with 01's data parameters, after
    `check_upstream`. Raises RecordError (one line) when the artifacts do not fit."""
    run = Run.of(cfg)
    cfg = recorded_config(cfg, run, step)
    check_upstream(run, step)
    return cfg


# ---------------------------------------------------------------- writing a step's record

def peak_memory() -> dict:
    """Peak resident memory of this process since it started (`ru_maxrss`; a notebook kernel runs
    one step), in MiB, and the peak CUDA memory torch allocated since the step started when CUDA is
    in use. (Children are left out: a forked child's peak counts the parent's pages it shared.)"""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    out = {"rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


@dataclasses.dataclass
class Step:
    """A step in progress: what it read and wrote, written as its manifest when it succeeds."""

    run: Run
    name: str
    cfg: object  # the Config the step runs with (01's data parameters in)
    params: tuple[str, ...]
    master: bool = True
    inputs: dict = dataclasses.field(default_factory=dict)  # relative path → content hash
    outputs: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)  # step-specific facts (e.g. reused from cache)
    keep_manifest: bool = False  # True: the outputs were reused as they are; their manifest stays

    def wrote(self, *paths: Path) -> None:
        """Record outputs (files or folders) by their content hash, as they are now."""
        for path in paths:
            self.outputs[self.run.rel(path)] = artifact_hash(path)

    def invalidate(self) -> None:
        """Remove the step's old manifest before its outputs start being replaced (master only)."""
        if self.master:
            self.run.manifest(self.name).unlink(missing_ok=True)

    def reuse(self) -> None:
        """The outputs are reused as they are: their manifest (how they were built) stays."""
        self.keep_manifest = True

    def manifest(self, started: float, wall_s: float) -> dict:
        from icdlib.run.provenance import collect

        origin = collect(self.run.dir, files=())
        origin.pop("data", None)
        return {"format": FORMAT, "step": self.name,
                "params": {k: _json(getattr(self.cfg, k)) for k in self.params},
                "inputs": self.inputs, "outputs": self.outputs, **self.extra, **origin,
                "started": _iso(started), "ended": _iso(started + wall_s), "wall_s": round(wall_s, 3),
                "peak_memory": peak_memory()}


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).replace(microsecond=0).isoformat()


@contextlib.contextmanager
def step(cfg, name: str, params: tuple[str, ...], master: bool = True):
    """Run step `name` of `cfg`'s run: lock, data parameters, upstream checks, manifest (see the
    module docstring). Yields a `Step`; use `step.cfg`, record outputs with `step.wrote`.

    `master=False` (torchrun ranks other than 0) checks the same but neither locks nor writes."""
    run = Run.of(cfg)
    if name != DATA_STEP and not run.dir.exists():  # before the lock, which would make the folder
        raise RecordError(_missing(run, DATA_STEP))
    with lock(run.dir, name) if master else contextlib.nullcontext():
        cfg = recorded_config(cfg, run, name, tuple(params))
        hashes: dict = {}
        upstream = check_upstream(run, name, hashes)
        inputs = {rel: h for m in upstream.values() for rel, h in m["outputs"].items()}
        current = Step(run, name, cfg, tuple(params), master, inputs=inputs)
        started, t0 = time.time(), time.perf_counter()
        _reset_cuda_peak()
        yield current
        if master and not (current.keep_manifest and run.manifest(name).is_file()):
            record = current.manifest(started, time.perf_counter() - t0)
            atomic_write_text(run.manifest(name), json.dumps(record, indent=2) + "\n")
