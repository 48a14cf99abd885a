"""Benchmark results: one JSON file per suite, and `benchmarks/RESULTS.md` rendered from all of them.

A results JSON holds no machine path: its figures are stored relative to the JSON's own folder
(`../preprocess.png`), so the recorded results render in any clone and from any working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from icdlib.bench.suites import DATASETS, SUITES
from icdlib.run.config import OUTPUTS_DIR, REPO_ROOT
from icdlib.run.runfolder import atomic_write_text

BENCH_DIR = REPO_ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
MARKDOWN = BENCH_DIR / "RESULTS.md"
SMOKE_DIR = OUTPUTS_DIR / "bench-smoke"  # git-ignored: where --scale smoke runs write, never over the record

HEADER = """# Benchmark results

Written by `python -m icdlib bench SUITE` (see `icdlib/bench/`); do not edit by hand. Each figure
is the median of the timed runs after a warm-up, with min–max in brackets; a ratio is taken run by
run between two systems measured side by side in the same invocation. Reproduce with:

```bash
make setup
.venv/bin/python -m icdlib bench preprocess   # first run writes the twins to benchmarks/data/ (about 10 min, 5.5 GB)
.venv/bin/python -m icdlib bench preprocess --dataset mimic4_icd9 --repeats 1 --warmup 0   # MIMIC-IV twin: ~10 min, 4.3 GB
.venv/bin/python -m icdlib bench preprocess --dataset mimic4_icd10 --repeats 1 --warmup 0
.venv/bin/python -m icdlib bench metrics
.venv/bin/python -m icdlib bench train
.venv/bin/python -m icdlib bench predict
.venv/bin/python -m icdlib bench twin         # trains the demo recipe on 3 twins (about 8 min)
.venv/bin/python -m icdlib bench gpu          # needs a CUDA GPU (pip install -e '.[gpu]' for the 4-bit rows)
```
"""
# Suites that need hardware the machine writing this file may lack, and what their absence means.
NEEDS_HARDWARE = {
    "gpu": "GPU figures (`bench gpu`: Llama-3-8B / Mistral-7B shapes at the params files' batch of 2 notes × 8 × "
           "512 tokens, training tokens/s with gradient checkpointing on and off and with peft's fp32 cast of the "
           "LoRA inputs on and off, MFU against the datasheet peak and a measured 8,192³ bf16 matmul, peak GPU "
           "memory allocated and reserved, bf16 and 4-bit, scoring notes/s) are not recorded: the suite needs a CUDA "
           "GPU and no GPU was lent to the sessions that wrote and extended it; only `--scale smoke` has run, on the "
           "CPU. To record them: `pip install -e '.[gpu]'`, then `.venv/bin/python -m icdlib bench gpu --scale full "
           "--repeats 3 --warmup 1` (writes `benchmarks/results/gpu.json` and re-renders this file). No GPU numbers "
           "are estimated here.",
}


def shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (what a user of any clone reads), else absolute."""
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def write(result: dict, out: Path, markdown: Path | None = MARKDOWN) -> None:
    """Save one suite's result and re-render the markdown from every result beside it.

    `result["figures"]` are paths as the suite made them (absolute, or relative to the working
    directory); the JSON stores them relative to its own folder."""
    out = Path(out)
    if result.get("figures"):
        folder = out.parent.resolve()
        result = {**result, "figures": [Path(os.path.relpath(Path(f).resolve(), folder)).as_posix()
                                        for f in result["figures"]]}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    if markdown is not None:
        atomic_write_text(Path(markdown), render(read_all(out.parent), Path(markdown).parent, out.parent))


def read_all(folder: Path) -> list[dict]:
    """The results in `folder`, in suite order."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("suite") in SUITES:
            found[doc.get("record", doc["suite"])] = doc  # record: `preprocess-mimic4_icd9` beside `preprocess`
    def order(record: str) -> tuple:
        dataset = found[record].get("dataset", "mimic3")
        return SUITES.index(found[record]["suite"]), DATASETS.index(dataset) if dataset in DATASETS else 99, record

    return [found[r] for r in sorted(found, key=order)]


def cell(stat: dict | None, digits: int) -> str:
    """`median (min–max)` of a summary, or the bare value for a single run."""
    if stat is None:
        return ""
    med = f"{stat['median']:,.{digits}f}"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return med
    return f"{med} ({stat['min']:,.{digits}f}–{stat['max']:,.{digits}f})"


def render_suite(doc: dict, markdown_dir: Path, results_dir: Path | None = None) -> str:
    """One suite's section. A relative figure path is relative to `results_dir` (the JSON's folder;
    default `markdown_dir`), an absolute one is taken as it is; the link is relative to `markdown_dir`."""
    m, v = doc["machine"], doc["versions"]
    title = doc["suite"] + (f" ({doc['dataset']})" if doc.get("dataset") else "")
    lines = [f"## {title}", "",
             f"{doc['date']} · {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu']} · "
             f"{m['os']}, Python {m['python']} · commit {m['commit']}  ",
             "versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + "  ",
             f"command: `{doc['command']}` ({doc['repeats']} timed runs after {doc['warmup']} warm-up)", ""]
    if doc.get("description"):
        lines += [doc["description"], ""]
    columns = doc["columns"]
    lines.append("| case | system | " + " | ".join(header for _, header, _ in columns) + " |")
    lines.append("|---|---|" + "---|" * len(columns))
    for row in doc["rows"]:
        cells = [cell(row.get(key), digits) for key, _, digits in columns]
        lines.append(f"| {row['case']} | {row['system']} | " + " | ".join(cells) + " |")
    if doc.get("comparisons"):
        lines += ["", "| comparison | ratio | target | met |", "|---|---|---|---|"]
        for c in doc["comparisons"]:
            met = "" if c.get("met") is None else ("yes" if c["met"] else "**no**")
            lines.append(f"| {c['what']} | {cell(c['ratio'], 2)} | {c.get('target', '')} | {met} |")
    if doc.get("checks"):
        lines += [""] + [f"- check: {c['what']}: {'passed' if c['ok'] else '**failed**'}"
                         + (f" ({c['detail']})" if c.get("detail") else "") for c in doc["checks"]]
    if doc.get("notes"):
        lines += [""] + [f"- {n}" for n in doc["notes"]]
    for fig in doc.get("figures", []):
        where = Path(results_dir if results_dir is not None else markdown_dir) / fig  # `/` keeps an absolute fig
        rel = os.path.relpath(where.resolve(), Path(markdown_dir).resolve())
        lines += ["", f"![{doc['suite']}]({Path(rel).as_posix()})"]
    return "\n".join(lines) + "\n"


def render(docs: list[dict], markdown_dir: Path, results_dir: Path | None = None) -> str:
    """RESULTS.md from the docs of `results_dir` (the folder their figure paths are relative to)."""
    done = {d["suite"] for d in docs}
    parts = [HEADER] + [render_suite(d, markdown_dir, results_dir) for d in docs]
    missing = [s for s in SUITES if s not in done and s not in NEEDS_HARDWARE]
    if missing:
        parts.append("Not measured yet: " + ", ".join(missing) + ".\n")
    parts += [NEEDS_HARDWARE[s] + "\n" for s in NEEDS_HARDWARE if s not in done]
    return "\n".join(parts)
