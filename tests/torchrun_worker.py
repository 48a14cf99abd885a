"""A torchrun worker for tests: `python -m icdlib` with faults or probes chosen by environment.

- FAIL_RANK, FAIL_STEP, FAIL_MARK: that rank's FAIL_STEP-th loss raises RuntimeError("injected
  fault"), after writing the time to FAIL_MARK;
- TOKENIZE_LOG: every call of `icdlib.model.encoding.tokenize` appends `<rank> <notes>` to that file;
- NO_DROPOUT: `torch.nn.Dropout` passes its input through (runs on 1 and N processes then draw
  nothing at random, and can be compared number for number).

Only this process is changed; icdlib runs as it does for users.
"""

import os
import sys
import time

import icdlib.model.encoding
import icdlib.model.train
from icdlib.cli import main

RANK = os.environ.get("RANK", "0")

if "FAIL_RANK" in os.environ:
    real_loss, calls = icdlib.model.train.loss_fn, {"n": 0}

    def failing_loss(*args, **kwargs):
        calls["n"] += 1
        if RANK == os.environ["FAIL_RANK"] and calls["n"] == int(os.environ["FAIL_STEP"]):
            with open(os.environ["FAIL_MARK"], "w") as f:
                f.write(str(time.time()))
            raise RuntimeError("injected fault")
        return real_loss(*args, **kwargs)

    icdlib.model.train.loss_fn = failing_loss

if "TOKENIZE_LOG" in os.environ:
    real_tokenize = icdlib.model.encoding.tokenize

    def logged_tokenize(texts, *args, **kwargs):
        with open(os.environ["TOKENIZE_LOG"], "a") as f:
            f.write(f"{RANK} {len(texts)}\n")
        return real_tokenize(texts, *args, **kwargs)

    icdlib.model.encoding.tokenize = logged_tokenize

if os.environ.get("NO_DROPOUT"):
    import torch

    torch.nn.Dropout.forward = lambda self, x: x

sys.exit(main(sys.argv[1:]))
