"""Runs compared side by side: `python -m icdlib compare RUN_A RUN_B …` and notebook 06_compare.

Why this module exists: two runs' metrics side by side do not say whether their difference is
more than the luck of one test sample. Here two or more runs of one benchmark, dataset, split and
label space, scored on the same test admissions, are compared with 95% bootstrap intervals for
each run's metrics and paired ones for their difference (A − B, both scored on the same resampled
admissions; `icdlib.measure.uncertainty`), then code by code (F1 and AUPRC) and where their decisions
differ (admission-code pairs one assigns and the other not). RUN_A is the reference: each other
run is compared with it. Each run is scored at the threshold its 04 tuned on validation, over the
label set its benchmark's published rows use (`evaluate.compared_suffix`).

Runs that cannot be compared are refused in one line naming the runs, what differs and the two
values (`mismatch`); a run without 04's metrics of its current model is refused with the command
that makes them. Nothing here shows note text: codes, titles, admission counts only.

Where it goes (`destination`): `<output_root>/comparisons/<A>_vs_<B>/` holding `06_compare.ipynb`,
`06_compare.html` and `comparison.json`; `<output_root>` is `--output-root` when given, else the
folder holding RUN_A. `<output_root>/index.html` lists the runs and comparisons there
(`pipeline.write_root_index`).

Data in, data out: `open_runs` (find and check the runs, reading only what the checks need),
`load` (predictions aligned on A's admissions and codes), `score` (the numbers, JSON-able),
`write` (comparison.json); `report` runs the notebook (CLI).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icdlib.run import config, record
from icdlib.evaluation import evaluate
from icdlib.measure import metrics
from icdlib.run.config import Config
from icdlib.run.errors import ConfigError, DataError
from icdlib.run.runfolder import SCORED_SPLITS, Run, atomic_write_text, shown_path

NOTEBOOK = "06_compare"
FOLDER = "comparisons"  # under the output root
RESULT = "comparison.json"
FORMAT = 1  # of comparison.json
COMPARED_KEYS = ("benchmark", "dataset", "split")  # recorded values that must agree (config.json)
NOT_SHOWN = ("run", "output_root")  # config keys that name the folder, not what the run did
HEADLINE = ("auroc_micro", "map", "f1_micro")  # the paired differences the index shows
TOP_CODES = 15


@dataclass
class Side:
    """One run as a comparison sees it."""

    name: str  # the run folder's name (with its parent's when two runs share one)
    cfg: Config  # config.json, placed in the run's folder, with the parameters 03 trained with
    metrics: dict  # 04's metrics.json, of the current 03_train/best/
    codes: list[str]  # the label space, in labels.parquet order
    truth: pd.Series  # admissions of the split scored (prediction order): hadm_id → codes (tuple)
    split: str  # the split scored: test, or val when the run has no test admissions
    ev: evaluate.Evaluation | None = None  # the predictions (`load`)

    @property
    def threshold(self) -> float:
        """The decision threshold 04 tuned on validation for micro-F1."""
        return float(self.metrics["threshold"])


@dataclass
class Comparison:
    """The runs' predictions on their shared admissions, aligned with the first run's rows and columns."""

    sides: list[Side]
    split: str
    labels: pd.DataFrame  # the first run's labels.parquet (code, kind, short_title, ..., n_train)
    hadm_id: np.ndarray
    y_true: np.ndarray  # (n_docs, n_labels)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # run name → (n_docs, n_labels)
    label_set: str = "all"  # metrics.compute's label_set: "edin" for Edin et al.'s benchmarks

    def pairs(self) -> list[tuple[Side, Side]]:
        """(A, X) for every run X after the first: what the paired tests compare."""
        return [(self.sides[0], other) for other in self.sides[1:]]


# ---------------------------------------------------------------- finding and checking the runs

def run_folder(spec: str, output_root: str = "") -> Path:
    """The run folder `spec` names, as `icdlib run` names runs: a folder (a path with a `/`, or
    starting with `.` or `~`; relative to the working directory), or a run name under `output_root`
    (default `outputs/`), else a folder of that name in the working directory. Absolute."""
    text = str(spec)
    as_path = Path(text).expanduser()
    root = Path(output_root).expanduser() if output_root else config.OUTPUTS_DIR
    named = "/" not in text and os.sep not in text and not text.startswith((".", "~"))
    places = [root / text, as_path] if named else [as_path]
    for place in places:
        if Run(place).config.is_file():
            return Path(os.path.abspath(place))
    if not named:
        what = "holds no config.json (step 01 has not run there)" if as_path.is_dir() else "does not exist"
        raise DataError(f"run folder {text} {what}")
    raise DataError(f"no run {text}: neither {shown_path(root / text)} nor {shown_path(as_path)} is a run folder "
                    f"(holding config.json); name a run under --output-root, or give its folder")


def names(folders: list[Path]) -> list[str]:
    """A short, distinct name for each run folder: its own name, or `parent/name` where two share one."""
    short = [f.name for f in folders]
    if len(set(short)) == len(short):
        return short
    return [f"{f.parent.name}/{f.name}" for f in folders]


def run_config(run_dir: Path) -> Config:
    """The run's config.json, placed in `run_dir` (a copied or moved run is where it is now)."""
    cfg = config.from_json(Run(run_dir).config)
    return dataclasses.replace(cfg, **config.located(cfg, run_dir))


