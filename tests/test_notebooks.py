"""Notebook hygiene: paired with jupytext, stripped, one parameters cell, no shell lines or defs."""

import json
from pathlib import Path

import jupytext
import pytest
from jupytext.combine import combine_inputs_with_outputs

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


@pytest.mark.parametrize("name", NOTEBOOKS + (COMPARE,))
def test_each_ipynb_is_what_jupytext_writes_from_its_py(name, tmp_path):
    """The committed .ipynb, byte for byte, is what `jupytext --sync` writes from the .py (its cell ids and
    metadata kept): an .ipynb that differs from it is rewritten, or opens as changed, the moment someone
    opens and saves the pair in JupyterLab."""
    ipynb = (NB_DIR / f"{name}.ipynb").read_text()
    config = jupytext.config.load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    text = jupytext.read(NB_DIR / f"{name}.py", fmt="py:percent", config=config)
    regenerated = combine_inputs_with_outputs(text, jupytext.reads(ipynb, fmt="ipynb"), fmt="py:percent")
    jupytext.write(regenerated, tmp_path / "regenerated.ipynb")
    assert (tmp_path / "regenerated.ipynb").read_text() == ipynb
    jupytext.write(jupytext.reads(ipynb, fmt="ipynb"), tmp_path / "regenerated.py", fmt="py:percent", config=config)
    assert (tmp_path / "regenerated.py").read_text() == (NB_DIR / f"{name}.py").read_text()  # no YAML header


@pytest.mark.parametrize("name", NOTEBOOKS + (COMPARE,))
def test_each_notebook_names_the_kernel_as_jupyter_does(name):
    """JupyterLab rewrites `kernelspec` and `language_info` with what the kernel says when it starts, and
    marks the notebook changed when they differ (was: display_name "Python 3", no language_info: every
    notebook opened with the unsaved-changes dot). Committed as ipykernel says them on the reference
    environment (Python 3.11, requirements.lock); another Python's version still differs."""
    from ipykernel.ipkernel import IPythonKernel

    metadata = json.loads((NB_DIR / f"{name}.ipynb").read_text())["metadata"]
    assert metadata["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    said = {k: v for k, v in IPythonKernel.language_info.items() if k != "version"}
    assert {k: v for k, v in metadata["language_info"].items() if k != "version"} == said
    assert metadata["language_info"]["version"].startswith("3.11.")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_backbone_parameter_lists_every_params_file(name):
    """The parameters cell's comment on `backbone` names exactly the files of params/ (was: it left out
    sheared-llama and biomistral-mntp)."""
    lines = (NB_DIR / f"{name}.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("backbone = "))
    comment = lines[start].split("#", 1)[1]
    for line in lines[start + 1:]:
        if not line.startswith("#  "):
            break
        comment += " " + line.lstrip("# ")
    listed = comment.split("params/<name>.yaml:", 1)[1].replace(",", " ").split()
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.stem for p in (ROOT / "params").glob("*.yaml")}
