"""Timing, peak memory, provenance and the twins shared by the benchmark suites.

Peak memory is only meaningful per process, so runs whose memory matters go through `isolated`:
a fresh interpreter imports the function, times the call alone, and reports its own peak RSS.
The suites run on synthetic twins made once under the data folder (`ensure_twin`), each file read
once before the systems compared (`read_through`) so that they start from the same page cache.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from icdlib.run.config import REPO_ROOT
from icdlib.run.errors import IcdlibError
from icdlib.run.runfolder import atomic_path

PACKAGES = ("icdlib", "torch", "transformers", "peft", "tokenizers", "numpy", "pandas", "pyarrow", "scikit-learn")
_MARK = "ICDLIB-BENCH-RESULT "


def summary(values: list[float]) -> dict:
    """Median, min, max and count of repeated measurements."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no measurements to summarise")
    mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"median": mid, "min": ordered[0], "max": ordered[-1], "n": n}


def ratios(numerators: list[float], denominators: list[float]) -> dict:
    """Summary of run-by-run ratios (run i of one system against run i of the other)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"paired runs differ in number: {len(numerators)} and {len(denominators)}")
    return summary([a / b for a, b in zip(numerators, denominators)])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (10^6 bytes).

    On Linux this is VmHWM, the peak of the process's own memory map: getrusage's ru_maxrss
    carries the parent's peak over fork and exec, so a small child of a big parent would report
    the parent's figure.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def isolated(target: str, timeout: float | None = None, **kwargs) -> dict:
    """Run `module:function(**kwargs)` in a fresh interpreter.

    Returns {"seconds": wall time of the call, "peak_rss_mb": the process's peak RSS,
    "result": the function's return value (what JSON cannot hold shows as `<type name>`)}.
    """
    spec = json.dumps({"target": target, "kwargs": kwargs})
    proc = subprocess.run([sys.executable, "-m", "icdlib.bench.harness", spec], capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise IcdlibError(f"benchmark run {target} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(_MARK):])


def _worker(spec: str) -> None:
    job = json.loads(spec)
    module, name = job["target"].split(":")
    fn = getattr(importlib.import_module(module), name)
    seconds, result = timed(fn, **job["kwargs"])
    report = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "result": result}
    print(_MARK + json.dumps(report, default=lambda o: f"<{type(o).__name__}>"), flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict:
    """What measured it: CPU, cores, memory, OS, GPU (if any) and the package versions."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "commit": _git_commit(),
    }
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"machine": info, "versions": versions}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ensure_twin(data_dir: Path, admissions, progress: bool = True, short: bool = False, seed: int = 0,
                dataset: str = "mimic3") -> Path:
    """The synthetic twin of that many admissions (full-length notes unless `short`), generated once.

    MIMIC-III (`icdlib.twin.synth`): `admissions` is a count. MIMIC-IV (`dataset` mimic4_*, `icdlib.twin.synth4`,
    hosp/ and note/ as .csv.gz): `admissions` is (ICD-9, ICD-10) admissions; one twin serves both datasets."""
    if dataset == "mimic3":
        from icdlib.twin import synth

        out, made = Path(data_dir) / f"twin-{admissions}-seed{seed}{'-short' if short else ''}", "NOTEEVENTS.csv"

        def generate(tmp: Path) -> None:
            synth.generate(tmp, admissions=admissions, seed=seed, short=short, progress=progress)
    else:
        icd9, icd10 = admissions
        out = Path(data_dir) / f"twin4-{icd9}-{icd10}-seed{seed}{'-short' if short else ''}"
        made = "note/discharge.csv.gz"

        def generate(tmp: Path) -> None:
            from icdlib.twin import synth4

            synth4.generate(tmp, icd9=icd9, icd10=icd10, seed=seed, short=short, gzip=True, progress=progress)
    if not (out / made).is_file():
        with atomic_path(out) as tmp:
            generate(tmp)
    return out


def read_through(path: Path) -> None:
    """Read a file once so both systems start from the same (warm) page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


if __name__ == "__main__":
    _worker(sys.argv[1])