def open_run(run_dir: Path, name: str, check_files: bool = True) -> Side:
    """One run, after the checks a comparison needs: 04's metrics of its current model
    (`pipeline.evaluated`, else the command that makes them), predictions of that model
    (`evaluate.check_predictions`) and, with `check_files`, every artifact of 01, 03 and 04 as
    their manifests recorded it (`record.check_upstream`, as step 05 checks them). Reads the label
    space and the scored admissions' codes, not the notes' text or the scores."""
    from icdlib import pipeline

    cfg = run_config(run_dir)
    run = Run.of(cfg)
    found, why = pipeline.evaluated(cfg)
    if not found:
        raise DataError(f"cannot compare run {name}: no metrics of its current model ({why}): run "
                        f"{pipeline.run_command(cfg, ('04',))}")
    evaluate.check_predictions(run)
    if check_files:
        trained = record.check_upstream(run, "05_error_analysis")["03_train"].get("params", {})
        cfg = dataclasses.replace(cfg, **{k: v for k, v in trained.items() if hasattr(cfg, k)})
    codes = pd.read_parquet(run.labels, columns=["code"])["code"].astype(str).tolist()
    split, hadm = scored_admissions(run)
    notes = pd.read_parquet(run.notes, columns=["hadm_id", "codes"]).set_index("hadm_id")["codes"]
    truth = notes.reindex(hadm).map(lambda c: tuple(c) if c is not None and not isinstance(c, float) else ())
    return Side(name=name, cfg=cfg, metrics=found, codes=codes, truth=truth, split=split)


def scored_admissions(run: Run) -> tuple[str, np.ndarray]:
    """The split a run's headline is scored on (test when it has test admissions, else val, as
    `evaluate.eval_split` picks) and its admissions in prediction order."""
    found = {}
    for split in SCORED_SPLITS:
        with np.load(run.predictions(split)) as z:
            found[split] = np.asarray(z["hadm_id"], dtype=np.int64)
    return ("test", found["test"]) if len(found["test"]) else ("val", found["val"])


def recorded_mismatch(name_a: str, a: Config, name_b: str, b: Config) -> str:
    """The first key of `COMPARED_KEYS` whose recorded value differs between two runs, as
    `mismatch`'s line, or ""."""
    for key in COMPARED_KEYS:
        va, vb = getattr(a, key), getattr(b, key)
        if va != vb:
            return f"cannot compare runs {name_a} and {name_b}: {key} differs ({name_a}: {va}, {name_b}: {vb})"
    return ""


