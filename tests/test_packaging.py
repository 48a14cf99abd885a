"""environment.yml and pyproject.toml must pin the same packages to the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_pins = pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert pins(pip_lines) == py_pins
    assert "-e ." in pip_lines


def test_the_model_stack_is_pinned_together():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    p = pins(project["dependencies"])
    assert (p["llm2vec"], p["transformers"], p["peft"], p["torch"]) == ("0.2.3", "4.44.2", "0.17.1", "2.13.0")
