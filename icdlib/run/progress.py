"""What a training phase says while it runs, shared by fine-tuning (`train.Progress`) and the MNTP
stage (`mntp`): the time left, and the heartbeat that keeps the terminal of `icdlib run` from going
silent between two evaluations.

`icdlib run` shows a notebook's progress only through the records its step appends to a progress
file (`pipeline.ProgressTail`); fine-tuning writes one per evaluation, MNTP one per tenth of its
steps, and on a busy CPU either can be minutes apart. A heartbeat record (a step line with the time
left, never printed into the notebook) goes to the file whenever `HEARTBEAT_S` passed without one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

HEARTBEAT_S = 20.0  # at most this long between two records of a phase (plus one optimizer step)


def duration(seconds: float | None) -> str:
    """`3m10s`, `2h01m`, `45s`; `?` when not known."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def seconds_left(elapsed_s: float, done: int, left: int) -> float | None:
    """Seconds left at the pace so far: `done` steps took `elapsed_s`, `left` remain; None before the first."""
    return elapsed_s / done * left if done > 0 else None


class Heartbeat:
    """`due()` once `every` seconds passed since the phase's last record (`beat()` marks one)."""

    def __init__(self, every: float = HEARTBEAT_S):
        self.every, self.last = every, time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every

    def beat(self) -> None:
        self.last = time.perf_counter()


class Lines:
    """Lines of a step that is not training (04: the baseline, the explanation methods) for the
    terminal of `icdlib run`: each call appends one record to `path`, which `pipeline.ProgressTail`
    prints as it is. The file starts afresh with each step."""

    def __init__(self, path: Path):
        self.path, self.started, self.t0 = path, time.time(), time.perf_counter()
        path.unlink(missing_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, text: str) -> None:
        record = {"event": "title", "text": text, "started": self.started, "time": time.time()}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError:
            pass  # progress is a courtesy: a run folder that refuses it fails elsewhere, clearly