def mismatch(a: Side, b: Side) -> str:
    """Why runs `a` and `b` cannot be compared, in one line, or "" when they can: a recorded key
    of `COMPARED_KEYS` differs, the label space differs (labels.parquet's codes), the split scored,
    its admissions (the predictions' hadm_ids), or their codes (notes.parquet)."""
    head = f"cannot compare runs {a.name} and {b.name}"
    differ = recorded_mismatch(a.name, a.cfg, b.name, b.cfg)
    if differ:
        return differ
    only_a, only_b = sorted(set(a.codes) - set(b.codes)), sorted(set(b.codes) - set(a.codes))
    if only_a or only_b:
        example = f"{only_a[0]} only in {a.name}" if only_a else f"{only_b[0]} only in {b.name}"
        return (f"{head}: their label spaces differ (01_preprocess/labels.parquet: {len(a.codes):,} codes in "
                f"{a.name}, {len(b.codes):,} in {b.name}; {len(only_a) + len(only_b):,} in one only, e.g. {example})")
    if a.split != b.split:
        return f"{head}: the split scored differs ({a.name}: {a.split}, {b.name}: {b.split})"
    ha, hb = a.truth.index, b.truth.index
    only_a, only_b = ha.difference(hb), hb.difference(ha)
    if len(only_a) or len(only_b):
        example = f"hadm_id {only_a[0]} only in {a.name}" if len(only_a) else f"hadm_id {only_b[0]} only in {b.name}"
        return (f"{head}: their {a.split} admissions differ (03_train/predictions_{a.split}.npz: {len(ha):,} in "
                f"{a.name}, {len(hb):,} in {b.name}; {len(only_a) + len(only_b):,} in one only, e.g. {example})")
    differ = [h for h, codes in a.truth.items() if codes != b.truth[h]]
    if differ:
        return (f"{head}: the codes of their {a.split} admissions differ (01_preprocess/notes.parquet: "
                f"{len(differ):,} of {len(ha):,} admissions, e.g. hadm_id {differ[0]})")
    return ""


def open_runs(specs, output_root: str = "", check_files: bool = True) -> list[Side]:
    """The runs `specs` names (`run_folder`), each opened (`open_run`) and checked against the
    first (`mismatch`); a DataError in one line for the first problem."""
    if isinstance(specs, str):  # papermill -p runs '[a, b]'
        import yaml

        specs = yaml.safe_load(specs) or []
    folders = [run_folder(s, output_root) for s in specs]
    if len(folders) < 2:
        raise DataError(f"compare needs at least two runs, got {len(folders)}: python -m icdlib compare RUN_A RUN_B")
    seen: dict = {}
    for i, folder in enumerate(folders):
        first = seen.setdefault(os.path.realpath(folder), i)
        if first != i:
            raise DataError(f"{specs[first]} and {specs[i]} name the same run folder ({shown_path(folder)}): "
                            f"compare two runs")
    labels = names(folders)
    recorded = [run_config(f) for f in folders]
    for name, cfg in zip(labels[1:], recorded[1:]):  # before any run is read further
        line = recorded_mismatch(labels[0], recorded[0], name, cfg)
        if line:
            raise DataError(line)
    sides = [open_run(f, n, check_files) for f, n in zip(folders, labels)]
    for other in sides[1:]:
        line = mismatch(sides[0], other)
        if line:
            raise DataError(line)
    return sides


def load(specs, output_root: str = "") -> Comparison:
    """The runs `specs` names, checked (`open_runs`), with their predictions of the split scored
    aligned on the first run's admissions and codes."""
    sides = open_runs(specs, output_root)
    for side in sides:
        side.ev = evaluate.load(side.cfg, notes_columns=["hadm_id", "split", "codes"])
    first = sides[0].ev.splits[sides[0].split]
    hadm = first.notes["hadm_id"].to_numpy()
    codes = pd.Index(sides[0].codes)
    scores = {}
    for side in sides:
        s = side.ev.splits[side.split]
        rows = pd.Index(s.notes["hadm_id"].to_numpy()).get_indexer(hadm)
        columns = pd.Index(side.codes).get_indexer(codes)
        scores[side.name] = np.asarray(s.y_score)[np.ix_(rows, columns)]
    label_set = "edin" if evaluate.compared_suffix(sides[0].ev) else "all"
    return Comparison(sides=sides, split=sides[0].split, labels=sides[0].ev.labels, hadm_id=hadm,
                      y_true=np.asarray(first.y_true), scores=scores, label_set=label_set)


