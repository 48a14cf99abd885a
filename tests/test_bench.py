"""The benchmark suites run and record what they measure; no assertion here depends on a timing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icdlib.bench import harness, results, run_suite
from icdlib.run.errors import IcdlibError


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
    assert "Not measured yet: preprocess, train, predict, twin." in text


def test_unknown_suite_or_scale_is_refused(tmp_path):
    with pytest.raises(IcdlibError, match="unknown benchmark suite"):
        run_suite("nope", out=tmp_path / "x.json")
    with pytest.raises(IcdlibError, match="no scale 'huge'"):
        run_suite("metrics", scale="huge", out=tmp_path / "x.json")


SMOKE_REPEATS = 1  # every figure once: make test checks what is recorded, never a timing


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every suite at smoke scale, once each (the timings are not looked at), recorded into one temporary folder."""
    root = tmp_path_factory.mktemp("bench")
    docs = {}
    for suite in ("metrics", "preprocess", "train", "predict", "twin"):
        docs[suite] = run_suite(suite, scale="smoke", repeats=SMOKE_REPEATS, warmup=0, data_dir=root / "data",
                                out=root / "results" / f"{suite}.json", markdown=root / "RESULTS.md", progress=False)
    return root, docs


def test_metrics_suite_compares_equal_values(smoke):
    _, docs = smoke
    doc = docs["metrics"]
    assert all(c["ok"] for c in doc["checks"]) and len(doc["checks"]) == 2
    for key, value in doc["values"]["sklearn"].items():
        assert doc["values"]["icdlib"][key] == pytest.approx(value, abs=1e-6)
    assert [r["system"] for r in doc["rows"]] == [
        "icdlib.measure.metrics.compute", "scikit-learn loop", "icdlib.measure.uncertainty.intervals",
        "icdlib.measure.uncertainty.paired (two models)", "metrics.compute on repeated rows (timed on 20, × 50)"]
    assert all(r["seconds"]["n"] == SMOKE_REPEATS for r in doc["rows"])


def test_metrics_suite_bootstrap_part_checks_the_vectorised_values_against_compute():
    from icdlib.measure import metrics, uncertainty
    from icdlib.bench import metrics as suite

    y, s = suite.make_data(40, 30, codes_per_doc=4.0)
    part = suite._bootstrap(y, s, "smoke", repeats=1, progress=False)
    assert [r["case"] for r in part["rows"]] == ["1,000 resamples of 40 × 30"] * 3
    (same,) = part["checks"]  # the under-a-minute check is for the full scale only
    assert same["ok"] and same["what"].startswith("bootstrap values equal compute on the repeated rows")
    assert set(part["intervals"]) == set(uncertainty.INTERVAL_METRICS)
    assert part["intervals"] == {k: list(v) for k, v in uncertainty.intervals(y, s).items()}
    reference = suite.repeated_rows_reference(y, s, np.ones((1, 40), np.int64))
    assert reference["map"][0] == metrics.compute(y, s)["map"]


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
    ours, seed, mntp = docs["train"]["rows"]
    assert ours["covered"]["median"] == 100.0  # smoke notes fit in 8 × 512 tokens
    assert mntp["system"].startswith("icdlib MNTP stage") and mntp["train_tps"]["median"] > 0
    assert seed["covered"]["median"] < 100.0 and seed["padding"]["median"] >= 0.0
    assert ours["train_tps"]["median"] > 0 and seed["infer_tps"]["median"] > 0


def test_predict_suite_and_markdown(smoke):
    root, docs = smoke
    assert [r["notes_per_s"]["n"] for r in docs["predict"]["rows"]] == [SMOKE_REPEATS] * 2
    assert [r["evidence_notes_per_s"]["n"] for r in docs["predict"]["rows"]] == [SMOKE_REPEATS] * 2
    assert all(0 < r["evidence_notes_per_s"]["median"] < r["notes_per_s"]["median"] for r in docs["predict"]["rows"])
    text = (root / "RESULTS.md").read_text()
    for suite in ("metrics", "preprocess", "train", "predict", "twin"):
        assert f"## {suite}" in text
    assert "Not measured yet" not in text
    assert json.loads((root / "results" / "train.json").read_text())["suite"] == "train"
    assert json.loads((root / "results" / "preprocess.json").read_text())["figures"] == ["../preprocess.png"]
    assert "![preprocess](preprocess.png)" in text and (root / "preprocess.png").exists()


