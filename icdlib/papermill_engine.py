"""papermill's own command, `papermill notebooks/03_train.ipynb out.ipynb -p backbone mistral`,
ends a notebook stopped by an icdlib error with that error's one line, exit status 1.

Without this, papermill ends such a run with click's traceback and the cell's: 80-90 lines that
look like a crash before the real cause. papermill imports every installed `papermill.engine`
entry point when it starts; icdlib's (pyproject.toml) is `QuietEngine` (`--engine icdlib`:
papermill's engine with icdlib's kernel settings), and importing this module for it also sets
`sys.excepthook`: an uncaught papermill execution error whose cell output is the one line
`kernel.show_errors_in_one_line` showed is printed as that line; any other exception as before.
Every papermill start in the environment imports this module, so it imports nothing heavy.
"""

from __future__ import annotations

import sys

from papermill.engines import NBClientEngine
from papermill.exceptions import PapermillExecutionError

from icdlib.run.kernel import KERNEL_ARGUMENTS, PREFIX, kernel_manager_class


def icdlib_line(error: BaseException) -> str | None:
    """The one line of a papermill execution error raised by an icdlib error in a cell, else None."""
    traceback = getattr(error, "traceback", None)
    if not isinstance(error, PapermillExecutionError) or not isinstance(traceback, list) or len(traceback) != 1:
        return None
    return traceback[0] if isinstance(traceback[0], str) and traceback[0].startswith(PREFIX) else None


def _excepthook(previous):
    def hook(etype, value, tb):
        line = icdlib_line(value)
        if line is None:
            return previous(etype, value, tb)
        cell = f" (cell In [{value.exec_count}])" if getattr(value, "exec_count", None) else ""
        sys.stderr.write(f"\n{line}{cell}\n")  # the interpreter still exits with status 1
    hook.icdlib = True
    return hook


def install_excepthook() -> None:
    if not getattr(sys.excepthook, "icdlib", False):
        sys.excepthook = _excepthook(sys.excepthook)


class QuietEngine(NBClientEngine):
    """papermill's default engine with icdlib's kernel settings (`--engine icdlib`)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        kwargs.setdefault("extra_arguments", KERNEL_ARGUMENTS)
        kwargs.setdefault("kernel_manager_class", kernel_manager_class())
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


install_excepthook()
