"""The benchmark suites run and record what they measure; no assertion here depends on a timing."""

import json
import subprocess
import sys

import pytest

from icdlib.bench import harness, results, run_suite
from icdlib.errors import IcdlibError


def test_summary_and_ratios_are_exact():
    assert harness.summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert harness.summary([4.0, 1.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2}
    assert harness.ratios([10.0, 9.0, 8.0], [2.0, 3.0, 1.0]) == {"median": 5.0, "min": 3.0, "max": 8.0, "n": 3}
    with pytest.raises(ValueError):
        harness.ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        harness.summary([])


def test_isolated_runs_in_a_fresh_process_and_reports_its_peak_memory():
    small = harness.isolated("icdlib.bench.harness:summary", values=[1.0, 2.0])
    assert small["result"] == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    big = harness.isolated("numpy:ones", shape=[40_000_000])  # 320 MB of float64
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 250
    with pytest.raises(IcdlibError, match="harness:nothing_here"):
        harness.isolated("icdlib.bench.harness:nothing_here")


def test_markdown_shows_medians_spread_checks_and_missing_suites(tmp_path):
    stat = {"median": 1.5, "min": 1.0, "max": 2.0, "n": 3}
    doc = {"suite": "metrics", "date": "2026-01-01 00:00 UTC", "command": "python -m icdlib bench metrics",
           "repeats": 3, "warmup": 1, "machine": {"cpu": "CPU X", "cores": 2, "memory_gb": 24.0, "gpu": "none",
                                                  "os": "Linux", "python": "3.11", "commit": "abc"},
           "versions": {"torch": "2.13.0"}, "columns": [["seconds", "wall s", 2]],
           "rows": [{"case": "c", "system": "s", "seconds": stat}],
           "comparisons": [{"what": "speed-up", "ratio": stat, "target": "≥ 2×", "met": False}],
           "checks": [{"what": "equal values", "ok": True, "detail": "0"}]}
    results.write(doc, tmp_path / "results" / "metrics.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| c | s | 1.50 (1.00–2.00) |" in text
    assert "| speed-up | 1.50 (1.00–2.00) | ≥ 2× | **no** |" in text
    assert "check: equal values: passed" in text and "CPU X, 2 cores" in text
    assert "Not measured yet: preprocess, train, predict." in text


def test_unknown_suite_or_scale_is_refused(tmp_path):
    with pytest.raises(IcdlibError, match="unknown benchmark suite"):
        run_suite("nope", out=tmp_path / "x.json")
    with pytest.raises(IcdlibError, match="no scale 'huge'"):
        run_suite("metrics", scale="huge", out=tmp_path / "x.json")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every suite at smoke scale, recorded into one temporary results folder."""
    root = tmp_path_factory.mktemp("bench")
    docs = {}
    for suite in ("metrics", "preprocess", "train", "predict"):
        docs[suite] = run_suite(suite, scale="smoke", repeats=2, warmup=1, data_dir=root / "data",
                                out=root / "results" / f"{suite}.json", markdown=root / "RESULTS.md", progress=False)
    return root, docs


def test_metrics_suite_compares_equal_values(smoke):
    _, docs = smoke
    doc = docs["metrics"]
    assert doc["checks"][0]["ok"]
    for key, value in doc["values"]["sklearn"].items():
        assert doc["values"]["icdlib"][key] == pytest.approx(value, abs=1e-6)
    assert [r["system"] for r in doc["rows"]] == ["icdlib.metrics.compute", "scikit-learn loop"]
    assert all(r["seconds"]["n"] == 2 for r in doc["rows"])


def test_preprocess_suite_gets_the_same_notes_from_both_pipelines(smoke):
    root, docs = smoke
    doc = docs["preprocess"]
    same = [c for c in doc["checks"] if c["what"].startswith("same admissions")]
    assert len(same) == 3 and all(c["ok"] for c in same)
    assert len(doc["rows"]) == 6 and all(r["peak_rss_mb"]["median"] > 50 for r in doc["rows"])
    assert (root / "preprocess.png").stat().st_size > 10_000
    assert (root / "data" / "twin-240-seed0" / "NOTEEVENTS.csv").is_file()


def test_train_suite_counts_real_tokens_of_both_inputs(smoke):
    _, docs = smoke
    ours, seed = docs["train"]["rows"]
    assert ours["covered"]["median"] == 100.0  # smoke notes fit in 8 × 512 tokens
    assert seed["covered"]["median"] < 100.0 and seed["padding"]["median"] >= 0.0
    assert ours["train_tps"]["median"] > 0 and seed["infer_tps"]["median"] > 0


def test_predict_suite_and_markdown(smoke):
    root, docs = smoke
    assert [r["notes_per_s"]["n"] for r in docs["predict"]["rows"]] == [2, 2]
    text = (root / "RESULTS.md").read_text()
    for suite in ("metrics", "preprocess", "train", "predict"):
        assert f"## {suite}" in text
    assert "Not measured yet" not in text
    assert json.loads((root / "results" / "train.json").read_text())["suite"] == "train"


def test_cli_bench_refuses_a_bad_scale():
    out = subprocess.run([sys.executable, "-m", "icdlib", "bench", "metrics", "--scale", "huge"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no scale 'huge'" in out.stderr