def test_twin_suite_reads_the_evidence_of_both_note_lengths(smoke):
    """At smoke scale the suite reads two small twins (no training); its checks hold on them."""
    doc = smoke[1]["twin"]
    assert doc["rows"] == [] and len(doc["checks"]) == 4 and all(c["ok"] for c in doc["checks"]), doc["checks"]
    short, full = doc["text"].values()
    assert short["exact_title"] <= 0.2 and full["exact_title"] <= 0.2
    assert "first_mention_past_4096" in full and "first_mention_past_4096" not in short
    assert full["words_median"] > 3 * short["words_median"]
    assert all(s["unknown_not_obsolete"] == [] for s in (short, full))


def test_cli_bench_refuses_a_bad_scale():
    out = subprocess.run([sys.executable, "-m", "icdlib", "bench", "metrics", "--scale", "huge"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no scale 'huge'" in out.stderr


# ---------------------------------------------------------------- any clone, any folder

ROOT = Path(__file__).resolve().parent.parent


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from strings(value)


def test_recorded_results_hold_no_machine_path():
    recorded = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert len(recorded) >= 6
    for path in recorded:
        found = [s for s in strings(json.loads(path.read_text())) if s.startswith("/") or str(ROOT) in s]
        assert found == [], f"{path.name} holds machine paths: {found}"


def test_recorded_results_render_in_another_folder(tmp_path):
    """What broke `bench` in every other clone: rendering the recorded preprocess figure's absolute path."""
    folder = tmp_path / "elsewhere" / "results"
    folder.mkdir(parents=True)
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        shutil.copy(path, folder / path.name)
    results.write(json.loads((folder / "predict.json").read_text()), folder / "predict.json", folder.parent / "R.md")
    text = (folder.parent / "R.md").read_text()
    assert "![preprocess](preprocess.png)" in text
    assert text.count("\n## ") == len(list(folder.glob("*.json")))


def test_where_a_run_writes_and_smoke_never_writes_the_record(tmp_path, monkeypatch):
    bench_dir = tmp_path / "benchmarks"
    (bench_dir / "results").mkdir(parents=True)
    recorded = {bench_dir / "results" / "predict.json": b'{"suite": "predict"}\n', bench_dir / "RESULTS.md": b"# r\n"}
    for path, data in recorded.items():
        path.write_bytes(data)
    monkeypatch.setattr(results, "BENCH_DIR", bench_dir)
    monkeypatch.setattr(results, "RESULTS_DIR", bench_dir / "results")
    monkeypatch.setattr(results, "MARKDOWN", bench_dir / "RESULTS.md")
    smoke = tmp_path / "outputs" / "bench-smoke"
    monkeypatch.setattr(results, "SMOKE_DIR", smoke, raising=False)
    for where in ({"out": bench_dir / "results" / "predict.json"}, {"out": bench_dir / "results" / "other.json"},
                  {"out": tmp_path / "p.json", "markdown": bench_dir / "RESULTS.md"}):
        with pytest.raises(IcdlibError, match="--scale smoke never writes over or beside the recorded"):
            run_suite("predict", scale="smoke", repeats=1, warmup=0, data_dir=tmp_path / "data", progress=False,
                      **where)
    assert {path: path.read_bytes() for path in recorded} == recorded
    from icdlib.bench import destinations

    assert destinations("predict", "full") == (bench_dir / "results" / "predict.json", bench_dir / "RESULTS.md")
    assert destinations("predict", "smoke") == (smoke / "results" / "predict.json", smoke / "RESULTS.md")
    assert destinations("predict", "full", tmp_path / "x" / "p.json") == (tmp_path / "x" / "p.json",
                                                                          tmp_path / "x" / "RESULTS.md")


def test_bench_smoke_in_a_fresh_clone_from_another_folder_changes_no_tracked_file(tmp_path):
    """`git clone` of this repository, brought to its working tree (what is under test may not be committed
    yet), then `bench predict --scale smoke` with the clone's code, run from a folder outside the clone."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, clone / name)
    tracked = subprocess.run(["git", "-C", str(clone), "ls-files", "-z"], capture_output=True, text=True,
                             check=True).stdout.split("\0")
    def state():
        status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True,
                                check=True).stdout
        return status, {n: (clone / n).read_bytes() for n in tracked if n and (clone / n).is_file()}

    before = state()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(clone), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "icdlib", "bench", "predict", "--scale", "smoke", "--repeats", "1",
                          "--warmup", "0", "--quiet"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("[icdlib bench] results: outputs/bench-smoke/results/predict.json, outputs/bench-smoke/RESULTS.md "
            "(smoke scale: the recorded figures in benchmarks/results/ are untouched)") in run.stdout
    assert json.loads((clone / "outputs" / "bench-smoke" / "results" / "predict.json").read_text())["scale"] == "smoke"
    assert "## predict" in (clone / "outputs" / "bench-smoke" / "RESULTS.md").read_text()
    after = state()
    assert after[0] == before[0]
    assert [n for n in before[1] if after[1].get(n) != before[1][n]] == []
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- gpu suite

def test_gpu_suite_smoke_runs_the_toy_shapes_and_records_what_it_measured(tmp_path):
    import torch

    from icdlib.run import config
    from icdlib.bench import gpu

    doc = run_suite("gpu", scale="smoke", repeats=1, warmup=0, data_dir=tmp_path / "data",
                    out=tmp_path / "results" / "gpu.json", markdown=tmp_path / "RESULTS.md", progress=False)
    cuda = torch.cuda.is_available()
    mntp = [r for r in doc["rows"] if r.get("stage") == "MNTP"]
    tuned = [r for r in doc["rows"] if r.get("stage") == "fine-tune"]
    skipped = [r for r in doc["rows"] if "skipped" in r]
    bf16 = [r for r in tuned if r["weights"] == "bf16"]
    # per backbone: bf16 checkpointing on/off × peft input cast on/off, MNTP on/off, 4-bit on/off (or skipped)
    assert len(doc["rows"]) == (16 if cuda else 14) and len(bf16) == 8 and len(mntp) == 4
    assert not any("out_of_memory" in r for r in doc["rows"])
    for name, params in (("Llama-3-8B (toy shape)", "llama3"), ("Mistral-7B (toy shape)", "mistral")):
        ours = [r for r in bf16 if r["case"].startswith(name)]
        assert sorted((r["checkpointing"], r["peft_input_cast"]) for r in ours) == [
            (False, False), (False, True), (True, False), (True, True)]
        assert ours[0]["checkpointing"] and ours[0]["peft_input_cast"]  # first: checkpointing on, peft as it comes
        assert sorted(r["checkpointing"] for r in mntp if r["case"].startswith(name)) == [False, True]
        batch = doc["batch"][name]
        assert batch["batch_size"] == config.resolve(params).batch_size == 2  # the params file's, not one note
        assert batch["grad_checkpointing"] and batch["params_file"] == f"params/{params}.yaml"
        assert (batch["max_segments"], batch["segment_length"]) == (2, 32)  # the smoke scale shrinks only these
        assert (batch["mntp_batch_size"], batch["mntp_length"], batch["score_notes_per_batch"]) == (2, 32, 4)
    for row in tuned:
        assert row["notes_per_step"] == 2 and row["tokens_per_step"] == 2 * 2 * 32  # 2 notes × 2 segments × 32
        assert row["checkpointing_as_asked"] and row["train_tps"]["median"] > 0 and row["loss"] > 0
        assert row["lora_params"] == 2 * 16 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 256))  # r=16, 7 projections
        assert ("score_nps" in row) == row["checkpointing"]  # scoring once per cast, on the checkpointing-on rows
        # exact model FLOPs of the toy shape: N = 122,880, N_lora = 45,056, L·s·d = 2·32·64, head 2·90,368
        assert row["train_flops_per_token"] == 4 * 122_880 + 6 * 45_056 + 12 * 2 * 32 * 64 + 3 * 180_736 == 1_353_216
        assert row["score_flops_per_token"] == 2 * 122_880 + 2 * 45_056 + 4 * 2 * 32 * 64 + 180_736 == 532_992
    assert all(r["lora_dtypes"] == ["float32"] for r in bf16)  # peft upcasts LoRA: why its input cast exists
    assert all(r["train_tps"]["median"] > 0 and r["loss"] > 0 and r["checkpointing_as_asked"] for r in mntp)
    for shape in gpu.SMOKE_SHAPES.values():
        assert gpu.all_params(shape) == 1000 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256) + 5 * 64
    assert bf16[0]["backbone_gb"]["median"] * 1e9 >= gpu.all_params(gpu.SMOKE_SHAPES["Llama-3-8B (toy shape)"]) * 2
    assert all(c["ok"] for c in doc["checks"]), doc["checks"]

    matmul = doc["measured_matmul"]
    assert (matmul["n"], matmul["tflops"]["n"], matmul["dtype"]) == (256, 3, "bfloat16")
    assert matmul["used_for_mfu"] == matmul["tflops"]["median"] > 0
    for row in tuned:  # the measured-peak MFU divides by the measured matmul rate, nothing else
        for rate, flops, mfu in (("train_tps", "train_flops_per_token", "train_mfu_measured"),
                                 ("score_nps", "score_flops_per_token", "score_mfu_measured")):
            if rate in row:
                tokens = row[rate]["median"] * (1 if rate == "train_tps" else 2 * 32)
                assert row[mfu]["median"] == pytest.approx(100 * tokens * row[flops] / (matmul["used_for_mfu"] * 1e12))
    whats = [c["what"] for c in doc["comparisons"]]
    assert "Llama-3-8B (toy shape) bf16: training tokens/s, peft input cast off / on (checkpointing on)" in whats
    assert "Llama-3-8B (toy shape) bf16: training tokens/s, checkpointing off / on" in whats
    assert "Mistral-7B (toy shape) MNTP: tokens/s, checkpointing off / on" in whats
    if not cuda:
        assert len(skipped) == 2 and all("needs a CUDA GPU" in r["skipped"] for r in skipped)
        assert all(r[k] is None for r in tuned for k in ("train_mfu", "train_peak_gb", "train_reserved_gb"))
        assert all(r["score_mfu"] is None and r["score_reserved_gb"] is None for r in tuned if "score_nps" in r)
        assert all(r["train_peak_gb"] is None and r["train_reserved_gb"] is None for r in mntp)
        assert doc["peak_bf16_tflops"] is None and matmul["timer"] == "wall clock"
    else:
        assert all(r["train_reserved_gb"]["median"] >= r["train_peak_gb"]["median"] > 0 for r in tuned + mntp)
        assert matmul["timer"] == "CUDA events"
    one = doc["one_backbone"]["Llama-3-8B (toy shape)"]["bf16"]
    assert one["param_bytes"] == round(bf16[0]["backbone_gb"]["median"] * 1e9)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## gpu" in text and "bf16 weights, LoRA" in text and "GPU figures" not in text
    assert "train peak reserved GB" in text and "train MFU % measured matmul" in text
    assert "Measured bf16 matmul peak:" in text and "peft input cast off" in text
    if not cuda:
        assert "4-bit rows skipped: load_in=4bit needs a CUDA GPU" in text and "Datasheet MFU left blank" in text
    assert json.loads((tmp_path / "results" / "gpu.json").read_text())["flops"]["training_per_token"] == gpu.TRAIN_FORMULA


def test_gpu_suite_records_an_arm_that_runs_out_of_memory_and_goes_on(tmp_path, monkeypatch):
    """Checkpointing off may not fit 80 GB at full shape: that arm is recorded as out of memory, with the bytes
    asked, its memory freed, and the suite goes on (here the error is raised for every checkpointing-off arm)."""
    import torch

    from icdlib.bench import gpu

    message = ("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
               "1.02 GiB is free.\nOf the allocated memory 75.10 GiB is allocated by PyTorch")
    real_train, real_mntp = gpu.train_runs, gpu.mntp_runs

    def train_runs(coder, *args, **kwargs):
        if not gpu.checkpointing(coder.encoder):
            raise torch.cuda.OutOfMemoryError(message)
        return real_train(coder, *args, **kwargs)

    def mntp_runs(obj, *args, **kwargs):
        if not gpu.checkpointing(obj.encoder):
            raise torch.cuda.OutOfMemoryError(message)
        return real_mntp(obj, *args, **kwargs)

    monkeypatch.setattr(gpu, "train_runs", train_runs)
    monkeypatch.setattr(gpu, "mntp_runs", mntp_runs)
    one = {"Llama-3-8B (toy shape)": gpu.SMOKE_SHAPES["Llama-3-8B (toy shape)"]}
    monkeypatch.setitem(gpu.SCALES["smoke"], "shapes", one)
    doc = run_suite("gpu", scale="smoke", repeats=1, warmup=0, data_dir=tmp_path / "data",
                    out=tmp_path / "gpu.json", markdown=tmp_path / "RESULTS.md", progress=False)
    measured = [r for r in doc["rows"] if "skipped" not in r]
    out = [r for r in measured if "out_of_memory" in r]
    assert len(out) == (4 if torch.cuda.is_available() else 3)  # bf16 × 2 casts, MNTP (, 4-bit)
    assert all(not r["checkpointing"] and "train_tps" not in r and "loss" not in r for r in out)
    for r in out:
        assert r["out_of_memory"]["asked"] == "1.50 GiB" and r["out_of_memory"]["asked_bytes"] == 3 * 2 ** 29
        assert r["out_of_memory"]["message"] == "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total " \
                                               "capacity of 79.19 GiB of which 1.02 GiB is free."
        assert "checkpointing off" in r["system"] and ": out of memory (asked 1.50 GiB more" in r["system"]
    assert all(r["train_tps"]["median"] > 0 for r in measured if r["checkpointing"])  # the suite went on
    assert not any("checkpointing off / on" in c["what"] for c in doc["comparisons"])  # nothing to compare with
    assert any("peft input cast off / on (checkpointing on)" in c["what"] for c in doc["comparisons"])
    assert all(c["ok"] for c in doc["checks"]), doc["checks"]
    assert sum("(1,610,612,736 bytes asked)" in n for n in doc["notes"]) == len(out)
    assert "out of memory (asked 1.50 GiB more" in (tmp_path / "RESULTS.md").read_text()


def test_gpu_out_of_memory_message_matmul_rate_and_mfu_arithmetic():
    import torch

    from icdlib.bench import gpu

    cpu = torch.device("cpu")
    message = "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has ..."
    assert gpu.out_of_memory(message + "\nmore", cpu) == {
        "asked": "20.00 MiB", "asked_bytes": 20 * 2 ** 20, "peak_allocated_gb": None, "peak_reserved_gb": None,
        "message": message}
    assert gpu.out_of_memory("", cpu)["asked_bytes"] is None
    assert gpu.out_of_memory("Tried to allocate 512 B", cpu)["asked_bytes"] == 512
    # 1,000 tokens/s × 1e9 FLOPs per token = 1 TFLOP/s: 50% of 2 TFLOP/s; no peak, no MFU
    assert gpu.mfu([1000.0, 2000.0], 1e9, 2.0) == {"median": 75.0, "min": 50.0, "max": 100.0, "n": 2}
    assert gpu.mfu([1000.0], 1e9, None) is None
    rates = gpu.matmul_tflops(64, reps=2, runs=3, warmup=1, device=cpu, dtype=torch.bfloat16)
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_gpu_suite_full_refuses_without_cuda_and_records_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the full scale would run")
    with pytest.raises(IcdlibError) as e:
        run_suite("gpu", scale="full", out=tmp_path / "gpu.json", markdown=tmp_path / "RESULTS.md", progress=False)
    assert str(e.value) == "bench gpu --scale full needs a CUDA GPU; no numbers are recorded"
    assert not (tmp_path / "gpu.json").exists() and not (tmp_path / "RESULTS.md").exists()
    out = subprocess.run([sys.executable, "-m", "icdlib", "bench", "gpu", "--out", str(tmp_path / "gpu.json"),
                          "--markdown", str(tmp_path / "RESULTS.md")], capture_output=True, text=True)
    assert out.returncode != 0 and "bench gpu --scale full needs a CUDA GPU" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "gpu.json").exists()


def test_markdown_says_gpu_figures_are_not_recorded_until_the_gpu_suite_ran(tmp_path):
    text = results.render([], tmp_path)
    assert "GPU figures" in text and "are not recorded: the suite needs a CUDA GPU" in text
    assert "Not measured yet: preprocess, metrics, train, predict, twin." in text  # gpu is not in that list


def test_gpu_peak_table_and_model_flops():
    from icdlib.bench import gpu

    assert gpu.peak_tflops("NVIDIA H200") == gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == gpu.peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert gpu.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu.peak_tflops("NVIDIA H100 NVL") is None and gpu.peak_tflops("NVIDIA GeForce RTX 4090") is None
    llama, mistral = gpu.FULL_SHAPES["Llama-3-8B"], gpu.FULL_SHAPES["Mistral-7B"]
    assert gpu.all_params(llama) == 7_504_924_672  # Llama-3-8B without its LM head
    assert gpu.all_params(mistral) == 7_110_660_096  # Mistral-7B without its LM head
    n, lora, s, d, layers, a, c = gpu.linear_params(llama), 41_943_040, 512, 4096, 32, 512, 8922
    head = 2 * (d * a + a * c + c * d)
    assert gpu.flops_per_token(llama, lora, s, c, a, True) == 4 * n + 6 * lora + 12 * layers * s * d + 3 * head
    assert gpu.flops_per_token(llama, lora, s, c, a, False) == 2 * n + 2 * lora + 4 * layers * s * d + head


# ---------------------------------------------------------------- preprocess suite, MIMIC-IV part

def test_preprocess_suite_mimic4_smoke_records_its_own_json_and_both_systems_agree(tmp_path):
    """`bench preprocess --dataset mimic4_icd9 --scale smoke`: a small synth4 twin, step 01 with Edin's preset
    beside the pandas port of Edin's script; the MIMIC-III record beside it is kept."""
    mimic3 = {"suite": "preprocess", "date": "2026-01-01 00:00 UTC", "command": "python -m icdlib bench preprocess",
              "repeats": 1, "warmup": 0, "machine": {"cpu": "CPU X", "cores": 2, "memory_gb": 24.0, "gpu": "none",
                                                     "os": "Linux", "python": "3.11", "commit": "abc"},
              "versions": {}, "columns": [["seconds", "wall s", 1]],
              "rows": [{"case": "mimic3 case", "system": "s", "seconds": harness.summary([1.0])}]}
    results.write(mimic3, tmp_path / "results" / "preprocess.json", None)
    doc = run_suite("preprocess", scale="smoke", repeats=1, warmup=0, data_dir=tmp_path / "data",
                    out=tmp_path / "results" / "preprocess-mimic4_icd9.json", markdown=tmp_path / "RESULTS.md",
                    progress=False, dataset="mimic4_icd9")
    assert (doc["suite"], doc["dataset"], doc["record"]) == ("preprocess", "mimic4_icd9", "preprocess-mimic4_icd9")
    assert "--dataset mimic4_icd9" in doc["command"]
    assert json.loads((tmp_path / "results" / "preprocess.json").read_text()) == mimic3
    assert json.loads((tmp_path / "results" / "preprocess-mimic4_icd9.json").read_text())["dataset"] == "mimic4_icd9"
    systems = [r["system"] for r in doc["rows"]]
    assert systems[:2] == ["icdlib step 01", "pandas, Edin et al.'s way"] and len(systems) == 5
    assert all(r["seconds"]["n"] == 1 and r["peak_rss_mb"]["median"] > 50 for r in doc["rows"])
    assert doc["rows"][0]["admissions"] == doc["rows"][1]["admissions"] > 0
    checks = {c["what"]: c for c in doc["checks"]}
    same = checks["same admissions, cleaned texts and target codes from icdlib and pandas"]
    assert same["ok"], same
    assert checks["same output from step 01 on the .csv.gz and on the plain .csv"]["ok"]
    assert not any("≤" in c["what"] for c in doc["checks"])  # the RSS target is checked at full size only
    assert doc["comparisons"][0]["met"] is None  # the speed-up target applies at full size only
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## preprocess\n" in text and "| mimic3 case | s | 1.0 |" in text
    assert "## preprocess (mimic4_icd9)" in text and text.index("## preprocess\n") < text.index("## preprocess (")
    twin = next((tmp_path / "data").glob("twin4-*-seed0"))
    assert (twin / "note" / "discharge.csv.gz").is_file() and (twin / "hosp" / "diagnoses_icd.csv.gz").is_file()
    split = pd.read_feather(tmp_path / "data" / f"{twin.name}-splits" / "mimiciv_icd9_split.feather")
    assert list(split.columns) == ["_id", "split"] and set(split["split"]) == {"train", "val", "test"}


def test_mimic4_output_check_can_fail():
    """The equality check of the MIMIC-IV suite tells apart outputs that differ in ids, texts or codes."""
    import pyarrow as pa

    from icdlib.bench import preprocess4

    base = preprocess4.digests(np.array([3, 1]), pa.array(["c t", "a t"]), [["X"], ["Y"]])
    same = preprocess4.digests(np.array([1, 3]), pa.chunked_array([["a t"], ["c t"]]), [["Y"], ["X"]])
    assert preprocess4._same(base, same) == (True, "2 admissions")
    text = preprocess4.digests(np.array([1, 3]), pa.array(["a t", "c"]), [["Y"], ["X"]])
    codes = preprocess4.digests(np.array([1, 3]), pa.array(["a t", "c t"]), [["Y"], ["X", "Z"]])
    ids = preprocess4.digests(np.array([1, 4]), pa.array(["a t", "c t"]), [["Y"], ["X"]])
    twice = preprocess4.digests(np.array([1, 1]), pa.array(["a t", "a t"]), [["Y"], ["Y"]])
    assert preprocess4._same(base, text) == (False, "differ in texts (2 and 2 rows)")
    assert preprocess4._same(base, codes)[1].startswith("differ in codes")
    assert preprocess4._same(base, ids)[1].startswith("differ in ids")
    assert preprocess4._same(base, twice)[1].startswith("differ in admissions, ids, texts, codes")


def test_dataset_is_for_the_preprocess_suite_only(tmp_path):
    with pytest.raises(IcdlibError, match="for the preprocess suite only"):
        run_suite("metrics", scale="smoke", out=tmp_path / "x.json", dataset="mimic4_icd9")
    with pytest.raises(IcdlibError, match="unknown dataset"):
        run_suite("preprocess", scale="smoke", out=tmp_path / "x.json", dataset="mimic5")
    assert not (tmp_path / "x.json").exists()


def test_both_systems_clean_texts_as_edins_regexes_do():
    """icdlib's byte-level cleaning (mimic4.clean_edin_all, in pieces) and the port's pandas `.str` cleaning
    (edin4.clean) both give what Edin's TextPreprocessor regexes give in Python's `re`, on random texts."""
    import random
    import re

    import pyarrow as pa

    from icdlib.data import mimic4
    from icdlib.bench import edin4

    def edin(text):
        text = re.sub(r"(\s\d+)+\s", " ", re.sub(r"[^A-Za-z0-9]+", " ", text.lower()))
        return re.sub(r"\s+", " ", text).strip()

    rng = random.Random(0)
    alphabet = list("aZq09 7_.,\n\t-éÜ€") + ["  ", "12", " 3 ", "___"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    texts += ["Dose 12 mg, 34 56 times B12 x9 ... 2010", " 12 34", "a 12 34", "12 a", "...12 a 3 ", " 1 ", ""]
    expected = [edin(t) for t in texts]
    assert mimic4.clean_edin_all(texts) == expected
    assert mimic4.clean_edin_all(texts, piece_bytes=500) == expected
    series = pd.Series(texts, index=range(7, 7 + len(texts)))
    cleaned = mimic4.clean_edin_all(series, piece_bytes=500)
    assert cleaned.tolist() == expected and cleaned.index.equals(series.index)
    chunked = pa.chunked_array([pa.array(texts[:100]), pa.array(texts[100:])])
    assert mimic4.clean_edin_all(chunked, piece_bytes=300).to_pylist() == expected
    assert edin4.clean(series).tolist() == expected
    assert mimic4.clean_edin_all(pa.array(["A b", None])).to_pylist() == ["a b", None]
