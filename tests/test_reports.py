"""The executed notebooks as shared reports, and the terminal while `icdlib run` trains.

One small run 01→05 through `python -m icdlib run` (not quiet, so its terminal output is the
user's) serves every test that reads reports; the rest are small exact cases.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import jupytext
import pandas as pd
import pytest

from icdlib.run import config, provenance
from icdlib import pipeline
from icdlib.model import train
from icdlib.measure import uncertainty
from icdlib.report import compare as compare_report, error_analysis, evaluate as evaluate_report, label_stats
from icdlib.report import preprocess as preprocess_report, shared, train as train_report

ROOT = Path(__file__).resolve().parent.parent
EVAL_EVERY, MAX_STEPS = 2, 6  # three evaluations


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(run folder, the run's terminal output): 120 synthetic admissions, 6 training steps."""
    root = tmp_path_factory.mktemp("reports")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings must show if there are any
    args = ["run", "--backbone", "tiny", "--run", "r", "--output-root", str(root), "-p", "synth_admissions=120",
            "-p", f"max_steps={MAX_STEPS}", "-p", f"eval_every={EVAL_EVERY}", "-p", "mntp_steps=20",
            "-p", "mntp_compare=with"]  # the MNTP comparison arm (tiny.yaml's, not `make demo`'s)
    done = subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "r", done.stdout + done.stderr


def notebook(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "reports" / f"{name}.ipynb").read_text())


def output_texts(output: dict) -> list[str]:
    if output["output_type"] == "stream":
        return ["".join(output["text"])]
    data = output.get("data", {})
    return ["".join(v) if isinstance(v, list) else str(v) for k, v in data.items() if not k.startswith("image/")] + \
        (["".join(output.get("traceback", []))] if output["output_type"] == "error" else [])


# ---------------------------------------------------------------- clean outputs

def test_no_stderr_and_no_warning_in_any_report(small_run):
    run_dir, _ = small_run
    for name in pipeline.NOTEBOOKS:
        nb = notebook(run_dir, name)
        for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
            for output in cell.get("outputs", []):
                assert not (output["output_type"] == "stream" and output["name"] == "stderr"), \
                    f"{name} code cell {i} writes to stderr: {''.join(output['text'])[:300]}"
                assert output["output_type"] != "error", f"{name} code cell {i} failed"
                for text in output_texts(output):
                    assert "Warning" not in text, f"{name} code cell {i}: {text[:300]}"
        assert "Warning" not in (run_dir / "reports" / f"{name}.html").read_text()


def test_training_shows_one_line_per_evaluation(small_run):
    run_dir, _ = small_run
    history = pd.read_csv(run_dir / "03_train" / "history.csv")
    assert history["step"].tolist() == list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    cells = [c for c in notebook(run_dir, "03_train")["cells"] if "train.run(" in "".join(c["source"])]
    assert len(cells) == 1
    text = "".join("".join(o.get("text", "")) for o in cells[0]["outputs"])
    mntp = [line for line in text.splitlines() if line.startswith("MNTP")]
    assert mntp[0].startswith("MNTP on ") and re.fullmatch(r"MNTP step 20/20 loss \d\.\d{4} [\d.]+k tok/s ETA 0s",
                                                          mntp[-1]), mntp
    assert len(mntp) == 11  # a tenth of the stage a line; its heartbeats are for the terminal only
    lines = [line for line in text.splitlines() if not line.startswith("MNTP")]
    assert len(lines) <= len(history) + 3, lines
    steps = [int(m[1]) for m in (re.match(rf"step (\d+)/{MAX_STEPS} loss \d\.\d{{4}} val map (\d\.\d{{3}}) "
                                          r"[\d.]+k? tok/s ETA \S+$", line) for line in lines) if m]
    assert steps == history["step"].tolist(), lines
    for step, value in zip(history["step"], history["val_map"]):
        assert f"step {step}/{MAX_STEPS} " in text and f"val map {value:.3f}" in text
    assert "\r" not in text and "it/s" not in text  # no tqdm bar


def test_progress_file_has_one_line_per_evaluation(small_run):
    run_dir, _ = small_run
    history = pd.read_csv(run_dir / "03_train" / "history.csv")
    records = [json.loads(line) for line in train.progress_path(run_dir).read_text().splitlines()]
    records = [r for r in records if "heartbeat" not in r["event"]]  # only when 20 s pass between two records
    mntp = [r for r in records if r["event"].startswith("mntp")]  # the comparison arm's stage, after the fit
    assert [r["event"] for r in mntp] == ["mntp_start"] + ["mntp"] * 10 and mntp[-1]["step"] == 20
    records = [r for r in records if r not in mntp]
    # tiny.yaml's 20 warm-up steps in a 6-step run: the schedule says so, once, before training
    assert [r["event"] for r in records] == ["start", "warning"] + ["eval"] * len(history)
    assert records[1]["text"] == f"warm-up covers 100% of training (20 of {MAX_STEPS} steps): lower warmup_steps"
    assert records[0]["total"] == MAX_STEPS and records[0]["eval_every"] == EVAL_EVERY
    assert records[0]["plan"]["total_steps"] == MAX_STEPS and records[0]["plan"]["processes"] == 1
    records = [records[0], *records[2:]]
    evals = records[1:]
    assert [r["step"] for r in evals] == history["step"].tolist()
    assert [r["value"] for r in evals] == pytest.approx(history["val_map"].tolist())
    assert [r["train_loss"] for r in evals] == pytest.approx(history["train_loss"].tolist())
    assert all(r["total"] == MAX_STEPS and r["metric"] == "map" and r["tokens_per_s"] > 0 for r in evals)
    assert evals[-1]["eta_s"] == 0 and all(r["eta_s"] >= 0 for r in evals)


