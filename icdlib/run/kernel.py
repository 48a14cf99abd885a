"""How the notebooks' kernels run: quietly, and an icdlib error shows as one line.

Inside a kernel, `show_errors_in_one_line` (the config cell calls it) makes IPython show an
`IcdlibError` as its one line, `icdlib: error: ...`, instead of a stack through icdlib's code: a
user error is explained by its message, and in JupyterLab the cell then reads like the CLI.

papermill's own command then ends with that line too: see `icdlib.papermill_engine`.
"""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from pathlib import Path

PREFIX = "icdlib: error: "
# what icdlib's kernels run with: no "running over TCP without encryption" warning on every start
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]

_KERNEL_MANAGER = None


def kernel_manager_class(log: Path | None = None):
    """jupyter_client's AsyncKernelManager, less the SIGINT it sends before every shutdown request,
    and with the kernel's stderr in the file `log` when given.

    After the last cell papermill asks the kernel for kernel_info and shuts it down as soon as
    the reply arrives; the kernel is then still inside that request's handler, where SIGINT
    raises, so ipykernel logged `ERROR | KeyboardInterrupt caught in kernel.` after successful
    runs (more often on a busy machine). Our kernels have finished their cells by then: the
    shutdown request alone stops them, and jupyter_client still sends SIGTERM, then SIGKILL, to
    one that does not exit within `shutdown_wait_time`. Interrupts outside a shutdown pass on.

    `log`: after Ctrl-C the kernel is shut down inside a running cell, and ipykernel then logged a
    17-line `ZMQError: Socket operation on non-socket` on the terminal, sometimes, before the
    stopped line. Its stderr goes to `log` instead (what a cell prints reaches the notebook, not
    this stream), where a kernel that died may have said why.
    """
    global _KERNEL_MANAGER
    if _KERNEL_MANAGER is None:
        from jupyter_client import AsyncKernelManager

        class FinishedKernelManager(AsyncKernelManager):
            log_path: Path | None = None

            async def _async_interrupt_kernel(self) -> None:
                if not self.shutting_down:
                    await super()._async_interrupt_kernel()

            async def _async_launch_kernel(self, kernel_cmd, **kw) -> None:
                if self.log_path is None:
                    return await super()._async_launch_kernel(kernel_cmd, **kw)
                with open(self.log_path, "ab") as stderr:  # the kernel holds its own copy of the descriptor
                    return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": stderr})

        _KERNEL_MANAGER = FinishedKernelManager
    if log is None:
        return _KERNEL_MANAGER
    return type("LoggedKernelManager", (_KERNEL_MANAGER,), {"log_path": Path(log)})


# ---------------------------------------------------------------- inside the kernel

def one_line(error: BaseException) -> str:
    """An icdlib error as the CLI prints it."""
    return PREFIX + " ".join(str(error).split("\n"))


def _show_one_line(shell, etype, value, tb, tb_offset=None):
    line = one_line(value)
    shell._showtraceback(etype, value, [line])  # the error output a frontend (and papermill) receives
    return [line]


def show_errors_in_one_line() -> None:
    """In an IPython kernel, show every `IcdlibError` raised by a cell as its one line, and keep
    the kernel's shutdown race off the terminal (`ClosedSocketAtShutdown`)."""
    from icdlib.run.errors import IcdlibError

    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython else None
    if shell is None:
        return
    if IcdlibError not in shell.custom_exceptions:
        shell.set_custom_exc((IcdlibError,), _show_one_line)
    kernel_log = getattr(getattr(shell, "kernel", None), "log", None)
    for logger in (logging.getLogger("tornado.general"), kernel_log):
        if isinstance(logger, logging.Logger) and not any(isinstance(f, ClosedSocketAtShutdown) for f in logger.filters):
            logger.addFilter(ClosedSocketAtShutdown())


class ClosedSocketAtShutdown(logging.Filter):
    """Drops one record: a ZMQError "Socket operation on non-socket" (ENOTSOCK). ipykernel sometimes
    sends a reply on a socket its own shutdown has just closed (papermill shuts a kernel down right
    after a failed cell or a Ctrl-C), and tornado or ipykernel logged the 3-17-line traceback on the
    terminal, before the run's one line. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (type(error).__name__ == "ZMQError" and getattr(error, "errno", None) == errno.ENOTSOCK)


def quiet_tqdm_auto_without_ipywidgets() -> None:
    """Let `tqdm.auto` settle on its console bar without a warning in a kernel lacking ipywidgets.

    transformers and huggingface_hub import `tqdm.auto`, which in a Jupyter kernel looks for
    ipywidgets' IProgress and, not finding it, falls back to the console bar after a TqdmWarning
    ("IProgress not found ...") that every report then showed in red. That fallback is what a
    report wants (icdlib's own bars are off outside a terminal), so it is resolved once, with that
    one warning filtered, when `icdlib` is first imported (the package's `__init__`): before any of
    its modules imports transformers, whichever a notebook's first cell imports. With ipywidgets
    installed, or outside a kernel, nothing changes."""
    if "ipykernel.zmqshell" not in sys.modules or "tqdm.autonotebook" in sys.modules:
        return
    try:
        from tqdm.notebook import IProgress
    except ImportError:
        return
    if IProgress is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            import tqdm.autonotebook  # noqa: F401
