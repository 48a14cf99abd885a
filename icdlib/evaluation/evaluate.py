"""Step 04: score the best model's predictions, beside two reference systems, with the field's metrics.

Reads `01_preprocess/` and `03_train/predictions_{val,test}.npz`; writes
`04_evaluate/metrics.json` (`val`/`test` at the configured threshold, `val_tuned`/`test_tuned`
at the threshold tuned on validation for micro-F1, `threshold`, `baseline`, `prior`, the MNTP
arm's, `bootstrap`, `paired` and `provenance`), `per_code.parquet` and `manifest.json`. The step is
`run`; step 05 reads what it wrote with `read`.

The reference systems, each scored at its own threshold tuned on val (`val_tuned`/`test_tuned`, and
its `threshold`): `baseline`, the TF-IDF low-rank baseline (`icdlib.evaluation.baseline`: a low-rank linear
model on TF-IDF word unigrams and hashed bigrams, trained with SGD; with `baseline: true`), and
`prior`, the frequency prior (`prior_scores`: every admission gets each code's share of the train
admissions, so it ranks codes by frequency alone and knows nothing of the note). With
`mntp_compare`, `without_mntp` or `with_mntp` holds the other fine-tuning, as the model's keys.

Uncertainty (`bootstrap` resamples, 0 for none; `score_intervals`). The admissions of the reported
split (`eval_split`) are resampled with replacement, the same draws for every system (fixed seed
`BOOTSTRAP_SEED`), and every metric is recomputed on each resample, under the label set the table
compares (`compared_suffix`). Each headline metrics dict of that split and label set gets
`"ci95": {metric: [lo, hi]}` (the 2.5th and 97.5th percentiles; the model at the fixed and the tuned
threshold, the baseline, the prior and the MNTP arm at theirs). The top-level `"paired"` holds the
paired bootstrap of the model at its tuned threshold minus each other system at its own:
`{"model - baseline" | "model - prior" | "model - without_mntp" | "model - with_mntp":
{metric: {"diff": point difference, "lo", "hi", ...}}}`; a difference is called a win or a loss only
when its interval excludes 0 (`icdlib.measure.uncertainty.excludes_zero`). The top-level `"bootstrap"`
records how: `{"resamples", "level", "seed", "split", "label_set", "suffix"}` (`suffix`: the key
suffix of the dicts that carry `ci95`, "" or `_edin`); with `bootstrap: 0` it says `resamples: 0`
and no `ci95` or `paired` is written.

Which codes a split is scored over (`metrics.compute`'s `label_set`, recorded in every metrics dict
as `label_set` with the number of codes as `n_labels`): `val`, `test`, `val_tuned`, `test_tuned`
(and the baseline's and the MNTP arm's) rank and count every code of the run's label space, the
convention Edin et al. attribute to CAML (their `*_mullenbach` metrics). The same keys with `_edin`
appended (`test_edin`, `test_tuned_edin`, ...) score the same predictions over Edin et al.'s label
set: the codes and the admissions with a positive in that split, AUROC over every code
(`icdlib.measure.metrics` says why, from their code). Both are written for every run, so no number of an
earlier run changes meaning; the
comparison table (`systems`) shows the `_edin` ones when the run's benchmark is one of Edin et al.'s
(`EDIN_BENCHMARKS`), whose published rows were measured that way. The threshold is tuned once, on
every code of val, as Edin et al. tune theirs.

With several training seeds (`seeds`, read from 03's manifest), the main keys above stay the run's
model's, the first seed's, and two more are written (`score_seeds`): `seeds`, {"<seed>": {`threshold`
(its own, tuned on its val), `val`, `val_edin`, `val_tuned`, ..., `test_tuned_edin`}} for every seed,
the first's equal to the main keys; and `seed_spread`, {"test_tuned": {"f1_micro": {"mean", "sd",
"n"}, ...}, ...} for each of those entries and each metric: the mean and the sample standard
deviation (ddof=1, as Edin et al. report theirs) over the `n` seeds where the metric is defined
(`seed_spread`). A run without `seeds` has neither key.

Both refuse, in one line, predictions older than `03_train/best/` (a 03 rerun that stopped after
writing new checkpoints), and artifacts their upstream manifests do not describe (`icdlib.run.record`).
Training the baseline is its own call (`baseline.fit_for`): `score_all` only scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from icdlib.evaluation import analysis
from icdlib.evaluation.names import SYSTEM_NAMES, model_name
from icdlib.measure import metrics
from icdlib.data import preprocess
from icdlib.run import provenance, record
from icdlib.run.config import BENCHMARKS, Config
from icdlib.run.errors import DataError
from icdlib.data.labels import multi_hot
from icdlib.run.runfolder import MNTP_ARMS, SCORED_SPLITS, Run, atomic_path, atomic_write_text, seed_variant, tree_hash

STEP = "04_evaluate"
PARAMS = ("threshold", "baseline", "seed", "bootstrap", "explain_notes", "ig_steps", "faithfulness_step")  # what step 04's output depends on besides its inputs
BOOTSTRAP_SEED = 0  # the resamples do not change with the run's seed: two seeds' intervals use the same draws
EDIN = "_edin"  # metrics.json keys with this suffix: scored with metrics.compute(label_set="edin")
EDIN_BENCHMARKS = frozenset(name for name in BENCHMARKS if name.startswith("edin_"))


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
    prior: dict[str, np.ndarray] = field(default_factory=dict)  # split → the frequency prior's scores
    arm: dict[str, np.ndarray] = field(default_factory=dict)  # split → the MNTP comparison arm's scores
    per_code: pd.DataFrame | None = None  # analysis.per_code of the headline split at the tuned threshold
    cfg: Config | None = None  # the run's Config with the data parameters step 01 used


def check_predictions(run: Run) -> str:
    """The id of `03_train/best/`, after checking that every prediction file was scored by it.

    A 03 rerun that stops after writing new checkpoints leaves the old predictions beside a new
    `best/`: refused in one line instead of being evaluated as if they were the new model's."""
    best = run.checkpoint("best")
    best_id = tree_hash(best)
    if best_id is None:
        raise DataError(f"{run.rel(best)} does not exist: run 03_train for this run first")
    for split in SCORED_SPLITS:
        path = run.predictions(split)
        if not path.is_file():
            raise DataError(f"{run.rel(path)} does not exist: run 03_train for this run first")
        scored_by = record.scored_by(path)
        if scored_by != best_id:
            what = "names no best/ (written by an older icdlib)" if scored_by is None else \
                f"was scored by an earlier best/ than {run.rel(best)} (a later 03 run stopped before scoring)"
            raise record.RecordError(f"{run.rel(path)} {what}: rerun 03 (resume=true continues from last/)")
    return best_id


