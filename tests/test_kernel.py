"""An icdlib error in a notebook cell shows as one line: in the kernel (IPython's custom exception
handler) and at the end of papermill's command (its excepthook); any other error as before."""

import io
import sys

import pytest
from IPython.core.interactiveshell import InteractiveShell
from papermill.exceptions import PapermillExecutionError

from icdlib.run import kernel
from icdlib import papermill_engine
from icdlib.run.errors import ConfigError, IcdlibError


@pytest.fixture
def shell(monkeypatch):
    shown = []
    ip = InteractiveShell.instance()
    monkeypatch.setattr(ip, "_showtraceback", lambda etype, value, stb: shown.append((etype.__name__, stb)))
    monkeypatch.setattr(sys.modules["IPython"], "get_ipython", lambda: ip)
    yield ip, shown
    ip.set_custom_exc((), None)
    InteractiveShell.clear_instance()


def test_a_cell_raising_an_icdlib_error_shows_one_line(shell):
    ip, shown = shell
    kernel.show_errors_in_one_line()
    kernel.show_errors_in_one_line()  # the config cell run twice installs it once
    assert ip.custom_exceptions == (IcdlibError,)
    result = ip.run_cell("from icdlib.run.errors import ConfigError\nraise ConfigError('batch_size must be at least 1,\\ngot -4')")
    assert isinstance(result.error_in_exec, ConfigError)
    assert shown == [("ConfigError", ["icdlib: error: batch_size must be at least 1, got -4"])]
    result = ip.run_cell("raise KeyError('a bug')")  # not a user error: IPython's whole traceback
    assert isinstance(result.error_in_exec, KeyError)
    assert shown[-1][0] == "KeyError" and len(shown[-1][1]) > 1


def error(traceback, ename="RecordError") -> PapermillExecutionError:
    return PapermillExecutionError(cell_index=4, exec_count=5, source="train.run(cfg)", ename=ename,
                                   evalue="...", traceback=traceback)


def test_papermill_ends_an_icdlib_error_with_its_line(monkeypatch):
    previous = []
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    hook = papermill_engine._excepthook(lambda *exc: previous.append(exc[1]))
    mine = error(["icdlib: error: outputs/x/01_preprocess does not exist: run 01_preprocess for this run first"])
    hook(type(mine), mine, None)
    assert sys.stderr.getvalue() == ("\nicdlib: error: outputs/x/01_preprocess does not exist: run 01_preprocess "
                                     "for this run first (cell In [5])\n")
    for other in (error(["Traceback ...", "KeyError: 'x'"], "KeyError"), error(["KeyError: 'icdlib: error: '"]),
                  KeyError("x")):
        hook(type(other), other, None)
    assert len(previous) == 3 and sys.stderr.getvalue().count("\n") == 2


def test_papermill_loads_the_engine_and_the_hook():
    """The entry point pyproject.toml declares is what papermill registers as `--engine icdlib`."""
    from papermill.engines import papermill_engines

    assert papermill_engines.get_engine("icdlib") is papermill_engine.QuietEngine
    assert getattr(sys.excepthook, "icdlib", False)


def test_the_kernel_s_shutdown_race_stays_off_the_terminal(shell, capsys):
    """ipykernel's reply on a socket its shutdown just closed: `ZMQError: Socket operation on
    non-socket` logged by tornado (seen once in 24 papermill runs under load); nothing else is dropped."""
    import errno
    import logging

    import zmq

    kernel.show_errors_in_one_line()
    kernel.show_errors_in_one_line()
    tornado = logging.getLogger("tornado.general")
    assert sum(isinstance(f, kernel.ClosedSocketAtShutdown) for f in tornado.filters) == 1
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tornado.addHandler(handler)
    try:
        closed, other, bug = zmq.error.ZMQError(errno.ENOTSOCK), zmq.error.ZMQError(errno.EAGAIN), KeyError("x")
        for error in (closed, other, bug):
            try:
                raise error
            except Exception:
                tornado.error("Uncaught exception in ZMQStream callback", exc_info=True)
    finally:
        tornado.removeHandler(handler)
        for f in [f for f in tornado.filters if isinstance(f, kernel.ClosedSocketAtShutdown)]:
            tornado.removeFilter(f)
    assert [r.exc_info[1] for r in records] == [other, bug]
