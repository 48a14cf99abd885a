"""How an icdlib process ends: without CPython's last collections over every object its imports made.

A process that has imported torch and transformers' model code tracks about half a million objects
in the cyclic garbage collector, and CPython collects them all once more while it finalizes its
modules: 1.2 s of the exit of a `from transformers import LlamaModel` process on this project's
2-core machine, 1.5–1.8 s of a notebook kernel's shutdown (IPython collects once more before).
Every `icdlib run` pays it in each of its five kernels, every `icdlib predict` and every
torchrun rank once. `gc.freeze()` at exit moves those objects to the permanent generation,
which no collection visits; the process still runs its atexit handlers and weakref finalizers and
releases its modules as before. What it skips is freeing cycles that were already garbage, which
the operating system reclaims with the process (CPython does not promise to finalize objects alive
at exit either). The exit then took 0.2 s, the kernel's shutdown 0.2–0.3 s.
"""

from __future__ import annotations

import atexit
import gc


def exit_without_collecting() -> None:
    """At exit, before the handlers registered earlier (LIFO: IPython's, logging's) and
    CPython's own finalization: freeze what the garbage collector tracks. Once per process."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