# ---------------------------------------------------------------- the numbers

def code_differences(y_true, score_a, score_b, threshold_a: float, threshold_b: float,
                     labels: pd.DataFrame) -> pd.DataFrame:
    """Per code (label order): its test support, training count, and F1 (each model at its own
    threshold) and AUPRC of model A and model B, with A − B. NaN where a metric is undefined (F1
    of a code neither has nor is predicted; AUPRC of a code without a positive)."""
    a = metrics.per_label(y_true, score_a, threshold_a)
    b = metrics.per_label(y_true, score_b, threshold_b)
    table = pd.DataFrame({
        "code": labels["code"].astype(str).to_numpy(),
        "title": labels["short_title"].fillna("").astype(str).to_numpy() if "short_title" in labels else "",
        "support": a["support"].to_numpy(),
        "n_train": labels["n_train"].to_numpy(dtype=np.int64) if "n_train" in labels else 0,
    })
    for metric in ("f1", "auprc"):
        table[f"{metric}_a"], table[f"{metric}_b"] = a[metric].to_numpy(), b[metric].to_numpy()
        table[f"{metric}_diff"] = table[f"{metric}_a"] - table[f"{metric}_b"]
    return table


def largest(table: pd.DataFrame, metric: str = "f1", n: int = TOP_CODES, min_support: int = 1) -> pd.DataFrame:
    """The `n` codes of `code_differences` whose `metric` differs most between the models (either
    way; codes where it is equal are left out), among those with at least `min_support` positives;
    ties by support, then code."""
    diff = table[f"{metric}_diff"]
    rows = table[(table["support"] >= min_support) & diff.notna() & (diff != 0)].copy()
    rows["_size"] = rows[f"{metric}_diff"].abs()
    rows = rows.sort_values(["_size", "support", "code"], ascending=[False, False, True], kind="stable")
    return rows.drop(columns="_size").head(n).reset_index(drop=True)


