"""Running the numbered notebooks headlessly (papermill) and exporting them as HTML reports.

The executed notebooks land in `<run>/reports/NN_name.ipynb` and `.html`: they are the
shareable reports. A notebook that fails is kept as `NN_name.failed.ipynb` for inspection and
the run stops with the notebook's own one-line error.

The kernel runs in the caller's working directory and receives absolute paths, so relative
paths typed on the command line mean the same in every step. The reports, though, show no path of
the machine: `share_notebook` rewrites them as `<run>/…`, `<mimic_dir>`, … once executed.

While 03 trains, its progress records (`03_train/progress.jsonl`, and the MNTP comparison arm's
own file: one per evaluation, a tenth of MNTP, and a heartbeat with the time left whenever 20 s
passed without one) are streamed to the terminal (`ProgressTail`); after the last notebook
`reports/index.html` links the reports with the headline metrics (`write_index`). Both there and
in the terminal's last line (`headline`) the metrics are shown only when 04 scored the run's current
`03_train/best/` (`evaluated`); otherwise they say why not and the command that scores it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from icdlib.run.config import REPO_ROOT, Config, absolute_paths
from icdlib.run.errors import IcdlibError
from icdlib.run.kernel import KERNEL_ARGUMENTS, kernel_manager_class

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis")


class NotebookError(IcdlibError):
    """A notebook raised; the message is the notebook's own error, one line."""


class Interrupted(IcdlibError):
    """Ctrl-C (or SIGINT) stopped a notebook; the message says how to resume."""


NOTEBOOK_STACK = ("papermill", "nbformat", "nbclient", "nbconvert", "jupyter_client", "ipykernel", "matplotlib", "seaborn")


def require_notebook_stack() -> None:
    """Refuse, in one line, to run the notebooks where their packages are missing (a GPU image
    without Jupyter: there `python -m icdlib train`, `predict` and `bench gpu` work)."""
    from importlib.util import find_spec

    missing = [name for name in NOTEBOOK_STACK if find_spec(name) is None]
    if missing:
        raise IcdlibError(f"running the notebooks needs {', '.join(missing)}, not installed here: "
                          f"pip install -e '.[notebooks]' (without them, python -m icdlib train, predict and bench "
                          f"gpu still run)")


def execute(name: str, cfg: Config, params: dict, progress: bool = True) -> Path:
    """Run notebook `name` for the run of `cfg`; return the executed notebook's path.

    The kernel starts in the caller's working directory, and relative paths in `params` are
    made absolute against it first (as `config.resolve` did for `cfg`)."""
    from icdlib.report import shared
    from icdlib.run.runfolder import Run

    parameters = {"backbone": cfg.backbone, "run": cfg.run, "mimic_dir": cfg.mimic_dir,
                  "params": absolute_paths(params)}
    return run_notebook(name, Run.of(cfg).reports, parameters, shared.path_placeholders(cfg), progress=progress,
                        watched=progress_files(name, cfg) if progress else (),
                        stopped=lambda: interrupted_line(name, cfg),
                        again=lambda: f"Resume with: {resume_command(name, cfg)}",
                        advice="lower batch_size or max_segments, or use a larger machine")


