"""Benchmarks: measured speed and memory of icdlib, side by side with what a user would otherwise run.

`python -m icdlib bench SUITE` runs one suite, writes `benchmarks/results/SUITE.json` and rewrites
`benchmarks/RESULTS.md` from every results file. Each figure is the median of several timed runs
after a warm-up, with its min–max; ratios are taken run by run between the two systems measured in
the same invocation. Nothing here is a test: `make test` only checks that the suites run.

Where a run writes (`destinations`): only a full-scale run without `--out` records into the tracked
`benchmarks/results/` and `benchmarks/RESULTS.md`. A `--scale smoke` run writes to the git-ignored
`outputs/bench-smoke/` (`results/SUITE.json`, `RESULTS.md`, figures), and is refused if `--out` or
`--markdown` name the recorded files: smoke figures never replace full-scale ones. With `--out` and no
`--markdown`, `RESULTS.md` goes beside `--out`. Paths in a results JSON (its `figures`) are relative to
the JSON's folder, so the recorded results render in any clone, from any working directory.

Suites: `preprocess` (step 01 against pandas read-everything; with `--dataset mimic4_icd9` or
`mimic4_icd10`, on a full-size MIMIC-IV twin against Edin et al.'s pandas preparation, recorded as
`preprocess-<dataset>.json`), `metrics` (icdlib.measure.metrics against
scikit-learn's per-label loop), `train` (tokens/s of segmented dynamic batches against the original
project's fixed 1024-token window), `predict` (notes/s of icdlib.predict), `twin` (how hard the
synthetic twin is: evidence forms and positions in its text, and the frequency prior, TF-IDF and
the tiny demo model trained on twins of several seeds), `gpu` (LoRA training
tokens/s, MFU and peak GPU memory of Llama-3-8B- and Mistral-7B-shaped coders in bf16 and 4-bit
QLoRA, scoring notes/s, the memory one backbone copy costs, and an MNTP step; `--scale full` needs a CUDA GPU
and refuses without one, `--scale smoke` runs a toy shape on the CPU).
"""

from icdlib.bench.suites import DATASETS, SUITES


def run_suite(suite: str, scale: str = "full", repeats: int = 3, warmup: int = 1, data_dir=None, out=None,
              markdown=None, progress: bool = True, command: str = "", dataset: str = "mimic3") -> dict:
    """Run one suite and record it: `out` (JSON) and `markdown` (re-rendered from every JSON beside `out`).

    `dataset` (the `preprocess` suite only): mimic3, or mimic4_icd9 / mimic4_icd10 for the MIMIC-IV
    part, recorded as `preprocess-<dataset>.json` beside (not over) the MIMIC-III record."""
    import importlib
    from pathlib import Path

    from icdlib.bench import harness, results
    from icdlib.run.errors import IcdlibError

    if suite not in SUITES:
        raise IcdlibError(f"unknown benchmark suite {suite!r}; choose one of {', '.join(SUITES)}")
    if dataset not in DATASETS:
        raise IcdlibError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset != "mimic3" and suite != "preprocess":
        raise IcdlibError(f"--dataset {dataset} is for the preprocess suite only, not {suite}")
    module = importlib.import_module(f"icdlib.bench.{suite}")
    if scale not in module.SCALES:
        raise IcdlibError(f"suite {suite} has no scale {scale!r}; choose one of {', '.join(module.SCALES)}")
    if repeats < 1 or warmup < 0:
        raise IcdlibError(f"repeats must be ≥ 1 and warmup ≥ 0, got {repeats} and {warmup}")
    record = record_name(suite, dataset)
    out, markdown = destinations(record, scale, out, markdown)
    data_dir = Path(data_dir) if data_dir else results.BENCH_DIR / "data"
    provenance = harness.machine()
    extra = {} if dataset == "mimic3" else {"dataset": dataset}
    doc = module.run(scale=scale, repeats=repeats, warmup=warmup, data_dir=data_dir, progress=progress,
                     figure=markdown.parent / f"{record}.png", **extra)
    default = f"python -m icdlib bench {suite} --scale {scale} --repeats {repeats}"
    doc = {"suite": suite, "date": harness.now(), "scale": scale, "repeats": repeats, "warmup": warmup,
           "command": command or (default + (f" --dataset {dataset}" if extra else "")),
           **({"record": record} if extra else {}), **provenance, **doc}
    results.write(doc, out, markdown)
    return doc


def record_name(suite: str, dataset: str = "mimic3") -> str:
    """The results file's stem: the suite's name, and `<suite>-<dataset>` for a MIMIC-IV dataset."""
    return suite if dataset == "mimic3" else f"{suite}-{dataset}"


def destinations(record: str, scale: str, out=None, markdown=None) -> tuple:
    """(results JSON, markdown) a run of `record` at `scale` writes; see the module docstring for the rule.

    Raises IcdlibError when a smoke run would write the recorded `benchmarks/results/` or `RESULTS.md`."""
    from pathlib import Path

    from icdlib.bench import results
    from icdlib.run.errors import IcdlibError

    smoke = scale != "full"
    home = results.SMOKE_DIR if smoke else results.BENCH_DIR
    out = Path(out) if out else home / "results" / f"{record}.json"
    beside = out.parent.resolve() != (home / "results").resolve()
    markdown = Path(markdown) if markdown else (out.parent / "RESULTS.md" if beside else home / "RESULTS.md")
    if smoke:
        for flag, path, recorded in (("--out", out, out.parent.resolve() == results.RESULTS_DIR.resolve()),
                                     ("--markdown", markdown, markdown.resolve() == results.MARKDOWN.resolve())):
            if recorded:
                raise IcdlibError(f"--scale {scale} never writes over or beside the recorded full-scale figures "
                                  f"({flag} {path}); leave out --out and --markdown (a smoke run writes to "
                                  f"{results.shown(results.SMOKE_DIR)}/) or name a file outside benchmarks/")
    return out, markdown