def test_terminal_streams_04_s_long_parts(small_run):
    """Step 04's baseline epochs and each stage of its explanation methods reach the terminal, in
    order, with the time so far and (after the first method) the time left."""
    run_dir, terminal = small_run
    lines = terminal.splitlines()
    start, end = lines.index("[icdlib] 04_evaluate ..."), lines.index("[icdlib] 05_error_analysis ...")
    mine = [line for line in lines[start + 1:end] if line.startswith("[icdlib] 04_evaluate ")]
    assert mine[0] == "[icdlib] 04_evaluate TF-IDF low-rank baseline: fitting TF-IDF on the train notes"
    epochs = [line for line in mine if " baseline: epoch " in line]
    last = re.search(r"epoch (\d+)/(\d+),", epochs[-1])
    assert last[1] == last[2]  # the last epoch always, the others at most one a baseline.SAY_EVERY_S
    assert all(re.fullmatch(r"\[icdlib\] 04_evaluate TF-IDF low-rank baseline: epoch (\d+)/\d+, train "
                                       r"loss \d+\.\d{4}", line) for line in epochs)
    stages = [line.removeprefix("[icdlib] 04_evaluate explanations: ") for line in mine if " explanations: " in line]
    from icdlib.model import explain

    assert [s.split(" (")[0] for s in stages[::3]] == list(explain.METHODS)
    assert all(re.fullmatch(r"\w+ \(\d/5\), (val|test): (scoring \d+ pairs|faithfulness); \S+ so far"
                            r"(, about \S+ left)?", s) for s in stages), stages
    assert "left" not in stages[0] and "left" in stages[-1]


def test_terminal_streams_training_lines(small_run):
    """Every training phase reaches the terminal with the time left: the model's fine-tuning, the MNTP
    stage and the comparison arm's fine-tuning after it (was: the arm's 7 lines never shown, MNTP's
    without ETA), and in between, when 20 s pass without a line, a heartbeat."""
    run_dir, terminal = small_run
    history = pd.read_csv(run_dir / "03_train" / "history.csv")
    arm = pd.read_csv(run_dir / "03_train" / "with_mntp" / "history.csv")
    lines = terminal.splitlines()
    start, end = lines.index("[icdlib] 03_train ..."), lines.index("[icdlib] 04_evaluate ...")
    at = [i for i, line in enumerate(lines) if line.startswith("[icdlib] 03_train step") and " val map " in line]
    evals = [lines[i] for i in at]
    assert evals == [line for line in lines[start:end] if line.startswith("[icdlib] 03_train step") and " val " in line]
    assert len(evals) == len(history) + len(arm)
    steps = [*zip(history["step"], history["val_map"]), *zip(arm["step"], arm["val_map"])]
    for line, (step, value) in zip(evals, steps):
        assert re.fullmatch(rf"\[icdlib\] 03_train step {step}/{MAX_STEPS} loss \d\.\d{{4}} val map {value:.3f} "
                            r"[\d.]+k? tok/s ETA \S+", line), line
    title = lines.index("[icdlib] 03_train fine-tuning again with MNTP, for comparison: 03_train/with_mntp/")
    mntp = [i for i, line in enumerate(lines) if line.startswith("[icdlib] 03_train MNTP step")]
    assert mntp and max(mntp) < title
    assert re.fullmatch(r"\[icdlib\] 03_train MNTP step 20/20 loss \d\.\d{4} [\d.]+k tok/s ETA 0s", lines[max(mntp)])
    assert all(re.fullmatch(r"\[icdlib\] 03_train MNTP step \d+/20 loss \d\.\d{4} [\d.]+k tok/s ETA \S+", lines[i])
               for i in mntp)
    assert at[len(history) - 1] < min(mntp) and at[len(history)] > title  # the model's fit, MNTP, then the arm's
    beats = [line for line in lines if line.startswith("[icdlib] 03_train step") and " val " not in line]
    assert all(re.fullmatch(rf"\[icdlib\] 03_train step \d+/{MAX_STEPS} loss \d\.\d{{4}} [\d.]+k? tok/s ETA \S+", line)
               for line in beats), beats
    begin = f"[icdlib] 03_train training {MAX_STEPS} steps from step 0, validating every {EVAL_EVERY}: 1 process × "
    assert [line for line in lines if line.startswith(begin)] != []
    assert (f"[icdlib] 03_train warning: warm-up covers 100% of training (20 of {MAX_STEPS} steps): lower "
            f"warmup_steps") in lines
    mntp = [line for line in lines[start:end] if line.startswith("[icdlib] 03_train MNTP")]  # the stage streams too
    assert mntp[0].startswith("[icdlib] 03_train MNTP on ") and mntp[-1].startswith("[icdlib] 03_train MNTP step 20/20 ")
    assert "Executing" not in terminal and "\r" not in terminal  # papermill's cell bar is for terminals only


# ---------------------------------------------------------------- header: parameters and provenance

def test_parameters_list_the_differences_and_all_keys_one_click_away(tmp_path):
    cfg = config.resolve("tiny", {"max_steps": 7, "lr": 2.0e-3, "output_root": str(tmp_path), "run": "x",
                                  "mimic_dir": str(tmp_path / "mimic")})
    shown = shared.parameters(cfg)
    head, details = shown.html.split("<details>")
    rows = re.findall(r"<tr><td style='text-align:left'>(\w+)</td>", head)
    assert rows == ["run", "output_root", "mimic_dir", "max_steps", "lr"]
    assert "<code>7</code>" in head and "<code>-1</code>" in head  # this run and the backbone's value
    assert f"5 of {len(cfg.to_dict())} parameters differ from params/tiny.yaml" in head
    assert re.findall(r"<tr><td style='text-align:left'>(\w+)</td>", details) == list(cfg.to_dict())
    assert "&lt;output_root&gt;" in shown.html and "&lt;mimic_dir&gt;" in shown.html
    assert str(tmp_path) not in shown.html + shown.text
    assert "max_steps = 7" in shown.text
    same = shared.parameters(config.resolve("tiny", {}))
    assert "all " in same.html and "<details>" in same.html and same.html.count("<table>") == 1


def test_reports_open_with_provenance_and_the_parameter_differences(small_run):
    run_dir, _ = small_run
    info = provenance.collect(run_dir)
    notes = run_dir / "01_preprocess" / "notes.parquet"
    for name in pipeline.NOTEBOOKS:
        html = (run_dir / "reports" / f"{name}.html").read_text()
        assert "<details><summary>All " in html and "parameters differ from params/tiny.yaml" in html
        assert re.search(r"<td[^>]*>max_steps</td>", html.split("<details>")[0])  # nbconvert rewrites quotes
        assert re.search(r"software</th><td[^>]*>python \d", html) and "torch " in html
        if info["commit"]:
            assert f"commit {info['commit'][:12]}" in html
        if name != "01_preprocess":  # 01 writes the data: its fingerprints close that report
            assert f"01_preprocess/notes.parquet {provenance.file_hash(notes)}" in html
    closing = (run_dir / "reports" / "01_preprocess.html").read_text()
    assert f"01_preprocess/labels.parquet</code> {provenance.file_hash(notes.parent / 'labels.parquet')}" in closing