def load(cfg: Config, notes_columns: list[str] | None = None) -> Evaluation:
    """Predictions of step 03 aligned with the notes and labels of step 01 (after `check_predictions`);
    `notes_columns`: only these columns of notes.parquet (hadm_id, split and codes at least)."""
    run = Run.of(cfg)
    check_predictions(run)
    pre = preprocess.load(run.dir, columns=notes_columns)
    codes = pre.labels["code"].tolist()
    splits = {}
    for split in SCORED_SPLITS:
        path = run.predictions(split)
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
                      threshold=cfg.threshold, cfg=cfg)


def both_label_sets(key: str, y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict:
    """`key` → the metrics over every code, `key + EDIN` → over Edin et al.'s label set."""
    return {key: metrics.compute(y_true, y_score, threshold),
            key + EDIN: metrics.compute(y_true, y_score, threshold, label_set="edin")}


def scored(ev: Evaluation, scores: dict[str, np.ndarray], threshold: float | None = None) -> dict:
    """Metrics of one model's `scores` (split → matrix): `threshold` tuned on its own val scores,
    then each split at the fixed `threshold` (unless None: the reference systems have no fixed-threshold
    rows) and at the tuned one, under both label sets."""
    tuned = metrics.tune_threshold(ev.splits["val"].y_true, scores["val"])
    out = {"threshold": tuned}
    for split, s in ev.splits.items():
        if threshold is not None:
            out.update(both_label_sets(split, s.y_true, scores[split], threshold))
        out.update(both_label_sets(f"{split}_tuned", s.y_true, scores[split], tuned))
    return out


def score_all(ev: Evaluation, cfg: Config) -> dict:
    """Metrics of the model at the fixed and the tuned threshold, under both label sets (nothing is
    trained here)."""
    ev.results = scored(ev, {split: s.y_score for split, s in ev.splits.items()}, cfg.threshold)
    return ev.results


def score_baseline(ev: Evaluation, scores: dict[str, np.ndarray]) -> dict:
    """Metrics of the baseline's `scores` (split → matrix) at its own tuned threshold, as
    `ev.results["baseline"]`."""
    ev.baseline = scores
    ev.results["baseline"] = scored(ev, scores)
    return ev.results["baseline"]


def prior_scores(n_train: np.ndarray, n_train_docs: int, n_docs: int) -> np.ndarray:
    """The frequency prior's (n_docs, n_labels) scores: every row is each code's share of the
    `n_train_docs` train admissions (`n_train`: admissions per code, labels.parquet's column).

    The floor any coder must clear: it ranks codes by training frequency and ignores the note, so its
    micro-AUROC is high on a long-tailed label space and its per-document ranking is the same for all."""
    if n_train_docs < 1:
        raise DataError("the frequency prior needs train admissions: the run's train split is empty")
    share = np.asarray(n_train, dtype=np.float64) / n_train_docs
    return np.tile(share.astype(np.float32), (n_docs, 1))


def score_prior(ev: Evaluation) -> dict:
    """The frequency prior (`prior_scores`) scored like the baseline, as `ev.results["prior"]`."""
    n_train = ev.labels["n_train"].to_numpy()
    ev.prior = {split: prior_scores(n_train, len(ev.train), len(s.y_true)) for split, s in ev.splits.items()}
    ev.results["prior"] = scored(ev, ev.prior)
    return ev.results["prior"]


def comparison_scores(run: Run, ev: Evaluation, arm: str) -> dict[str, np.ndarray] | None:
    """The scores of the MNTP comparison's other fine-tuning (`03_train/without_mntp/` or
    `with_mntp/`, `mntp_compare`), checked as the model's are (`check_predictions`) and aligned
    with `ev`'s admissions; None when the run has none."""
    if arm == "none":
        return None
    return variant_scores(run, ev, MNTP_ARMS[arm])


def variant_scores(run: Run, ev: Evaluation, variant: str) -> dict[str, np.ndarray]:
    """The scores of another fine-tuning of the run (`03_train/<variant>/`: an MNTP arm, a further
    seed), checked as the model's are (`check_predictions`) and aligned with `ev`'s admissions."""
    other = Run(run.dir, variant)
    check_predictions(other)
    out = {}
    for split, s in ev.splits.items():
        with np.load(other.predictions(split)) as z:
            if not np.array_equal(z["hadm_id"], s.notes["hadm_id"].to_numpy()):
                raise record.RecordError(f"{other.rel(other.predictions(split))} scores other {split} admissions "
                                         f"than {run.rel(run.predictions(split))}: rerun 03")
            out[split] = z["scores"]
    return out


def score_comparison(ev: Evaluation, scores: dict[str, np.ndarray], arm: str) -> dict:
    """Metrics of the comparison's other fine-tuning, as the model's are (fixed and val-tuned
    threshold), as `ev.results["without_mntp"]` or `ev.results["with_mntp"]`."""
    ev.arm = scores
    out = scored(ev, scores, ev.threshold)
    ev.results[MNTP_ARMS[arm]] = out
    return out


def score_intervals(ev: Evaluation, resamples: int) -> dict:
    """95% bootstrap intervals of the reported split (module docstring: `ci95`, `paired`, `bootstrap`),
    added to `ev.results`; returns the `bootstrap` record. `resamples` 0 records that there are none."""
    split, x = eval_split(ev), compared_suffix(ev)
    label_set = "edin" if x == EDIN else "all"
    record = {"resamples": int(resamples), "level": 0.95, "seed": BOOTSTRAP_SEED, "split": split,
              "label_set": label_set, "suffix": x}
    ev.results["bootstrap"] = record
    if resamples < 1:
        return record
    from icdlib.measure import uncertainty

    y = ev.splits[split].y_true
    how = {"n_resamples": int(resamples), "seed": BOOTSTRAP_SEED, "level": 0.95, "label_set": label_set}
    tuned = ev.results["threshold"]
    model = ev.splits[split].y_score
    ev.results[split + x]["ci95"] = uncertainty.intervals(y, model, ev.threshold, **how)
    ev.results[f"{split}_tuned{x}"]["ci95"] = uncertainty.intervals(y, model, tuned, **how)
    paired = {}
    for key, scores in reference_systems(ev).items():
        own = ev.results[key]
        own[f"{split}_tuned{x}"]["ci95"] = uncertainty.intervals(y, scores[split], own["threshold"], **how)
        paired[f"model - {key}"] = uncertainty.paired(y, model, scores[split], tuned, own["threshold"], **how)
    ev.results["paired"] = paired
    return record


def reference_systems(ev: Evaluation) -> dict[str, dict[str, np.ndarray]]:
    """The systems the model is compared with, by their metrics.json key → split → scores:
    `baseline`, `prior` and the MNTP arm (`without_mntp`/`with_mntp`), those that were scored."""
    arm = next((key for key in MNTP_ARMS.values() if key in ev.results), None)
    out = {"baseline": ev.baseline, "prior": ev.prior, **({arm: ev.arm} if arm else {})}
    return {key: scores for key, scores in out.items() if scores}


# metrics.compute's keys that count or set, not measure: no spread across seeds
NOT_SPREAD = frozenset({"n_docs", "n_labels", "n_labels_scored", "threshold"})


def score_seeds(ev: Evaluation, seeds: list[int], further) -> dict:
    """Every training seed's metrics (`Config.seeds`), as `ev.results["seeds"]` ({seed: metrics},
    the first seed's the model's own entries, the others `scored` as the model's are, each at its
    own val-tuned threshold), and their spread, `ev.results["seed_spread"]` (`seed_spread`).
    `further`: (seed, split → scores) for the seeds after the first, in order (a generator reads
    one seed's predictions at a time). Returns the spread."""
    model = {key: ev.results[key] for key in scored_keys(ev)}
    per_seed = {str(seeds[0]): model}
    for seed, scores in further:
        per_seed[str(seed)] = scored(ev, scores, ev.threshold)
    ev.results["seeds"] = per_seed
    ev.results["seed_spread"] = seed_spread(per_seed)
    return ev.results["seed_spread"]


def scored_keys(ev: Evaluation) -> list[str]:
    """The keys `scored` writes for `ev`'s splits: `threshold`, then `val`, `val_edin`, `val_tuned`, ..."""
    return ["threshold"] + [f"{split}{tuned}{x}" for split in ev.splits for tuned in ("", "_tuned")
                            for x in ("", EDIN)]


def seed_spread(per_seed: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{entry: {metric: {"mean", "sd", "n"}}} for each metrics entry of the seeds (`test_tuned`, ...):
    the mean and the sample standard deviation (ddof=1, as Edin et al. report theirs) over the `n`
    seeds where the metric is defined (a NaN macro-F1 is left out); sd is None when n < 2, both
    when n = 0. Counts (`NOT_SPREAD`) and the label-set name are not spread."""
    runs = list(per_seed.values())
    out = {}
    for key, first in runs[0].items():
        if not isinstance(first, dict):
            continue
        out[key] = {}
        for metric, value in first.items():
            if metric in NOT_SPREAD or isinstance(value, (str, dict, list)):  # label_set, ci95
                continue
            values = np.array([np.nan if r[key].get(metric) is None else r[key][metric] for r in runs], dtype=float)
            values = values[np.isfinite(values)]
            n = len(values)
            out[key][metric] = {"mean": float(values.mean()) if n else None,
                                "sd": float(values.std(ddof=1)) if n > 1 else None, "n": n}
    return out


def run(cfg: Config, progress: bool = False) -> Evaluation:
    """Step 04: score the predictions, train and score the baseline (when `cfg.baseline`) and the
    frequency prior, bootstrap their intervals (`cfg.bootstrap` resamples), and write metrics.json,
    per_code.parquet and the step's manifest. Returns what the notebook shows."""
    check_predictions(Run.of(cfg))  # before the manifests: the most specific line for stale predictions
    with record.step(cfg, STEP, PARAMS) as step:
        cfg = step.cfg
        ev = load(cfg)
        step.invalidate()
        from icdlib.run.progress import Lines

        say = Lines(step.run.evaluate_progress)  # tailed into the terminal of `icdlib run`
        score_all(ev, cfg)
        other = comparison_scores(step.run, ev, cfg.mntp_compare)
        if other is not None:
            score_comparison(ev, other, cfg.mntp_compare)
        if cfg.baseline:
            from icdlib.evaluation import baseline

            say("TF-IDF low-rank baseline: fitting TF-IDF on the train notes")
            score_baseline(ev, baseline.fit_for(cfg, ev, progress=progress, say=say))
        score_prior(ev)
        if cfg.seeds:
            seeds = cfg.training_seeds
            score_seeds(ev, seeds, ((seed, variant_scores(step.run, ev, seed_variant(seed))) for seed in seeds[1:]))
        score_intervals(ev, cfg.bootstrap)
        s = ev.splits[eval_split(ev)]
        ev.per_code = analysis.per_code(s.y_true, s.y_score, ev.labels, ev.results["threshold"])
        from icdlib.evaluation import explanations

        measured = explanations.for_run(cfg, ev, step.run, tuple(dict.fromkeys(("val", eval_split(ev)))),
                                          seed=BOOTSTRAP_SEED, say=say)
        if measured is not None:
            ev.results["explanations"] = measured
        write(cfg, ev)
        step.wrote(step.run.metrics, step.run.per_code)
    return ev


def read(cfg: Config) -> Evaluation:
    """Step 05's input (reads only): the predictions, and the metrics and per-code table step 04
    wrote, after the upstream checks (`record.check`). `ev.cfg` has step 01's data parameters."""
    run = Run.of(cfg)
    check_predictions(run)
    cfg = record.check(cfg, "05_error_analysis")
    ev = load(cfg)
    ev.results = json.loads(run.metrics.read_text())
    ev.per_code = pd.read_parquet(run.per_code)
    return ev


def compared_suffix(ev: Evaluation) -> str:
    """The metrics.json key suffix of the label set the run's published rows were measured on:
    `EDIN` for Edin et al.'s benchmarks, "" (every code) for the others."""
    benchmark = ev.cfg.benchmark if ev.cfg is not None else "none"
    return EDIN if benchmark in EDIN_BENCHMARKS else ""


def compared(ev: Evaluation, split: str) -> dict:
    """The metrics of `split` (fixed threshold) under the label set of the run's comparison."""
    return ev.results[split + compared_suffix(ev)]


def systems(ev: Evaluation) -> dict[str, dict]:
    """Rows for the metrics table, each metric once: '<system> <split> @tuned <t>' → the metrics at the
    system's threshold tuned on validation, under the label set of the run's published rows
    (`compared_suffix`), for the model (`names.model_name`), the MNTP arm, the TF-IDF low-rank baseline
    and the frequency prior (`names.SYSTEM_NAMES`); under the model's, '<model> <split> @<fixed>' → only
    the metrics the fixed threshold changes (`at_threshold`): its ranking metrics are the row above's.
    The reported split's dicts carry `ci95` when 04 bootstrapped them."""
    x = compared_suffix(ev)
    model = model_name(ev.results)
    rows = {}
    for split in ev.splits:
        rows[f"{model} {split} @tuned {ev.results['threshold']:.3f}"] = ev.results[f"{split}_tuned{x}"]
        rows[f"{model} {split} @{ev.threshold:g}"] = at_threshold(ev.results[split + x])
    others = [(SYSTEM_NAMES[key], key) for key in (*MNTP_ARMS.values(), "baseline", "prior") if key in ev.results]
    for name, key in others:
        for split in ev.splits:
            rows[f"{name} {split} @tuned {ev.results[key]['threshold']:.3f}"] = ev.results[key][f"{split}_tuned{x}"]
    return rows


RECORD_KEYS = ("n_docs", "n_labels", "n_labels_scored", "threshold", "label_set")


def at_threshold(m: dict) -> dict:
    """`m` (a `metrics.compute` dict, maybe with `ci95`) with only what its threshold changes
    (`metrics.THRESHOLD_KEYS`) and its record (split size, threshold, label set): the row a fixed
    threshold adds under the tuned one, without repeating the ranking metrics."""
    out = {k: v for k, v in m.items() if k in metrics.THRESHOLD_KEYS or k in RECORD_KEYS}
    if "ci95" in m:
        out["ci95"] = {k: v for k, v in m["ci95"].items() if k in metrics.THRESHOLD_KEYS}
    return out


def eval_split(ev: Evaluation) -> str:
    """The split reported as the headline: test when there is one, else val."""
    return "test" if "test" in ev.splits else "val"


def write(cfg: Config, ev: Evaluation):
    """`metrics.json` and `per_code.parquet` of `ev`, each written atomically; returns metrics.json's path.

    metrics.json carries, under `provenance`, what made the numbers (`provenance.collect`: git
    commit and dirty flag, python/torch/transformers/peft/tokenizers versions, device, date, and the
    content hashes of notes.parquet and labels.parquet); `ev.results` gets the same entry."""
    run = Run.of(cfg)
    with atomic_path(run.per_code) as tmp:
        ev.per_code.to_parquet(tmp, index=False)
    ev.results["provenance"] = provenance.collect(run.dir)
    return atomic_write_text(run.metrics, json.dumps(_jsonable(ev.results), indent=2) + "\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


def read_threshold(cfg: Config) -> float:
    """The decision threshold tuned on validation by step 04."""
    path = Run.of(cfg).metrics
    if not path.is_file():
        raise DataError(f"{path} does not exist: run 04_evaluate for this run first")
    return float(json.loads(path.read_text())["threshold"])
