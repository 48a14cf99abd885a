"""Running the numbered notebooks headlessly (papermill) and exporting them as HTML reports.

The executed notebooks land in `<run>/reports/NN_name.ipynb` and `.html`: they are the
shareable reports. A notebook that fails is kept as `NN_name.failed.ipynb` for inspection and
the run stops with the notebook's own one-line error.

The kernel runs in the caller's working directory and receives absolute paths, so relative
paths typed on the command line mean the same in every step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from icdlib.config import REPO_ROOT, Config, absolute_paths
from icdlib.errors import IcdlibError

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis")


class NotebookError(IcdlibError):
    """A notebook raised; the message is the notebook's own error, one line."""


_KERNEL_MANAGER = None


def kernel_manager_class():
    """jupyter_client's AsyncKernelManager, less the SIGINT it sends before every shutdown request.

    After the last cell papermill asks the kernel for kernel_info and shuts it down as soon as
    the reply arrives; the kernel is then still inside that request's handler, where SIGINT
    raises, so ipykernel logged `ERROR | KeyboardInterrupt caught in kernel.` after successful
    runs (more often on a busy machine). Our kernels have finished their cells by then: the
    shutdown request alone stops them, and jupyter_client still sends SIGTERM, then SIGKILL, to
    one that does not exit within `shutdown_wait_time`. Interrupts outside a shutdown pass on.
    """
    global _KERNEL_MANAGER
    if _KERNEL_MANAGER is None:
        from jupyter_client import AsyncKernelManager

        class FinishedKernelManager(AsyncKernelManager):
            async def _async_interrupt_kernel(self) -> None:
                if not self.shutting_down:
                    await super()._async_interrupt_kernel()

        _KERNEL_MANAGER = FinishedKernelManager
    return _KERNEL_MANAGER


def execute(name: str, cfg: Config, params: dict, progress: bool = True) -> Path:
    """Run notebook `name` for the run of `cfg`; return the executed notebook's path.

    The kernel starts in the caller's working directory, and relative paths in `params` are
    made absolute against it first (as `config.resolve` did for `cfg`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    reports = cfg.run_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"{name}.ipynb"
    tmp = reports / f".{name}.running.ipynb"
    parameters = {"backbone": cfg.backbone, "run": cfg.run, "mimic_dir": cfg.mimic_dir,
                  "params": absolute_paths(params)}
    try:
        pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(tmp), parameters=parameters,
                            kernel_name="python3", progress_bar=progress, cwd=os.getcwd(), log_output=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            kernel_manager_class=kernel_manager_class())
    except PapermillExecutionError as e:
        failed = reports / f"{name}.failed.ipynb"
        os.replace(tmp, failed)
        raise NotebookError(f"{name} failed: {e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''} "
                            f"(executed notebook: {failed})") from None
    os.replace(tmp, out)
    (reports / f"{name}.failed.ipynb").unlink(missing_ok=True)
    return out


def to_html(notebook: Path) -> Path:
    """Export an executed notebook next to it as HTML (code, outputs, figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html = Path(notebook).with_suffix(".html")
    tmp = html.with_name(f".{html.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html)
    return html


def run_all(cfg: Config, params: dict, notebooks=NOTEBOOKS, progress: bool = True) -> list[Path]:
    """Run the notebooks in order and export each to HTML; return the HTML paths."""
    htmls = []
    for name in notebooks:
        if progress:
            print(f"[icdlib] {name} ...", flush=True)
        htmls.append(to_html(execute(name, cfg, params, progress)))
    return htmls


def headline(cfg: Config) -> str:
    """A few lines of the run's test (or val) metrics, for the terminal."""
    path = cfg.run_dir / "04_evaluate" / "metrics.json"
    if not path.is_file():
        return ""
    results = json.loads(path.read_text())
    split = "test" if results.get("test") else "val"
    m = results[split]
    keys = ("auroc_micro", "auroc_macro", "auprc_micro", "f1_micro", "p_at_8", "map")
    return f"{split} ({'synthetic twin' if cfg.synthetic else 'MIMIC-III'}): " + ", ".join(
        f"{k} {m[k]:.3f}" for k in keys if k in m and m[k] is not None)