def disagreements(y_true, score_a, score_b, threshold_a: float, threshold_b: float,
                  labels: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Where the models' decisions differ, each at its own threshold: counts of the
    admission-code pairs both assign, only A assigns and only B assigns (and how many of those are
    true codes), and the admissions with at least one such pair; and per code the same, for the
    codes with a disagreement, most disagreements first."""
    y = np.asarray(y_true) != 0
    pa, pb = np.asarray(score_a) >= threshold_a, np.asarray(score_b) >= threshold_b
    only_a, only_b = pa & ~pb, pb & ~pa
    counts = {"n_docs": int(y.shape[0]), "both": int((pa & pb).sum()),
              "only_a": int(only_a.sum()), "only_a_true": int((only_a & y).sum()),
              "only_b": int(only_b.sum()), "only_b_true": int((only_b & y).sum()),
              "admissions": int((only_a | only_b).any(axis=1).sum())}
    table = pd.DataFrame({
        "code": labels["code"].astype(str).to_numpy(),
        "title": labels["short_title"].fillna("").astype(str).to_numpy() if "short_title" in labels else "",
        "support": y.sum(axis=0),
        "only_a": only_a.sum(axis=0), "only_a_true": (only_a & y).sum(axis=0),
        "only_b": only_b.sum(axis=0), "only_b_true": (only_b & y).sum(axis=0),
    })
    table = table[(table["only_a"] + table["only_b"]) > 0].copy()
    table["_total"] = table["only_a"] + table["only_b"]
    table = table.sort_values(["_total", "support", "code"], ascending=[False, False, True], kind="stable")
    return counts, table.drop(columns="_total").reset_index(drop=True)


def verdict(d: dict, a: str, b: str) -> str:
    """`<a> better` or `<b> better` where the interval of A − B excludes 0 (every metric compared
    is higher-better), else ""."""
    from icdlib.measure import uncertainty

    sign = uncertainty.excludes_zero(d)
    return f"{a} better" if sign > 0 else f"{b} better" if sign < 0 else ""


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records"))


def score(cmp: Comparison, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Every number of the comparison, JSON-able (comparison.json): the runs, what was scored,
    each run's metrics with `level` bootstrap intervals (resampling the admissions), and for each
    pair (A, X) the paired differences A − X with their intervals and verdicts, the codes whose F1
    and AUPRC differ most, and the disagreements."""
    from icdlib.report import shared
    from icdlib.measure import uncertainty

    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    y = cmp.y_true
    runs = []
    for side in cmp.sides:
        info = side.metrics.get("provenance") or {}
        runs.append({"name": side.name, "backbone": side.cfg.backbone,
                     "data": shared.recorded_data_name(side.cfg.to_dict()), "benchmark": side.cfg.benchmark,
                     "dataset": side.cfg.dataset, "split": side.cfg.split, "threshold": side.threshold,
                     "commit": info.get("commit"), "evaluated": info.get("date")})
    out = {"format": FORMAT, "runs": runs,
           "scored": {"split": cmp.split, "n_docs": int(y.shape[0]), "n_labels": int(y.shape[1]),
                      "label_set": cmp.label_set, "label_set_text": metrics.LABEL_SETS[cmp.label_set],
                      "resamples": resamples, "seed": seed, "level": level},
           "metrics": {}, "paired": [], "per_code": [], "disagreement": []}
    for side in cmp.sides:
        s = cmp.scores[side.name]
        point = metrics.compute(y, s, side.threshold, label_set=cmp.label_set)
        spans = uncertainty.intervals(y, s, side.threshold, n_resamples=resamples, seed=seed, level=level,
                                      label_set=cmp.label_set)
        out["metrics"][side.name] = {m: {"value": shared.number(point.get(m)), "lo": shared.number(lo),
                                         "hi": shared.number(hi)} for m, (lo, hi) in spans.items()}
    for a, b in cmp.pairs():
        sa, sb = cmp.scores[a.name], cmp.scores[b.name]
        diffs = uncertainty.paired(y, sa, sb, a.threshold, b.threshold, n_resamples=resamples, seed=seed,
                                   level=level, label_set=cmp.label_set)
        out["paired"].append({"a": a.name, "b": b.name, "metrics": {
            m: {"diff": shared.number(d["diff"]), "lo": shared.number(d["lo"]), "hi": shared.number(d["hi"]),
                "verdict": verdict(d, a.name, b.name)} for m, d in diffs.items()}})
        table = code_differences(y, sa, sb, a.threshold, b.threshold, cmp.labels)
        out["per_code"].append({"a": a.name, "b": b.name, "f1": _records(largest(table, "f1")),
                                "auprc": _records(largest(table, "auprc"))})
        counts, codes = disagreements(y, sa, sb, a.threshold, b.threshold, cmp.labels)
        out["disagreement"].append({"a": a.name, "b": b.name, **counts, "codes": _records(codes.head(TOP_CODES))})
    out["summary"] = summary_lines(out)
    return out


def write(result: dict, folder: Path) -> Path:
    """`<folder>/comparison.json`, written atomically."""
    return atomic_write_text(Path(folder) / RESULT, json.dumps(result, indent=2) + "\n")


# ---------------------------------------------------------------- where it goes, and the report

def destination(sides: list[Side], out: str = "", output_root: str = "") -> Path:
    """The comparison's folder: `out` when given, else `<output_root>/comparisons/<A>_vs_<B>`
    (`output_root`: the folder holding the first run unless given). Absolute."""
    if out:
        return Path(os.path.abspath(Path(out).expanduser()))
    root = Path(output_root).expanduser() if output_root else sides[0].cfg.run_dir.parent
    name = "_vs_".join(s.name.replace("/", "-") for s in sides)
    return Path(os.path.abspath(root / FOLDER / name))


def placeholders(sides: list[Side], folder: Path) -> list[tuple[str, str]]:
    """(path, placeholder) pairs for the report (`report.shared.share_paths`): each run's own
    (`report.shared.path_placeholders`: `<output_root>`, `<mimic_dir>`, `<repo>`, `~`, ...), a run folder
    as `<output_root>/<name>`, and the comparison folder as `<comparison>` when it lies elsewhere."""
    from icdlib.report import shared

    pairs = {}
    for side in sides:
        for path, placeholder in shared.path_placeholders(side.cfg):
            if placeholder != "<run>":  # several runs: each is <output_root>/<its name>
                pairs.setdefault(path, placeholder)
    if not any(str(folder).startswith(p + os.sep) for p in pairs):
        pairs.setdefault(str(folder), "<comparison>")
    return sorted(pairs.items(), key=lambda p: -len(p[0]))


def runs_table(cmp: Comparison) -> pd.DataFrame:
    """The runs compared: backbone, data, benchmark, split, the threshold 04 tuned, and the commit
    and date of 04."""
    from icdlib.report import shared

    rows = {}
    for side in cmp.sides:
        info = side.metrics.get("provenance") or {}
        rows[side.name] = {"backbone": side.cfg.backbone, "data": shared.recorded_data_name(side.cfg.to_dict()),
                           "benchmark": side.cfg.benchmark, "split": side.cfg.split,
                           "tuned threshold": f"{side.threshold:.3f}",
                           "04 commit": (info.get("commit") or "unknown")[:12],
                           "04 date": str(info.get("date", ""))[:10]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "run"
    return table


def differences(cmp: Comparison) -> pd.DataFrame:
    """The parameters whose values differ between the runs (config.json, with those 03 trained
    with), one row each, one column a run; paths shown as placeholders, as every report shows them."""
    from icdlib.report import shared

    shown = {s.name: {k: shared.shown_value(k, v, s.cfg) for k, v in s.cfg.to_dict().items() if k not in NOT_SHOWN}
             for s in cmp.sides}
    keys = [k for k in shown[cmp.sides[0].name] if len({shown[n].get(k) for n in shown}) > 1]
    table = pd.DataFrame({n: [shown[n].get(k, "") for k in keys] for n in shown},
                         index=pd.Index(keys, name="parameter"))
    table.attrs.update(names={n: n for n in shown}, empty="No parameter differs between the runs.")  # report.table's
    return table


def metric_name(key: str) -> str:
    """A metric's name in the tables: the 04 table's (`tables.METRIC_NAMES`), else its key."""
    from icdlib.report.tables import METRIC_NAMES

    return METRIC_NAMES.get(key, key)


def _fraction(value, signed: bool = False) -> str:
    """A metric or a difference of two as the tables show it: a fraction with 3 decimals (as 04's)."""
    return "–" if value is None else f"{value:{'+' if signed else ''}.3f}"


def metrics_table(result: dict) -> pd.DataFrame:
    """Each run's metrics (fractions, F1 at its tuned threshold) with their bootstrap interval,
    `value [lo, hi]`; one row a metric, one column a run."""
    columns = {}
    for run, values in result["metrics"].items():
        columns[run] = {metric_name(m): _fraction(v["value"]) + ("" if v["lo"] is None else
                                                               f" [{_fraction(v['lo'])}, {_fraction(v['hi'])}]")
                        for m, v in values.items()}
    table = pd.DataFrame(columns)
    table.index.name = "metric"
    table.attrs["names"] = {run: run for run in columns}  # report.table: a run's name as it is
    return table


def _names(result: dict, key: str) -> tuple[str, str]:
    """What the tables call model A and model B: the runs' names with one pair, else A and B."""
    pairs = result[key]
    return (pairs[0]["a"], pairs[0]["b"]) if len(pairs) == 1 else ("A", "B")


def paired_table(result: dict) -> pd.DataFrame:
    """The paired differences A − B (in the metric's unit) with their interval and the verdict (only
    where the interval excludes 0); one row a pair and metric."""
    rows = []
    for pair in result["paired"]:
        for m, d in pair["metrics"].items():
            rows.append({"pair": f"{pair['a']} − {pair['b']}", "metric": metric_name(m),
                         "difference": _fraction(d["diff"], signed=True),
                         "95% interval": "–" if d["lo"] is None else
                         f"[{_fraction(d['lo'], True)}, {_fraction(d['hi'], True)}]",
                         "verdict": d["verdict"] or ("– (the interval includes 0)" if d["lo"] is not None else
                                                     "– (undefined on some resample)")})
    return pd.DataFrame(rows).set_index(["pair", "metric"])


def code_table(result: dict, metric: str = "f1") -> pd.DataFrame:
    """The codes whose `metric` (f1 or auprc) differs most between A and each other run, with
    their support (positives in the split) and training admissions."""
    a_name, b_name = _names(result, "per_code")
    frames = []
    for pair in result["per_code"]:
        rows = pd.DataFrame(pair[metric])
        if rows.empty:
            continue
        frames.append(pd.DataFrame({
            "pair": f"{pair['a']} − {pair['b']}", "code": rows["code"], "title": rows["title"],
            "support": rows["support"], "n_train": rows["n_train"], f"{metric} {a_name}": rows[f"{metric}_a"],
            f"{metric} {b_name}": rows[f"{metric}_b"], "A − B": rows[f"{metric}_diff"]}))
    return _by_code(frames, f"No code's {metric.upper()} differs between the runs.")


def _by_code(frames: list[pd.DataFrame], empty: str) -> pd.DataFrame:
    """The pairs' code tables in one, indexed by pair and code; without any, an empty table saying `empty`."""
    table = pd.concat(frames, ignore_index=True).set_index(["pair", "code"]) if frames else pd.DataFrame()
    table.attrs["empty"] = empty  # report.table's line for a table without a row
    return table


def code_figure(cmp: Comparison):
    """`icdlib.report.compare.code_differences` of every pair (A, X)."""
    from icdlib.report.compare import code_differences as figure

    tables = {(a.name, b.name): code_differences(cmp.y_true, cmp.scores[a.name], cmp.scores[b.name], a.threshold,
                                                 b.threshold, cmp.labels) for a, b in cmp.pairs()}
    return figure(tables)


def disagreement_counts(result: dict) -> pd.DataFrame:
    """Per pair: the admission-code pairs both models assign, only A, only B (and how many of
    those are true codes), and the admissions with any disagreement."""
    a_name, b_name = _names(result, "disagreement")
    rows = {}
    for d in result["disagreement"]:
        rows[f"{d['a']} − {d['b']}"] = {
            "admissions": d["n_docs"], "admissions with a disagreement": d["admissions"],
            "pairs both assign": d["both"],
            f"only {a_name} assigns (true / all)": f"{d['only_a_true']:,} / {d['only_a']:,}",
            f"only {b_name} assigns (true / all)": f"{d['only_b_true']:,} / {d['only_b']:,}"}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "pair"
    return table


def disagreement_codes(result: dict) -> pd.DataFrame:
    """The codes with the most disagreements, per pair: how often only A or only B assigns them,
    and how often that one was right (true / all)."""
    a_name, b_name = _names(result, "disagreement")
    frames = []
    for d in result["disagreement"]:
        rows = pd.DataFrame(d["codes"])
        if rows.empty:
            continue
        frames.append(pd.DataFrame({
            "pair": f"{d['a']} − {d['b']}", "code": rows["code"], "title": rows["title"], "support": rows["support"],
            f"only {a_name} (true / all)": rows["only_a_true"].astype(str) + " / " + rows["only_a"].astype(str),
            f"only {b_name} (true / all)": rows["only_b_true"].astype(str) + " / " + rows["only_b"].astype(str)}))
    return _by_code(frames, "The models assign the same codes to every admission.")


def scored(result: dict):
    """What was scored, in one sentence (`report.shared.Shown`): the split's shared admissions, the codes
    and their label set, the resamples."""
    from icdlib.report import shared

    s = result["scored"]
    text = (f"Scored: the {s['n_docs']:,} {s['split']} admissions the runs share, over {s['n_labels']:,} codes "
            f"({s['label_set_text']}); each run at the threshold its 04 tuned on validation; {100 * s['level']:g}% "
            f"bootstrap intervals from {s['resamples']:,} resamples of the admissions (seed {s['seed']}).")
    return shared.Shown(text, markdown=text)


def verdict_line(result: dict, pair: dict) -> str:
    """One pair's result in a sentence: on how many metrics each run is better (interval of the
    difference excluding 0), and on how many the data cannot tell them apart."""
    a, b = pair["a"], pair["b"]
    verdicts = [d["verdict"] for d in pair["metrics"].values()]
    n = len(verdicts)
    wins_a, wins_b = verdicts.count(f"{a} better"), verdicts.count(f"{b} better")
    s = result["scored"]
    return (f"{a} − {b} on {s['n_docs']:,} {s['split']} admissions: {a} better on {wins_a} of {n} metrics, {b} "
            f"better on {wins_b}, no clear difference on {n - wins_a - wins_b} ({100 * s['level']:g}% paired "
            f"bootstrap intervals of the difference, {s['resamples']:,} resamples)")


def summary_lines(result: dict) -> list[str]:
    """What the comparison shows, a few sentences a pair: the verdict line, the headline
    differences with their intervals, and where the decisions differ (comparison.json's `summary`,
    shown by the report and the output root's index)."""
    lines = []
    for pair, d in zip(result["paired"], result["disagreement"]):
        lines.append(verdict_line(result, pair) + ".")
        heads = [f"{metric_name(m)} {_fraction(pair['metrics'][m]['diff'], True)} "
                 f"[{_fraction(pair['metrics'][m]['lo'], True)}, {_fraction(pair['metrics'][m]['hi'], True)}]"
                 for m in HEADLINE if m in pair["metrics"] and pair["metrics"][m]["lo"] is not None]
        if heads:
            lines.append(f"{pair['a']} − {pair['b']}: " + "; ".join(heads) + ".")
        lines.append(f"Their decisions differ on {d['only_a'] + d['only_b']:,} admission-code pairs in "
                     f"{d['admissions']:,} of {d['n_docs']:,} admissions: {d['only_a']:,} only {pair['a']} assigns "
                     f"({d['only_a_true']:,} of them true codes), {d['only_b']:,} only {pair['b']} assigns "
                     f"({d['only_b_true']:,} true).")
    return lines


def summary(result: dict):
    """`summary_lines` as the report's closing block (`report.shared.Shown`)."""
    from icdlib.report import shared

    lines = result.get("summary") or summary_lines(result)
    markdown = "### What the comparison shows\n\n" + "\n\n".join(lines)
    return shared.Shown("\n".join(lines), html=shared.markdown_html(markdown), markdown=markdown)


# ---------------------------------------------------------------- the report, from the command line

def command(sides: list[Side], folder: Path) -> str:
    """The `python -m icdlib compare` line that makes this comparison again."""
    import shlex

    return ("python -m icdlib compare " + " ".join(shlex.quote(str(s.cfg.run_dir)) for s in sides)
            + f" --out {shlex.quote(str(folder))}")


def report(specs, output_root: str = "", out: str = "", resamples: int = 1000, seed: int = 0,
           progress: bool = True) -> tuple[Path, Path, dict]:
    """`python -m icdlib compare`: check the runs (the first problem in one line, before a kernel
    starts), run notebook 06_compare into the comparison's folder (`destination`), export it as
    HTML, and rewrite the output root's index.html (`pipeline.write_root_index`). Returns the
    HTML's path, the index's and comparison.json's content."""
    from icdlib import pipeline

    sides = open_runs(specs, output_root, check_files=False)
    folder = destination(sides, out, output_root)
    parameters = {"runs": [str(s.cfg.run_dir) for s in sides], "output_root": "", "out": str(folder),
                  "resamples": resamples, "seed": seed}
    again = command(sides, folder)
    notebook = pipeline.run_notebook(NOTEBOOK, folder, parameters, placeholders(sides, folder), progress=progress,
                                     stopped=lambda: f"interrupted in {NOTEBOOK}; run it again with: {again}",
                                     again=lambda: f"Run it again with: {again}")
    html = pipeline.to_html(notebook)
    root = Path(os.path.abspath(Path(output_root).expanduser())) if output_root else sides[0].cfg.run_dir.parent
    index = pipeline.write_root_index(root)
    return html, index, json.loads((folder / RESULT).read_text())