def test_provenance_collect(small_run):
    run_dir, _ = small_run
    info = provenance.collect(run_dir)
    assert set(info) == {"commit", "dirty", "date", "versions", "device", "platform", "data"}
    assert set(info["versions"]) == {"python", "torch", "transformers", "peft", "tokenizers", "icdlib"}
    assert info["versions"]["transformers"].startswith("5.") and info["versions"]["peft"]
    assert info["device"].startswith(("cpu", "cuda", "mps"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert info["commit"] == head.stdout.strip() and isinstance(info["dirty"], bool)
    for rel in provenance.DATA_FILES:
        assert info["data"][rel] == hashlib.sha256((run_dir / rel).read_bytes()).hexdigest()[:12]
    assert provenance.collect(run_dir / "nowhere")["data"] == dict.fromkeys(provenance.DATA_FILES)
    assert json.loads(json.dumps(info)) == info
    assert str(run_dir) not in json.dumps(info)


# ---------------------------------------------------------------- figures, summary, paths, index

# each notebook's own report module (`from icdlib.report import <module> as report`)
NOTEBOOK_REPORTS = {"01_preprocess": preprocess_report, "02_label_stats": label_stats, "03_train": train_report,
                    "04_evaluate": evaluate_report, "05_error_analysis": error_analysis, "06_compare": compare_report}
FIGURES = sorted({name for module in NOTEBOOK_REPORTS.values() for name in module.__all__
                  if getattr(getattr(module, name), "__annotations__", {}).get("return") == "Figure"})


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_every_figure_is_followed_by_how_to_read_it(name):
    assert {"label_frequency", "history", "pr_curve", "calibration"} <= set(FIGURES)
    cells = jupytext.read(ROOT / "notebooks" / f"{name}.py").cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and re.search(rf"report\.({'|'.join(FIGURES)})\(", cell.source):
            after = cells[i + 1] if i + 1 < len(cells) else None
            assert after is not None and after.cell_type == "markdown", f"{name}: no sentence after {cell.source!r}"
            assert after.source.startswith("*How to read it:* ") and len(after.source.split()) >= 20, after.source
    assert cells[-1].cell_type == "code" and cells[-1].source.startswith("report.summary("), "no closing summary"


@pytest.mark.parametrize("name", NOTEBOOK_REPORTS)
def test_each_notebook_imports_its_own_report_module_and_no_other(name):
    """A notebook's `report.…` calls are its own module's (`shared` and `tables` come with it)."""
    source = (ROOT / "notebooks" / f"{name}.py").read_text()
    lines = [line for line in source.splitlines() if re.search(r"icdlib\.report|from icdlib import .*\breport\b", line)]
    own = NOTEBOOK_REPORTS[name].__name__.rsplit(".", 1)[1]
    assert lines and set(lines) == {f"from icdlib.report import {own} as report"}, lines


def test_executed_figures_are_followed_by_a_sentence(small_run):
    run_dir, _ = small_run
    figures = 0
    for name in pipeline.NOTEBOOKS:
        cells = notebook(run_dir, name)["cells"]
        for i, cell in enumerate(cells):
            outputs = cell.get("outputs", [])
            images = [j for j, o in enumerate(outputs) if "image/png" in o.get("data", {})]
            if images:
                figures += 1
                # the sentence follows the figure: in the next markdown cell, or (a figure a function draws
                # only when the run has it, as 05's explanation families) in an output after it
                after = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs[images[-1] + 1:])
                assert "How to read it" in after or (
                    cells[i + 1]["cell_type"] == "markdown" and "How to read it" in "".join(cells[i + 1]["source"])), \
                    (name, i)
    assert figures >= 15  # 02: 6, 03: 1, 04: 5, 05: 3


def test_summary_states_the_numbers_of_metrics_json(small_run):
    run_dir, _ = small_run
    m = json.loads((run_dir / "04_evaluate" / "metrics.json").read_text())
    cells = notebook(run_dir, "04_evaluate")["cells"]
    text = "".join(cells[-1]["outputs"][0]["data"]["text/markdown"])
    assert text.startswith("### What this run shows")
    t, tuned, base = m["test"], m["test_tuned"], m["baseline"]["test_tuned"]
    assert f"On the test split ({t['n_docs']} admissions, {t['n_labels']} labels)" in text
    for system in (tuned, base, m["prior"]["test_tuned"], m["with_mntp"]["test_tuned"]):  # tiny.yaml: mntp_compare with
        for key in ("auroc_micro", "auroc_macro", "auprc_micro", "map", "p_at_8", "f1_micro"):
            lo, hi = system["ci95"][key]
            assert f"{system[key]:.3f} [{lo:.3f}, {hi:.3f}]" in text, key
    assert f"micro-F1 is {tuned['f1_micro']:.3f}" in text and f"({m['threshold']:.3f})" in text
    assert m["bootstrap"]["resamples"] == 1000 and "(1,000 resamples of the test admissions)" in text
    for key in ("baseline", "prior", "with_mntp"):  # a win or a loss only where the interval excludes 0
        diffs = m["paired"][f"model - {key}"]
        signs = [uncertainty.excludes_zero(diffs[k]) for k, _ in evaluate_report.SUMMARY_METRICS]
        assert [round(diffs[k]["diff"], 9) for k, _ in evaluate_report.SUMMARY_METRICS] == \
            [round(tuned[k] - m[key]["test_tuned"][k], 9) for k, _ in evaluate_report.SUMMARY_METRICS]
        verdict = evaluate_report._verdict(diffs)
        assert verdict in text
        if all(s < 0 for s in signs) or all(s > 0 for s in signs):
            assert verdict.startswith(f"**the model is {'better' if signs[0] > 0 else 'worse'} on all 6 metrics**")
        elif not any(signs):
            assert verdict.startswith("**no clear difference on any of the 6 metrics**")
        else:
            assert ("better on " in verdict) == (1 in signs) and ("worse on " in verdict) == (-1 in signs)
            assert ("no clear difference on " in verdict) == (0 in signs)
    assert "What MNTP did: fine-tuning after the MNTP stage instead of without it changed micro-AUROC by " in text
    assert "synthetic MIMIC-III twin" in text
    history = pd.read_csv(run_dir / "03_train" / "history.csv")
    closing03 = "".join(notebook(run_dir, "03_train")["cells"][-1]["outputs"][0]["data"]["text/markdown"])
    assert f"{history['val_map'].max():.3f}" in closing03 and f"{MAX_STEPS} optimizer steps" in closing03


SIX = {"auroc_micro", "auroc_macro", "auprc_micro", "map", "p_at_8", "f1_micro"}


def metrics_of(value, ci=None):
    """A metrics dict with every summary metric at `value` (and its interval `ci`)."""
    m = {**dict.fromkeys(SIX, value), "n_docs": 10, "n_labels": 4, "threshold": 0.5}
    return {**m, "ci95": dict.fromkeys(SIX, ci)} if ci else m


def difference(lo, hi, diff=None):
    return dict.fromkeys(SIX, {"diff": (lo + hi) / 2 if diff is None else diff, "lo": lo, "hi": hi})


def run_metrics(model, others: dict, paired: dict | None):
    """metrics.json of a run with the model's and `others`' test figures, and `paired` differences."""
    out = {"test": model, "test_tuned": model, "threshold": 0.2, **{k: {"test_tuned": m} for k, m in others.items()}}
    if paired is not None:
        out.update(paired=paired, bootstrap={"resamples": 1000, "level": 0.95, "seed": 0, "split": "test",
                                             "label_set": "all", "suffix": ""})
    return out


def test_summary_says_plainly_who_wins():
    """A win or a loss only where the paired interval of the difference excludes 0."""
    lose = evaluate_report.summary(
        metrics=run_metrics(metrics_of(0.5, [0.45, 0.55]), {"baseline": metrics_of(0.75, [0.7, 0.8])},
                            {"model - baseline": difference(-0.3, -0.2)}), synthetic=False)
    assert "**the model is worse on all 6 metrics** (every 95% interval of the difference excludes 0)" in lose.markdown
    assert "micro-AUROC 0.500 [0.450, 0.550]" in lose.markdown and "micro-AUROC 0.750 [0.700, 0.800]" in lose.markdown
    assert "The TF-IDF low-rank baseline (a low-rank linear model on TF-IDF word unigrams and hashed bigrams" in lose.markdown
    assert "synthetic" not in lose.markdown and "<b>the model is worse" in lose.html
    paired = difference(0.1, 0.2)
    paired["map"] = {"diff": -0.2, "lo": -0.25, "hi": -0.15}
    paired["p_at_8"] = {"diff": 0.01, "lo": -0.02, "hi": 0.04}
    win = evaluate_report.summary(metrics=run_metrics(metrics_of(0.9), {"baseline": {**metrics_of(0.75), "map": 0.95}},
                                                      {"model - baseline": paired}))
    assert ("**the model is better on micro-AUROC, macro-AUROC, micro-AUPRC and micro-F1 and worse on MAP** (the 95% "
            "interval of the difference excludes 0); no clear difference on P@8") in win.markdown
    unclear = evaluate_report.summary(metrics=run_metrics(metrics_of(0.9), {"prior": metrics_of(0.8)},
                                                          {"model - prior": difference(-0.01, 0.2)}))
    assert ("The frequency prior (every admission scored with each code's share of the train admissions) reaches "
            "micro-AUROC 0.800") in unclear.markdown
    assert "**no clear difference on any of the 6 metrics** (every 95% interval of the difference holds 0)" in \
        unclear.markdown
    val_only = {"val": metrics_of(0.6), "val_tuned": metrics_of(0.6)}
    assert "val split" in evaluate_report.summary(metrics=val_only).markdown


def test_no_verdict_without_intervals():
    """bootstrap=0, or a metrics.json of an older icdlib: the differences are stated, no winner named."""
    text = evaluate_report.summary(metrics=run_metrics(metrics_of(0.5), {"baseline": metrics_of(0.75)}, None)).markdown
    assert ("micro-F1 0.750: no verdict can be made, as there are no intervals (bootstrap=0, or a metrics.json from "
            "an older icdlib) and a difference without one cannot be told from noise.") in text
    assert "better" not in text and "worse" not in text and "[" not in text
    assert ("There are no intervals (bootstrap=0, or a metrics.json from an older icdlib): no difference below is "
            "called a win or a loss.") in text
    arm = evaluate_report.summary(metrics=run_metrics(metrics_of(0.5), {"with_mntp": {**metrics_of(0.5), "map": 0.75}},
                                                      None)).markdown
    assert ("What MNTP did: fine-tuning after the MNTP stage instead of without it changed micro-AUROC by +0.000, MAP "
            "by +0.250 and micro-F1 by +0.000; there are no intervals (bootstrap=0, or a metrics.json from an older "
            "icdlib), so whether that is more than noise cannot be told.") in arm


@pytest.mark.parametrize("arm,sign", [("with_mntp", -1), ("without_mntp", 1)])
def test_what_mntp_did_is_with_minus_without(arm, sign):
    """The model is the arm's opposite: `model - with_mntp` is without minus with, so its sign flips."""
    paired = {f"model - {arm}": {**difference(0.0, 0.0), "map": {"diff": 0.2, "lo": 0.1, "hi": 0.3},
                                 "auroc_micro": {"diff": 0.01, "lo": -0.01, "hi": 0.03}}}
    text = evaluate_report.summary(metrics=run_metrics(metrics_of(0.5), {arm: metrics_of(0.4)}, paired)).markdown
    effect = "+0.200 [+0.100, +0.300]" if sign > 0 else "-0.200 [-0.300, -0.100]"
    micro = "+0.010 [-0.010, +0.030]" if sign > 0 else "-0.010 [-0.030, +0.010]"
    assert (f"What MNTP did: fine-tuning after the MNTP stage instead of without it changed micro-AUROC by {micro}, "
            f"MAP by {effect} and micro-F1 by +0.000 [+0.000, +0.000] (95% intervals; the interval excludes 0 for MAP; "
            "one training run per arm") in text
    lines = evaluate_report.headline_lines(run_metrics(metrics_of(0.5), {arm: metrics_of(0.4)}, paired))
    assert lines[-1].split() == ["MNTP:", "with", "−", "without", "micro-AUROC", *micro.split(" ", 1)[0:1],
                                 *micro.split(" ", 1)[1].split(), "MAP", *effect.split(), "micro-F1", "+0.000",
                                 "[+0.000,", "+0.000]"]


def test_headline_lines_name_every_system_and_the_threshold():
    m = run_metrics(metrics_of(0.8, [0.75, 0.85]),
                    {"prior": metrics_of(0.7, [0.65, 0.72]), "baseline": metrics_of(0.9, [0.88, 0.92]),
                     "with_mntp": metrics_of(0.6, [0.55, 0.65])},
                    {"model - prior": difference(0.05, 0.15), "model - baseline": difference(-0.2, -0.05),
                     "model - with_mntp": difference(0.1, 0.3)})
    assert evaluate_report.headline_lines(m) == [
        "95% bootstrap intervals; micro-F1 at each system's threshold tuned on val",
        "  icdlib without MNTP       micro-AUROC 0.800 [0.750, 0.850]  MAP 0.800 [0.750, 0.850]  "
        "micro-F1 0.800 [0.750, 0.850]",
        "  frequency prior           micro-AUROC 0.700 [0.650, 0.720]  MAP 0.700 [0.650, 0.720]  "
        "micro-F1 0.700 [0.650, 0.720]",
        "  TF-IDF low-rank baseline  micro-AUROC 0.900 [0.880, 0.920]  MAP 0.900 [0.880, 0.920]  "
        "micro-F1 0.900 [0.880, 0.920]",
        "  icdlib with MNTP          micro-AUROC 0.600 [0.550, 0.650]  MAP 0.600 [0.550, 0.650]  "
        "micro-F1 0.600 [0.550, 0.650]",
        "  MNTP: with − without      micro-AUROC -0.200 [-0.300, -0.100]  MAP -0.200 [-0.300, -0.100]  "
        "micro-F1 -0.200 [-0.300, -0.100]"]
    html = evaluate_report.systems_html(m)
    assert "<td>0.700</td><td class='ci'>[0.650, 0.720]</td>" in html and "frequency prior (test, tuned threshold)" in html
    assert "icdlib with MNTP (test, tuned threshold)" in html
    heads = re.findall(r"<th colspan='2'>([^<]*)</th>", html)  # 04's names, in 04's column order
    assert heads == ["AUROC macro", "AUROC micro", "AUPRC micro", "F1 micro", "P@8", "MAP"]
    assert "<td>icdlib without MNTP (test, tuned threshold)</td>" in html  # the model, named for its arm
    bare = evaluate_report.headline_lines(run_metrics(metrics_of(0.8), {"prior": metrics_of(0.7)}, None))
    assert bare == ["no intervals (bootstrap=0 or an older metrics.json); micro-F1 at each system's threshold tuned on val",
                    "  icdlib           micro-AUROC 0.800  MAP 0.800  micro-F1 0.800",
                    "  frequency prior  micro-AUROC 0.700  MAP 0.700  micro-F1 0.700"]


def test_interval_and_paired_tables():
    m = {**metrics_of(0.69062), "ci95": {"f1_micro": [0.661, 0.718], "map": [float("nan"), float("nan")]}}
    table = evaluate_report.interval_table({"icdlib test @tuned": m, "no intervals": metrics_of(0.5)})
    assert list(table.index) == ["icdlib test @tuned"]
    assert table.loc["icdlib test @tuned", "F1 micro"] == "0.691 [0.661, 0.718]"  # fractions, as metrics.json
    assert table.loc["icdlib test @tuned", "MAP"] == "–" and table.loc["icdlib test @tuned", "AUROC micro"] == "–"
    paired = {"model - baseline": {"f1_micro": {"diff": 0.031, "lo": 0.012, "hi": 0.05},
                                   "map": {"diff": -0.004, "lo": -0.02, "hi": 0.01}}}
    diffs = evaluate_report.paired_table(paired)
    assert list(diffs.index) == ["icdlib − TF-IDF low-rank baseline"]
    assert diffs.iloc[0]["F1 micro"] == "+0.031 [+0.012, +0.050]" and diffs.iloc[0]["MAP"] == "-0.004 [-0.020, +0.010]"
    assert diffs.iloc[0]["P@8"] == "–"
    styled = evaluate_report.paired_styled({"test": m, "paired": paired}).to_html()
    assert styled.count("font-weight: bold") == 1 and "bold: the interval excludes 0" in styled
    assert str(evaluate_report.paired_styled({"test": m})) == (
        "There are no intervals (bootstrap=0, or a metrics.json from an older icdlib): no paired differences to show.")


def test_no_absolute_path_of_the_machine_in_any_report(small_run):
    run_dir, _ = small_run
    forbidden = {str(run_dir), str(run_dir.parent), str(ROOT), sys.prefix, os.path.expanduser("~"), "/root", "/home",
                 os.path.realpath(run_dir)}
    files = [p for p in (run_dir / "reports").iterdir() if p.is_file()]
    assert {p.name for p in files} >= {f"{n}.{ext}" for n in pipeline.NOTEBOOKS for ext in ("ipynb", "html")}
    for path in files:
        text = path.read_text()
        found = [f for f in forbidden if f in text]
        assert not found, f"{path.name} shows {found}"
    assert '"output_root": "<output_root>"' in (run_dir / "reports" / "03_train.ipynb").read_text()


def test_index_links_the_five_reports_with_the_headline(small_run):
    run_dir, _ = small_run
    page = (run_dir / "reports" / "index.html").read_text()
    links = re.findall(r"<a href='([^']+\.html)'>", page)
    assert links == [f"{n}.html" for n in pipeline.NOTEBOOKS]
    assert all((run_dir / "reports" / link).is_file() for link in links)
    m = json.loads((run_dir / "04_evaluate" / "metrics.json").read_text())
    for system in (m["test_tuned"], m["baseline"]["test_tuned"]):
        for key in ("auroc_micro", "auprc_micro", "f1_micro", "map"):
            assert f"<td>{system[key]:.3f}</td>" in page, key
    assert "icdlib without MNTP (test, tuned threshold)" in page
    assert "TF-IDF low-rank baseline (test, tuned threshold)" in page
    for name, system in (("frequency prior", m["prior"]), ("icdlib with MNTP", m["with_mntp"])):
        assert f"{name} (test, tuned threshold)" in page
        assert f"<td>{system['test_tuned']['map']:.3f}</td>" in page
    for system in (m["test_tuned"], m["baseline"]["test_tuned"], m["prior"]["test_tuned"]):
        lo, hi = system["ci95"]["map"]
        assert f"<td class='ci'>[{lo:.3f}, {hi:.3f}]</td>" in page
    assert "<th colspan='2'>F1 micro</th>" in page and "What MNTP did" in page  # 04's column names
    assert "On the test split" in page
    assert "<script" not in page and "http" not in page  # self-contained: nothing fetched


def test_terminal_ends_with_every_system_and_what_mntp_did(small_run):
    run_dir, terminal = small_run
    m = json.loads((run_dir / "04_evaluate" / "metrics.json").read_text())
    lines = terminal.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("[icdlib] test (synthetic MIMIC-III twin): "))
    assert lines[start] == ("[icdlib] test (synthetic MIMIC-III twin): 95% bootstrap intervals; micro-F1 at each "
                            "system's threshold tuned on val")
    rows = lines[start + 1:]
    assert [row.split("  ")[1] for row in rows] == ["icdlib without MNTP", "frequency prior",
                                                     "TF-IDF low-rank baseline", "icdlib with MNTP",
                                                     "MNTP: with − without"]
    for row, system in zip(rows, (m["test_tuned"], m["prior"]["test_tuned"], m["baseline"]["test_tuned"],
                                  m["with_mntp"]["test_tuned"])):
        lo, hi = system["ci95"]["f1_micro"]
        assert f"micro-F1 {system['f1_micro']:.3f} [{lo:.3f}, {hi:.3f}]" in row, row
    mntp = m["paired"]["model - with_mntp"]["map"]  # the model is without MNTP: with minus without flips it
    assert f"MAP {0.0 - mntp['diff']:+.3f} [{0.0 - mntp['hi']:+.3f}, {0.0 - mntp['lo']:+.3f}]" in rows[-1]


