"""Notebook hygiene: paired with jupytext, stripped, one parameters cell, no shell lines or defs."""

import json
from pathlib import Path

import jupytext
import pytest

from icdlib.compare import NOTEBOOK as COMPARE
from icdlib.pipeline import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS + (COMPARE,))
def test_notebook_hygiene(name):
    raw = json.loads((NB_DIR / f"{name}.ipynb").read_text())
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "outputs not stripped"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], "exactly one parameters cell, the first code cell"
    for line in "".join(tagged[0]["source"]).splitlines():
        if "#" in line:
            assert "=" not in line.split("#", 1)[1], f"papermill drops comments with '=': {line}"
    for c in code:
        src = "".join(c["source"])
        assert not any(line.lstrip().startswith("!") for line in src.splitlines()), "no shell lines"
        assert "def " not in src and "class " not in src, "notebooks narrate; icdlib computes"
        assert len(src.splitlines()) <= 12, "cells stay short"


@pytest.mark.parametrize("name", NOTEBOOKS + (COMPARE,))
def test_pairs_in_sync(name):
    ipynb = jupytext.read(NB_DIR / f"{name}.ipynb")
    py = jupytext.read(NB_DIR / f"{name}.py")
    as_py = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert as_py(ipynb) == as_py(py)