def run_notebook(name: str, folder: Path, parameters: dict, pairs: list[tuple[str, str]], *, progress: bool = True,
                 watched: Sequence[Path] = (), stopped=None, again=None, advice: str = "use a larger machine") -> Path:
    """Execute `notebooks/<name>.ipynb` with `parameters` into `<folder>/<name>.ipynb`, its machine
    paths replaced by `pairs`' placeholders (`share_notebook`); return that path.

    A failing cell stops with the notebook's own line (the notebook so far kept as
    `<name>.failed.ipynb`); a dead kernel or Ctrl-C with one line too: `stopped()` is the line for
    Ctrl-C, `again()` the sentence that says how to go on, `advice` what to change when the kernel
    died (most often out of memory). `watched`: progress files to stream to the terminal."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from nbclient.exceptions import DeadKernelError

    from icdlib.run.runfolder import running_notebook

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.ipynb"
    tmp = running_notebook(folder, name)
    failed = folder / f"{name}.failed.ipynb"
    log = folder / f"{name}.kernel.log"  # the kernel's own stderr: kept when the step fails and it said something
    log.unlink(missing_ok=True)
    stopped = stopped or (lambda: f"interrupted in {name}; nothing of it is kept: run the command again")
    again = again or (lambda: "Run the command again.")
    tail = ProgressTail(name, watched, since=time.time() - 1.0) if watched else nullcontext()
    try:
        with tail, quiet_papermill():  # papermill's cell bar only on a terminal: in a log it is a line per update
            pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(tmp), parameters=parameters,
                                kernel_name="python3", progress_bar=progress and sys.stderr.isatty(),
                                cwd=os.getcwd(), log_output=False, extra_arguments=KERNEL_ARGUMENTS,
                                kernel_manager_class=kernel_manager_class(log))
    except PapermillExecutionError as e:
        _keep(tmp, failed, log)
        if e.ename == "KeyboardInterrupt":
            raise Interrupted(stopped()) from None
        raise NotebookError(f"{name} failed: {e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''} "
                            f"(executed notebook: {failed})") from None
    except DeadKernelError:
        said = f", its log {log}" if _keep(tmp, failed, log) else ""
        raise NotebookError(f"{name}: the notebook's kernel died (killed from outside, most often for running out "
                            f"of memory: {advice}); the notebook up to that cell is {failed}{said}. "
                            f"{again()}") from None
    except KeyboardInterrupt:
        _keep(tmp, failed, log)
        raise Interrupted(stopped()) from None
    share_notebook(tmp, pairs=pairs)  # no path of this machine in a report
    os.replace(tmp, out)
    failed.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    return out


@contextmanager
def quiet_papermill():
    """papermill's logger at CRITICAL while a step runs: what it would log (`Kernel died while waiting
    for execute reply.` before our own line, a slow autosave) the step's one line already says."""
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _keep(tmp: Path, failed: Path, log: Path) -> bool:
    """The notebook as far as it got, as `NN_name.failed.ipynb` (papermill writes it cell by cell),
    and the kernel's log when it holds anything; whether it does."""
    if tmp.exists():
        os.replace(tmp, failed)
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    return log.is_file()


def interrupted_line(name: str, cfg: Config) -> str:
    """What to type to go on after Ctrl-C in step `name` (`resume_command`)."""
    return f"interrupted in {name}; the steps before it are complete. Resume with: {resume_command(name, cfg)}"


def resume_command(name: str, cfg: Config) -> str:
    """The command that goes on from step `name`: `run_command` for it and the steps after (they
    take the run's recorded parameters; a resumed 03 takes last/'s), with the run's own `-p`
    values when 01 must build the data again."""
    import shlex

    from icdlib.run import config

    steps = [n[:2] for n in NOTEBOOKS if n >= name]
    given = ""
    if name == NOTEBOOKS[0]:
        defaults = config.resolve(cfg.backbone, {"output_root": cfg.output_root, "run": cfg.run})
        given = "".join(f" -p {shlex.quote(o)}" for o in config.cli_overrides(cfg, defaults))
    resume = " -p resume=true" if name == "03_train" else ""
    return f"{run_command(cfg, steps)}{given}{resume}"


# The reports' HTML reads as a document: code cells hidden until the reader ticks "Show code" (a checkbox
# and CSS only, no script: `:has()` hides them; a browser without it shows the code, as before).
CODE_TOGGLE_CSS = """<style>
body:has(#icdlib-show-code:not(:checked)) .jp-CodeCell .jp-Cell-inputWrapper,
body:has(#icdlib-show-code:not(:checked)) .jp-CodeCell.jp-mod-noOutputs {display: none}
body:has(#icdlib-show-code:not(:checked)) .jp-OutputPrompt {visibility: hidden}
.icdlib-code-toggle {position: fixed; top: .6em; right: .8em; z-index: 100; font: 13px sans-serif;
  background: #fff; border: 1px solid #bbb; border-radius: 4px; padding: .25em .6em; cursor: pointer}
.icdlib-code-toggle input {margin: 0 .35em 0 0; vertical-align: -1px}
@media print {.icdlib-code-toggle {display: none}}
</style>"""
CODE_TOGGLE = ('<label class="icdlib-code-toggle" title="the executed .ipynb beside this page holds the code too">'
               '<input type="checkbox" id="icdlib-show-code">Show code</label>')


def with_code_toggle(page: str) -> str:
    """nbconvert's HTML `page` with its code cells hidden behind a "Show code" box (`CODE_TOGGLE`)."""
    page = page.replace("</head>", CODE_TOGGLE_CSS + "\n</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + CODE_TOGGLE, page, count=1)


def to_html(notebook: Path) -> Path:
    """Export an executed notebook next to it as HTML: outputs, figures embedded, and the code one
    click away (`with_code_toggle`); the .ipynb keeps it as it is."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    from icdlib.run.runfolder import atomic_write_text

    return atomic_write_text(Path(notebook).with_suffix(".html"), with_code_toggle(body))


def run_all(cfg: Config, params: dict, notebooks=NOTEBOOKS, progress: bool = True) -> list[Path]:
    """Run the notebooks in order and export each to HTML, then write `reports/index.html`
    linking them, and the output root's `index.html` (`write_root_index`); return the HTML paths,
    the run's index last."""
    from icdlib.run.runfolder import clean_stale, lock

    htmls = []
    with lock(cfg.run_dir, "icdlib run"):  # the kernels pass through it; a second `icdlib run` does not
        clean_stale(cfg.run_dir / "reports")
        for name in notebooks:
            if progress:
                print(f"[icdlib] {name} ...", flush=True)
            try:
                htmls.append(to_html(execute(name, cfg, params, progress)))
            except KeyboardInterrupt:  # while the report is exported: the step goes again
                raise Interrupted(interrupted_line(name, cfg)) from None
        index = write_index(cfg)
    write_root_index(cfg.run_dir.parent)  # every run and comparison of the output root
    return htmls + [index]


def recorded(cfg: Config) -> dict:
    """The run's config.json (what step 01 built the data with) as a dict; `cfg`'s values when the
    run has none (or an unreadable one)."""
    from icdlib.run.runfolder import Run

    try:
        values = json.loads(Run.of(cfg).config.read_text())
    except (OSError, ValueError):
        values = None
    return values if isinstance(values, dict) else cfg.to_dict()


def evaluated(cfg: Config) -> tuple[dict, str]:
    """04's metrics.json when it scored the run's current `03_train/best/`, and ""; else {} and
    why not, as a phrase (`04_evaluate has not scored the current model (03_train/best changed
    since it ran)`): `record.scored_metrics`."""
    from icdlib.run import record
    from icdlib.run.runfolder import Run

    run = Run.of(cfg)
    return record.scored_metrics(run, run.checkpoint("best"))


def run_command(cfg: Config, steps=("04", "05")) -> str:
    """The `python -m icdlib run` line that runs `steps` on this run folder (01's data parameters
    follow from its record, so the line needs none of them)."""
    import shlex

    root = f" --output-root {shlex.quote(cfg.output_root)}" if cfg.output_root else ""
    return (f"python -m icdlib run --backbone {shlex.quote(cfg.backbone)} --run {shlex.quote(cfg.run_name)}{root} "
            f"--only {' '.join(steps)}")


def headline(cfg: Config) -> str:
    """The run's result for the terminal: when 04 scored the current best/ (`evaluated`), a few lines
    (`report.evaluate.headline_lines`: the model, the frequency prior, the baseline and the MNTP arm on the test
    (or val) split with 95% intervals, micro-F1 at each one's val-tuned threshold, and what MNTP did);
    else one line saying why there are none and the command that makes them. The data is named from
    the run's record (`report.shared.recorded_data_name`). "" before 03 has made a model."""
    from icdlib.report import evaluate, shared
    from icdlib.run.runfolder import Run

    run = Run.of(cfg)
    if not run.checkpoint("best").is_dir() and not run.metrics.is_file():
        return ""
    data = shared.recorded_data_name(recorded(cfg))
    results, stale = evaluated(cfg)
    if results:
        split, _ = evaluate.headline_keys(results)
        return f"{split} ({data}): " + "\n".join(evaluate.headline_lines(results))
    try:
        earlier = json.loads(run.metrics.read_text())
        split = "test" if earlier.get("test") else "val"
    except (OSError, ValueError, AttributeError):
        split = "no metrics"
    return f"{split} ({data}): {stale}: run {run_command(cfg)}"


# ---------------------------------------------------------------- the terminal while a notebook runs

POLL_S = 0.5  # how often the progress file is looked at


class ProgressTail:
    """Print the progress records a notebook's step appends to `paths` (one JSON object a line;
    one path or several, e.g. 03's own file and its MNTP arm's), each as `[icdlib] <name> <line>`,
    from a background thread while the notebook executes; the records a poll finds in several files
    are printed in the order they were written (their `time`).

    Only records of a fit that started after `since` are printed (the file of an earlier run
    may still be there); a file replaced (its first line, which names its fit's start time,
    differs) or truncated is read again from its top; a line still being written is held until
    its newline arrives."""

    def __init__(self, name: str, paths: Path | Sequence[Path], since: float, interval: float = POLL_S):
        import threading

        self.name, self.since, self.interval = name, since, interval
        self.paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"icdlib-tail-{name}", daemon=True)
        self._read = {path: (None, 0, b"") for path in self.paths}  # path -> (first line, offset, partial line)

    def __enter__(self) -> "ProgressTail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
        self.poll()  # what the step wrote just before the notebook ended

    def poll(self) -> list[str]:
        """Print (and return) the lines of the records appended since the last poll."""
        from tqdm import tqdm

        from icdlib.model.train import progress_line

        found = []
        for path in self.paths:
            for record in self._new_records(path):
                try:
                    if (record.get("started") or 0) < self.since:
                        continue
                    found.append((record.get("time") or 0, len(found), f"[icdlib] {self.name} {progress_line(record)}"))
                except (KeyError, TypeError, AttributeError, ValueError):
                    continue  # not a record of ours: nothing to show
        printed = [line for _, _, line in sorted(found)]
        for line in printed:
            tqdm.write(line, file=sys.stdout)  # above papermill's bar, when there is one
        sys.stdout.flush()
        return printed

    def _new_records(self, path: Path) -> list[dict]:
        """The complete records appended to `path` since the last read of it."""
        head, offset, partial = self._read[path]
        try:
            with open(path, "rb") as f:
                first, size = f.readline(4096), os.fstat(f.fileno()).st_size
                if first != head or size < offset:  # another file (an inode can be reused)
                    head, offset, partial = first, 0, b""
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return []
        *complete, partial = (partial + chunk).split(b"\n")
        self._read[path] = (head, offset + len(chunk), partial)
        records = []
        for raw in complete:
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # not JSON (or a half-written line of another writer)
            if isinstance(record, dict):
                records.append(record)
        return records


def progress_files(name: str, cfg: Config) -> list[Path]:
    """The progress files notebook `name` appends to while it runs (03: the model's fit and MNTP, and
    the MNTP comparison arm's fit; 04: the baseline's epochs and the explanation methods' stages); none for the others."""
    if name == "03_train":
        from icdlib.model.train import progress_paths

        return progress_paths(cfg.run_dir)
    if name == "04_evaluate":
        from icdlib.run.runfolder import Run

        return [Run.of(cfg).evaluate_progress]
    return []


# ---------------------------------------------------------------- shareable reports

def share_notebook(notebook: Path, cfg: Config | None = None, pairs: list[tuple[str, str]] | None = None) -> Path:
    """Rewrite an executed notebook with every absolute path of this machine replaced by a
    placeholder (`<run>/…`, `<mimic_dir>`, `<repo>`, …; `report.shared.share_paths`): in the injected
    parameters, the outputs and papermill's metadata. Images are left as they are. `pairs`:
    (path, placeholder) pairs, by default `report.shared.path_placeholders(cfg)`."""
    import nbformat

    from icdlib.report import shared

    pairs = shared.path_placeholders(cfg) if pairs is None else pairs

    def clean(node, key=""):
        if isinstance(node, str):
            return node if key.startswith("image/") else shared.share_paths(node, cfg, pairs)
        if isinstance(node, dict):
            for k in list(node):
                node[k] = clean(node[k], k)
            return node
        if isinstance(node, list):
            return [clean(v, key) for v in node]
        return node

    nb = nbformat.read(notebook, as_version=4)
    clean(nb)
    nbformat.write(nb, str(notebook))
    return notebook


REPORT_TITLES = {
    "01_preprocess": "Preprocess: what was kept and dropped, split sizes, label space",
    "02_label_stats": "Label statistics: the long tail, codes per admission, note lengths, split balance",
    "03_train": "Train: learning curves and the best checkpoint",
    "04_evaluate": "Evaluate: metrics with 95% intervals beside the frequency prior and the TF-IDF low-rank baseline, "
                   "PR curves, per-code quality, threshold, calibration",
    "05_error_analysis": "Error analysis: worst codes, frequent errors, confusions, hard notes",
}

INDEX_CSS = """body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em;margin-bottom:.2em}.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:1em 0}th,td{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #999}
ol li{margin:.4em 0}.missing{color:#999}code{background:#f3f3f3;padding:0 .2em}
.summary{background:#f7f9fc;border-left:4px solid #4a7bd0;padding:.2em 1em;margin:1em 0}
.stale{color:#a33}td.ci{color:#666;text-align:left;padding-left:0;padding-right:1em;white-space:nowrap;font-size:.85em}td[colspan]{white-space:nowrap}"""


def seed_spread_rows(metrics: dict) -> list[str]:
    """The index's row of mean ± sd (sample sd) over the run's training seeds, each at its own tuned
    threshold (metrics.json's `seed_spread`, under the label set of the model's row above it); none
    for one seed. One cell spans a metric's two columns (value and interval) in `report.evaluate.systems_html`."""
    import html

    from icdlib.report import evaluate, shared

    split, x = evaluate.headline_keys(metrics)
    seeds, spread = metrics.get("seeds") or {}, (metrics.get("seed_spread") or {}).get(f"{split}_tuned{x}")
    if len(seeds) < 2 or not spread:
        return []

    def cell(s: dict | None) -> str:
        if not s or s.get("mean") is None:
            return "<td colspan='2'>–</td>"
        return f"<td colspan='2'>{shared.decimals(s['mean'])} ± {shared.decimals(s.get('sd'))}</td>"

    name = f"icdlib, mean ± sd over seeds {', '.join(seeds)} ({split}, each at its tuned threshold)"
    return [f"<tr><td>{html.escape(name)}</td>" + "".join(cell(spread.get(k)) for k, _ in evaluate.INDEX_METRICS)
            + "</tr>"]


def write_index(cfg: Config) -> Path:
    """`<run>/reports/index.html`: one self-contained page (no script, no external file) linking the
    five reports, with the headline metrics of the model, the frequency prior, the baseline and the MNTP
    arm with their 95% intervals (`report.evaluate.systems_html`), what the run shows, and
    where it came from (`provenance.collect`). Reports not (yet) run are listed as such; metrics
    that are not of the current best/ (`evaluated`) are not shown, and the 04 and 05 reports are
    marked as showing an earlier model's."""
    import html

    from icdlib.run import provenance
    from icdlib.report import evaluate, shared
    from icdlib.run.runfolder import Run

    run = Run.of(cfg)
    reports = run.reports
    info = provenance.collect(cfg.run_dir)
    metrics, stale = evaluated(cfg)
    data = recorded(cfg)
    synthetic, dataset = not data.get("mimic_dir"), data.get("dataset") or cfg.dataset
    esc = html.escape
    parts = [f"<h1>icdlib run <code>{esc(cfg.run_name)}</code></h1>",
             f"<p class='sub'>backbone <code>{esc(cfg.backbone)}</code> · "
             + esc(shared.recorded_data_name(data)) + f" · {esc(info['date'][:10])}</p>"]
    if metrics:
        parts.append(evaluate.systems_html(metrics, seed_spread_rows(metrics)))
        text = evaluate.summary(metrics=metrics, synthetic=synthetic, dataset=dataset).html.split("</h3>", 1)[-1]
        parts.append(f"<div class='summary'>{text}</div>")
    elif not run.checkpoint("best").is_dir() and not run.metrics.is_file():
        parts.append("<p>No metrics yet: no model has been trained for this run (03_train).</p>")
    else:
        command = shared.share_paths(run_command(cfg), cfg)  # escaped below: <output_root> shows, not a tag
        parts.append(f"<p class='stale'>No metrics for the current model: {esc(stale)}: run "
                     f"<code>{esc(command)}</code></p>")
    items = []
    for name in NOTEBOOKS:
        title = esc(REPORT_TITLES.get(name, name))
        if (reports / f"{name}.html").is_file():
            earlier = (" · <span class='stale'>shows an earlier model's metrics, not the current "
                       "03_train/best's</span>") if not metrics and name in ("04_evaluate", "05_error_analysis") else ""
            items.append(f"<li><a href='{name}.html'>{name}</a> — {title} "
                         f"(<a href='{name}.ipynb'>notebook</a>){earlier}</li>")
        else:
            items.append(f"<li class='missing'>{name} — {title} (not run)</li>")
    parts.append("<h2>Reports</h2><ol>" + "".join(items) + "</ol>")
    parts.append("<h2>Provenance</h2>" + shared.provenance(info).html)
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>icdlib run {esc(cfg.run_name)}</title><style>{INDEX_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    from icdlib.run.runfolder import atomic_write_text

    return atomic_write_text(reports / "index.html", shared.share_paths(page, cfg))


ROOT_INDEX = "index.html"  # in an output root: every run and comparison there


def write_root_index(root: Path) -> Path:
    """`<output_root>/index.html`: one self-contained page listing the run folders under `root`
    (those holding config.json), each linking its `reports/index.html`, with its backbone, data,
    benchmark, split and the reports it has; and the comparisons in `root/comparisons/` (`icdlib
    compare`: folders holding comparison.json), each linking its report, with the runs compared
    and its verdict lines. Only JSON files are read, nothing is hashed, so `run` and `compare`
    rewrite it every time; no metric of a run is shown here (a run's own index says whether 04
    scored its current model). No path of the machine appears in it."""
    import html

    from icdlib.report import shared
    from icdlib.run.runfolder import Run, atomic_write_text

    root = Path(root)
    esc = html.escape

    def read(path: Path) -> dict:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    runs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and Run(p).config.is_file()) if root.is_dir() else []:
        run, recorded = Run(folder), read(Run(folder).config)
        done = [n for n in NOTEBOOKS if run.report(n, "html").is_file()]
        name = esc(folder.name)
        link = (f"<a href='{name}/reports/index.html'>{name}</a>" if (run.reports / "index.html").is_file() else name)
        runs.append(f"<tr><td>{link}</td><td><code>{esc(str(recorded.get('backbone', '?')))}</code></td>"
                    f"<td>{esc(shared.recorded_data_name(recorded))}</td><td>{esc(str(recorded.get('benchmark', '')))}"
                    f"</td><td>{esc(str(recorded.get('split', '')))}</td><td>{len(done)} of {len(NOTEBOOKS)}</td></tr>")
    comparisons = []
    folders = root / "comparisons"
    for folder in sorted(p for p in folders.iterdir() if (p / "comparison.json").is_file()) if folders.is_dir() else []:
        result = read(folder / "comparison.json")
        names = " vs ".join(esc(str(r.get("name", "?"))) for r in result.get("runs", []))
        name = esc(folder.name)
        link = f"<a href='comparisons/{name}/06_compare.html'>{names or name}</a>"
        lines = "".join(f"<li>{esc(str(line))}</li>" for line in result.get("summary", []))
        comparisons.append(f"<li>{link}<ul>{lines}</ul></li>")
    parts = [f"<h1>icdlib outputs</h1><p class='sub'>{len(runs)} run{'s' * (len(runs) != 1)} · "
             f"{len(comparisons)} comparison{'s' * (len(comparisons) != 1)}</p>", "<h2>Runs</h2>"]
    parts.append("<table><thead><tr><th>run</th><th>backbone</th><th>data</th><th>benchmark</th><th>split</th>"
                 "<th>reports</th></tr></thead><tbody>" + "".join(runs) + "</tbody></table>" if runs else
                 "<p class='missing'>No run folder here yet: <code>python -m icdlib run --backbone tiny</code></p>")
    parts.append("<h2>Comparisons</h2>")
    parts.append("<ul>" + "".join(comparisons) + "</ul>" if comparisons else
                 "<p class='missing'>None yet: <code>python -m icdlib compare RUN_A RUN_B</code></p>")
    parts.append("<p class='sub'>A run's metrics are on its own page, shown only when 04 scored its current model. "
                 "A comparison scores each run at the threshold its 04 tuned on validation; a run is called better "
                 "on a metric only where the 95% interval of the paired difference excludes 0.</p>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>icdlib outputs</title>"
            f"<style>{INDEX_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    return atomic_write_text(root / ROOT_INDEX, page)