def test_rerunning_03_alone_shows_no_stale_metrics(small_run, tmp_path):
    """`icdlib run --only 03` with another lr makes a new best/ and leaves 04's metrics.json as the
    old model's: the terminal's last line and index.html say so, and how to score the new model."""
    import shutil

    run_dir, _ = small_run
    shutil.copytree(run_dir, tmp_path / "r")
    args = ["run", "--backbone", "tiny", "--run", "r", "--output-root", str(tmp_path), "--quiet", "--only", "03",
            "-p", "synth_admissions=120", "-p", f"max_steps={MAX_STEPS}", "-p", f"eval_every={EVAL_EVERY}",
            "-p", "mntp_steps=20", "-p", "mntp_compare=with", "-p", "lr=2.0e-3"]  # MNTP (its key has no lr) is reused
    done = subprocess.run([sys.executable, "-m", "icdlib", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == (
        "[icdlib] test (synthetic MIMIC-III twin): 04_evaluate has not scored the current model (03_train/best "
        f"changed since it ran): run python -m icdlib run --backbone tiny --run r --output-root {tmp_path} --only 04 05")
    page = (tmp_path / "r" / "reports" / "index.html").read_text()
    assert not re.findall(r"<td>\d\.\d{3}</td>", page) and "On the test split" not in page
    assert ("No metrics for the current model: 04_evaluate has not scored the current model (03_train/best changed "
            "since it ran): run <code>python -m icdlib run --backbone tiny --run r --output-root &lt;output_root&gt; "
            "--only 04 05</code>") in page
    assert page.count("shows an earlier model's metrics") == 2  # the 04 and 05 reports still there


# ---------------------------------------------------------------- small exact cases

def test_progress_line_format():
    record = {"event": "eval", "step": 40, "total": 280, "train_loss": 0.07123, "metric": "map", "value": 0.3014,
              "tokens_per_s": 12_345.0, "eta_s": 190.0}
    assert train.progress_line(record) == "step 40/280 loss 0.0712 val map 0.301 12.3k tok/s ETA 3m10s"
    assert train.progress_line({**record, "value": None, "eta_s": 7300, "tokens_per_s": 950.0}) == \
        "step 40/280 loss 0.0712 val map n/a 950 tok/s ETA 2h01m"
    assert train.progress_line({"event": "start", "step": 0, "total": 280, "eval_every": 50}) == \
        "training 280 steps from step 0, validating every 50"


def test_progress_tail_prints_new_complete_records_of_this_fit(tmp_path, capsys):
    path = tmp_path / "progress.jsonl"
    now = time.time()
    old = {"event": "eval", "step": 9, "total": 9, "train_loss": 0.5, "metric": "map", "value": 0.1,
           "tokens_per_s": 10.0, "eta_s": 0.0, "started": now - 100}
    path.write_text(json.dumps(old) + "\n")
    tail = pipeline.ProgressTail("03_train", path, since=now - 1)
    assert tail.poll() == []  # an earlier fit's file
    path.unlink()  # a new fit starts a new file
    new = {**old, "step": 1, "total": 4, "started": now, "eta_s": 3.0}
    line = json.dumps(new) + "\n"
    path.write_text(line + line[:10])  # the second record is still being written
    assert tail.poll() == ["[icdlib] 03_train step 1/4 loss 0.5000 val map 0.100 10 tok/s ETA 3s"]
    with open(path, "a") as f:
        f.write(json.dumps({**new, "step": 2})[10:] + "\nnot json\n")
    assert [x.split()[3] for x in tail.poll()] == ["2/4"]
    assert tail.poll() == []
    assert "step 1/4" in capsys.readouterr().out


def test_between_validations_a_heartbeat_reaches_the_terminal_not_the_notebook(tmp_path, capsys):
    """A fit's heartbeat (`icdlib.run.progress`) is a record of the file `icdlib run` follows, with the time left,
    and no line of the notebook; so is the MNTP stage's."""
    from icdlib.model import mntp
    from icdlib.run.progress import duration

    path = tmp_path / "progress.jsonl"
    fit = train.Progress(path, total=10, initial=0, eval_every=5, show=True, master=True)
    assert capsys.readouterr().out == "training 10 steps from step 0, validating every 5\n"
    fit.step(1, 0.5, 1e-3, 1000.0)  # the heartbeat is not due yet
    fit.heartbeat.every = 0.0
    fit.step(2, 0.25, 1e-3, 1500.0)
    assert capsys.readouterr().out == ""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "heartbeat"]
    beat = records[1]
    assert (beat["step"], beat["total"], beat["train_loss"], beat["tokens_per_s"]) == (2, 10, 0.25, 1500.0)
    assert beat["eta_s"] == pytest.approx(beat["elapsed_s"] / 2 * 8)
    tail = pipeline.ProgressTail("03_train", path, since=0)
    assert tail.poll()[1] == f"[icdlib] 03_train step 2/10 loss 0.2500 1.5k tok/s ETA {duration(beat['eta_s'])}"
    capsys.readouterr()

    stage = mntp._Reporter(path, show=True)
    stage({"event": "mntp", "step": 30, "total": 300, "loss": 3.21, "tokens_per_s": 19_800.0, "eta_s": 75.0})
    stage({"event": "mntp_heartbeat", "step": 37, "total": 300, "loss": 3.1, "tokens_per_s": 19_000.0,
           "eta_s": 3725.0}, show=False)
    assert capsys.readouterr().out == "MNTP step 30/300 loss 3.2100 19.8k tok/s ETA 1m15s\n"
    assert tail.poll() == ["[icdlib] 03_train MNTP step 30/300 loss 3.2100 19.8k tok/s ETA 1m15s",
                           "[icdlib] 03_train MNTP step 37/300 loss 3.1000 19.0k tok/s ETA 1h02m"]


def test_icdlib_run_follows_the_mntp_arm_too(tmp_path, capsys):
    """The comparison arm's fine-tuning reports in its own file (the run's keeps the model's fit and
    the MNTP stage); `icdlib run` streams both."""
    from icdlib.run.runfolder import Run

    cfg = config.resolve("tiny", {"output_root": str(tmp_path), "run": "r", "mntp_compare": "with"})
    run = Run.of(cfg)
    assert pipeline.progress_files("03_train", cfg) == [run.progress, run.dir / "03_train/without_mntp/progress.jsonl",
                                                        run.dir / "03_train/with_mntp/progress.jsonl"]
    assert pipeline.progress_files("04_evaluate", cfg) == [run.evaluate_progress]  # the baseline, the explanations
    assert pipeline.progress_files("05_error_analysis", cfg) == []
    assert train.progress_path_of(Run(run.dir, "with_mntp")) == run.dir / "03_train/with_mntp/progress.jsonl"
    assert train.progress_path_of(Run(run.dir, "seed_7")) == run.progress  # further seeds: the run's file

    # one tail follows both, and what a poll finds in the two files it prints in the order it was written
    own, arm = tmp_path / "own.jsonl", tmp_path / "arm.jsonl"
    now = time.time()
    mntp = {"event": "mntp", "total": 20, "loss": 5.0, "tokens_per_s": 2000.0, "eta_s": 0.0, "started": now}
    own.write_text("".join(json.dumps({**mntp, "step": step, "time": now + step}) + "\n" for step in (10, 20)))
    arm.write_text(json.dumps({"event": "title", "text": "fine-tuning again with MNTP", "started": now + 15,
                               "time": now + 15}) + "\n")
    tail = pipeline.ProgressTail("03_train", [own, arm], since=now - 1)
    assert tail.poll() == ["[icdlib] 03_train MNTP step 10/20 loss 5.0000 2.0k tok/s ETA 0s",
                           "[icdlib] 03_train fine-tuning again with MNTP",
                           "[icdlib] 03_train MNTP step 20/20 loss 5.0000 2.0k tok/s ETA 0s"]
    assert tail.poll() == []


def test_share_paths_replaces_whole_components(tmp_path):
    cfg = config.resolve("tiny", {"output_root": str(tmp_path), "run": "r", "mimic_dir": str(tmp_path / "m")})
    text = f"{tmp_path}/r/03_train/best {tmp_path}/rr {tmp_path}/m/NOTEEVENTS.csv {ROOT}/notebooks {sys.prefix}/bin"
    assert shared.share_paths(text, cfg) == ("<run>/03_train/best <output_root>/rr <mimic_dir>/NOTEEVENTS.csv "
                                             "<repo>/notebooks <python>/bin")


# ---------------------------------------------------------------- the HTML reports read as documents

class Page(HTMLParser):
    """What a reader of an exported report sees: its tables (rows of (tag, classes, text) cells, whether
    pandas' own HTML or a Styler index made them) and, cell by cell of the notebook, whether the cell
    is Markdown or code, its shown text, and whether its output holds a figure or a table. Code inputs
    (hidden behind "Show code") and <style>/<script> are left out of the shown text."""

    def __init__(self):
        super().__init__()
        self.tables, self.cells, self.text = [], [], []
        self._divs, self._skip, self._cell, self._row, self._cell_text = [], 0, None, None, None

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "div":
            if "jp-Cell" in classes:
                self._cell = {"kind": "code" if "jp-CodeCell" in classes else "markdown", "text": [], "shows": False}
                self.cells.append(self._cell)
            # a code cell's input (a Markdown cell's text sits in an InputArea too, and is shown)
            self._divs.append("jp-InputArea" in classes and self._cell is not None and self._cell["kind"] == "code")
        if any(self._divs) or self._skip:
            return
        if tag == "table":
            self.tables.append({"classes": classes, "rows": []})
        if tag in ("img", "table") and self._cell is not None and self._cell["kind"] == "code":
            self._cell["shows"] = True
        if tag == "tr" and self.tables:
            self._row = []
            self.tables[-1]["rows"].append(self._row)
        if tag in ("td", "th") and self._row is not None:
            self._cell_text = [tag, classes, ""]
            self._row.append(self._cell_text)

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1
        if tag == "div" and self._divs:
            self._divs.pop()
        if tag in ("td", "th"):
            self._cell_text = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if any(self._divs) or self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"].append(data)
        if self._cell_text is not None:
            self._cell_text[2] += data


def read_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def table_faults(table: dict) -> list[str]:
    """What a reader should not see in one table: a number with more than 4 decimals, a label cut
    with "...", NaN, an index column (pandas' own HTML, a Styler index, or a first column 0, 1, 2, …),
    a raw column name (a snake_case heading)."""
    faults = []
    if "dataframe" in table["classes"]:
        faults.append("a DataFrame's own HTML (index column, cut labels): show it through report.table")
    body = [r for r in table["rows"] if r and all(tag == "td" or "row_heading" in c or "blank" in c for tag, c, _ in r)]
    for row in table["rows"]:
        for tag, classes, text in row:
            text = text.strip()
            if re.search(r"\d\.\d{5,}", text):
                faults.append(f"more than 4 decimals: {text!r}")
            if "..." in text or text.endswith("…"):
                faults.append(f"a cut label: {text!r}")
            if re.search(r"\bnan\b", text, re.I):
                faults.append(f"NaN: {text!r}")
            if "row_heading" in classes or ("blank" in classes and tag == "th"):
                faults.append(f"an index column (Styler): {text!r}")
            if tag == "th" and "col_heading" in classes and re.search(r"\b[a-z0-9]+_[a-z0-9_]+\b", text):
                faults.append(f"a raw column name: {text!r}")  # MIMIC's own (HADM_ID) are names users know
    first = [r[0][2].strip() for r in body]
    if len(first) >= 2 and first == [str(i) for i in range(len(first))]:
        faults.append("an index column 0, 1, 2, ...")
    return faults


def test_reports_read_as_documents(small_run):
    """Every exported report and the run's index, as a colleague sent it reads them: tables with no
    index column, no cut label, no NaN, no number with more than 4 decimals, no raw column name; every
    "How to read it" right under the figure or table it explains; the code hidden behind "Show code"
    while the executed .ipynb keeps it."""
    run_dir, _ = small_run
    reports = run_dir / "reports"
    faults = []
    for name in [*pipeline.NOTEBOOKS, "index"]:
        page = read_page(reports / f"{name}.html")
        assert page.tables, name
        faults += [f"{name}: {f}" for t in page.tables for f in table_faults(t)]
        shown = "".join(page.text)
        faults += [f"{name}: NaN in the text" for _ in re.findall(r"\bNaN\b", shown)]
        code = None
        for cell in page.cells:
            if cell["kind"] == "code":
                code = cell
            elif "How to read it" in "".join(cell["text"]) and not (code and code["shows"]):
                faults.append(f"{name}: a 'How to read it' without its figure or table: "
                              f"{''.join(cell['text']).strip()[:90]!r}")
        if name == "index":
            continue
        html = (reports / f"{name}.html").read_text()
        assert 'id="icdlib-show-code"' in html and ":not(:checked)) .jp-CodeCell .jp-Cell-inputWrapper" in html, name
        assert any(c["cell_type"] == "code" and "".join(c["source"]).strip() for c in notebook(run_dir, name)["cells"])
    assert not faults, "\n".join(faults)


def test_table_faults_are_found():
    """The rendering check itself, on pages made to fail: each fault is named, a clean table passes."""
    page = Page()
    page.feed("<table class='dataframe'><thead><tr><th></th><th>n_test</th></tr></thead><tbody>"
              "<tr><th>0</th><td>0.365419</td></tr><tr><th>1</th><td>Injection or infusion of oxazolidinone ...</td>"
              "</tr><tr><th>2</th><td>NaN</td></tr></tbody></table>")
    faults = table_faults(page.tables[0])
    assert any("own HTML" in f for f in faults) and any("4 decimals" in f for f in faults)
    assert any("cut label" in f for f in faults) and any("NaN" in f for f in faults)
    page = Page()
    page.feed("<table><tr><td>0</td><td>a</td></tr><tr><td>1</td><td>b</td></tr></table>")
    assert table_faults(page.tables[0]) == ["an index column 0, 1, 2, ..."]
    clean = shared.table(pd.DataFrame({"n_test": [1, 2], "support": [1, 2], "f1": [0.365419, float("nan")],
                                       "title": ["Injection or infusion of oxazolidinone class of antibiotics " * 2,
                                                 "x"]}))
    page = Page()
    page.feed(clean.to_html())
    assert table_faults(page.tables[0]) == []
    assert [c[2] for c in page.tables[0]["rows"][0]] == ["positives", "F1", "title"]  # n_test: support, once
    assert [c[2] for c in page.tables[0]["rows"][2]] == ["2", "–", "x"]
    assert "–: F1 is undefined" in clean.to_html()
    page = Page()
    page.feed("<div class='jp-Cell jp-CodeCell'><div class='jp-InputArea'><table><tr><td>x</td></tr></table></div>"
              "</div><div class='jp-Cell jp-MarkdownCell'><div class='jp-InputArea'><p>How to read it: ...</p></div>"
              "</div>")
    assert [c["shows"] for c in page.cells] == [False, False]  # a table in the (hidden) code is not shown
    assert "".join(page.cells[1]["text"]) == "How to read it: ..." and "x" not in "".join(page.text)


def test_explanations_are_measured_against_the_twin_s_evidence(small_run):
    """The built-in twin carries its evidence file: step 01 maps the spans into the run's text, 04
    measures every method on them, 05 shows the table, the figures and the best method's spans."""
    run_dir, _ = small_run
    from icdlib.model import explain

    spans = pd.read_parquet(run_dir / "01_preprocess/evidence.parquet")
    notes = pd.read_parquet(run_dir / "01_preprocess/notes.parquet", columns=["hadm_id", "text", "codes"])
    text, codes = dict(zip(notes["hadm_id"], notes["text"])), dict(zip(notes["hadm_id"], notes["codes"]))
    assert set(spans["kind"]) == {"evidence", "negated", "family"}
    for row in spans.sample(min(200, len(spans)), random_state=0).itertuples():
        assert text[row.hadm_id][row.begin:row.end].strip() == text[row.hadm_id][row.begin:row.end]
        assert (row.code in codes[row.hadm_id]) == (row.kind == "evidence")
    measured = json.loads((run_dir / "04_evaluate/metrics.json").read_text())["explanations"]
    assert set(measured["methods"]) == set(explain.METHODS) and measured["best_method"] in explain.METHODS
    assert 0 < measured["notes"]["test"] <= measured["explain_notes"] and measured["pairs"]["test"] >= measured["notes"]["test"]
    for method, got in measured["methods"].items():
        assert 0 <= got["token_f1"] <= 1 and got["seconds_per_note"] > 0, method
        assert got["ci95"]["token_f1"][0] <= got["token_f1"] <= got["ci95"]["token_f1"][1], method
        assert got["comprehensiveness"] is not None and got["sufficiency"] is not None, method
    page = (run_dir / "reports/05_error_analysis.html").read_text()
    assert "Do the explanations point at the evidence?" in page and "AttInGrad" in page
    assert page.count("How to read it") >= 10 and "(best on validation)" in page
