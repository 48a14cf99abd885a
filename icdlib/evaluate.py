"""Step 04: score the best model's predictions (and a TF-IDF baseline) with the field's metrics.

Reads `01_preprocess/` and `03_train/predictions_{val,test}.npz`; writes
`04_evaluate/metrics.json` (`val`/`test` at the configured threshold, `val_tuned`/`test_tuned`
at the threshold tuned on validation for micro-F1, `threshold`, and `baseline`) and
`per_code.parquet`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icdlib import metrics, preprocess
from icdlib.config import Config
from icdlib.errors import DataError
from icdlib.labels import multi_hot
from icdlib.runfolder import atomic_write_text

STEP = "04_evaluate"


@dataclass
class SplitScores:
    notes: pd.DataFrame  # the split's rows of notes.parquet, in prediction order
    y_true: np.ndarray  # (n_docs, n_labels)
    y_score: np.ndarray  # (n_docs, n_labels)


@dataclass
class Evaluation:
    labels: pd.DataFrame
    splits: dict[str, SplitScores]  # val, and test when the split has one
    train: pd.DataFrame  # the train rows of notes.parquet (the baseline fits on them)
    threshold: float = 0.5
    results: dict = field(default_factory=dict)  # name → metrics dict
    baseline: dict[str, np.ndarray] = field(default_factory=dict)  # split → scores


def load(cfg: Config) -> Evaluation:
    """Predictions of step 03 aligned with the notes and labels of step 01."""
    pre = preprocess.load(cfg.run_dir)
    codes = pre.labels["code"].tolist()
    splits = {}
    for split in ("val", "test"):
        path = cfg.run_dir / "03_train" / f"predictions_{split}.npz"
        if not path.is_file():
            raise DataError(f"{path} does not exist: run 03_train for this run first")
        with np.load(path) as z:
            hadm, scores = z["hadm_id"], z["scores"]
        if len(hadm) == 0:
            continue
        if scores.shape[1] != len(codes):
            raise DataError(f"{path.name} scores {scores.shape[1]} labels, the run's label space has {len(codes)}")
        notes = pre.notes.set_index("hadm_id").loc[hadm].reset_index()
        splits[split] = SplitScores(notes, multi_hot(notes["codes"].tolist(), codes), scores)
    if "val" not in splits:
        raise DataError("no validation predictions: the run's split has no val admissions")
    return Evaluation(labels=pre.labels, splits=splits, train=pre.notes[pre.notes["split"] == "train"],
                      threshold=cfg.threshold)


def score_all(ev: Evaluation, cfg: Config, progress: bool = False) -> dict:
    """Metrics of the model (and the baseline when cfg.baseline) at the fixed and tuned thresholds."""
    tuned = metrics.tune_threshold(ev.splits["val"].y_true, ev.splits["val"].y_score)
    results = {"threshold": tuned}
    for split, s in ev.splits.items():
        results[split] = metrics.compute(s.y_true, s.y_score, cfg.threshold)
        results[f"{split}_tuned"] = metrics.compute(s.y_true, s.y_score, tuned)
    if cfg.baseline:
        from icdlib import baseline

        train = ev.train
        y_train = multi_hot(train["codes"].tolist(), ev.labels["code"].tolist())
        ev.baseline = baseline.fit_predict(train["text"].tolist(), y_train,
                                           {k: s.notes["text"].tolist() for k, s in ev.splits.items()},
                                           seed=cfg.seed, progress=progress)
        b_tuned = metrics.tune_threshold(ev.splits["val"].y_true, ev.baseline["val"])
        results["baseline"] = {"threshold": b_tuned, **{
            f"{split}_tuned": metrics.compute(s.y_true, ev.baseline[split], b_tuned) for split, s in ev.splits.items()}}
    ev.results = results
    return results


def systems(ev: Evaluation) -> dict[str, dict]:
    """Rows for the metrics table: '<system> <split> @<threshold>' → metrics."""
    rows = {}
    for split in ev.splits:
        rows[f"icdlib {split} @{ev.threshold:g}"] = ev.results[split]
        rows[f"icdlib {split} @tuned {ev.results['threshold']:.3f}"] = ev.results[f"{split}_tuned"]
    if "baseline" in ev.results:
        for split in ev.splits:
            rows[f"TF-IDF baseline {split} @tuned"] = ev.results["baseline"][f"{split}_tuned"]
    return rows


def eval_split(ev: Evaluation) -> str:
    """The split reported as the headline: test when there is one, else val."""
    return "test" if "test" in ev.splits else "val"


def write(cfg: Config, ev: Evaluation, per_code: pd.DataFrame) -> Path:
    out = cfg.run_dir / STEP
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".per_code.parquet.tmp"
    per_code.to_parquet(tmp, index=False)
    tmp.replace(out / "per_code.parquet")
    return atomic_write_text(out / "metrics.json", json.dumps(_jsonable(ev.results), indent=2) + "\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


def read_threshold(cfg: Config) -> float:
    """The decision threshold tuned on validation by step 04."""
    path = cfg.run_dir / STEP / "metrics.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: run 04_evaluate for this run first")
    return float(json.loads(path.read_text())["threshold"])
