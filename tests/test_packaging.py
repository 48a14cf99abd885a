"""The install: tested ranges in pyproject.toml, exact versions in requirements.lock (what `make setup`
installs) and environment.yml, and nothing tied to one Python or to llm2vec at run time."""

import ast
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# standard-library modules Python 3.12 and 3.13 removed (PEP 594, PEP 632, 3.12's imp/asyn*)
REMOVED_MODULES = {"distutils", "imp", "asynchat", "asyncore", "smtpd", "aifc", "audioop", "cgi", "cgitb", "chunk",
                   "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd",
                   "sunau", "telnetlib", "uu", "xdrlib", "lib2to3"}


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras=("notebooks", "test")) -> list[Requirement]:
    p = project()
    return [Requirement(r) for r in p["dependencies"] + [x for e in extras for x in p["optional-dependencies"][e]]]


def lock() -> dict[str, str]:
    return pins((ROOT / "requirements.lock").read_text().splitlines())


def test_python_311_and_up_with_no_upper_bound():
    assert project()["requires-python"] == ">=3.11"


def test_the_lock_satisfies_every_tested_range():
    locked = lock()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} is outside {req}"


def test_the_ranges_admit_a_current_gpu_image():
    """A GPU image's own torch (>= 2.4) and any transformers 5.x from 5.2 satisfy the core install."""
    core = {canonicalize_name(r.name): r.specifier for r in requirements(extras=())}
    for version in ("2.4.0", "2.6.0", "2.11.0"):
        assert core["torch"].contains(version)
    for version in ("5.2.0", "5.9.0", "5.25.0", "5.99.0"):
        assert core["transformers"].contains(version)
    assert not core["transformers"].contains("4.44.2") and not core["transformers"].contains("6.0.0")


def test_environment_pins_the_direct_dependencies_at_the_locks_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = pins(pip_lines)
    direct = {canonicalize_name(r.name) for r in requirements()}
    assert set(env_pins) == direct
    locked = lock()
    assert {k: locked[k] for k in direct} == env_pins
    assert "-e ." in pip_lines


def test_the_model_stack_is_todays():
    locked = lock()
    assert locked["transformers"].startswith("5.") and locked["torch"] == "2.13.0"
    assert "llm2vec" not in locked and all("llm2vec" not in str(r) for r in requirements(("notebooks", "test", "gpu")))


def test_make_setup_installs_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c requirements.lock" in makefile and ".[notebooks,test]" in makefile


def make_run_command(target: str) -> list[str]:
    """The `python -m icdlib run ...` arguments a make target runs, as `make -n` prints them."""
    import shlex
    import subprocess

    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True, text=True)
    line = next(line for line in done.stdout.splitlines() if " -m icdlib run " in line)
    return shlex.split(line.split(" -m icdlib ", 1)[1])


def test_make_demo_fine_tunes_once_and_make_demo_mntp_compares():
    """`make demo` stays short (one fine-tuning, no MNTP stage); `make demo-mntp` is the MNTP comparison
    of params/tiny.yaml (the stage, then a second fine-tuning)."""
    from icdlib import cli
    from icdlib.run import config

    runs = {}
    for target in ("demo", "demo-mntp"):
        args = cli.parser().parse_args(make_run_command(target))
        runs[target] = config.resolve(args.backbone, {"run": args.run, **dict(config.parse_override(p)
                                                                              for p in args.param or [])})
    assert (runs["demo"].run, runs["demo"].mntp_steps, runs["demo"].mntp_compare) == ("demo", 0, "none")
    assert (runs["demo-mntp"].run, runs["demo-mntp"].mntp_steps, runs["demo-mntp"].mntp_compare) == \
        ("demo-mntp", 300, "with")
    assert runs["demo"].to_dict() | {"run": "", "mntp_steps": 0, "mntp_compare": ""} == \
        runs["demo-mntp"].to_dict() | {"run": "", "mntp_steps": 0, "mntp_compare": ""}  # nothing else differs


def test_the_editable_install_says_nothing(tmp_path, monkeypatch):
    """`pip install -e .` (make setup) builds its editable wheel without setuptools' warning (was: a
    BuildBackendWarning, "Editable installation. ... Please be careful with folders in your working
    directory ...", in every `make demo`), and the wheel puts the repository on sys.path."""
    import shutil
    import warnings
    import zipfile

    from setuptools import build_meta

    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "icdlib", copy / "icdlib", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(copy)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        wheel = build_meta.build_editable(str(tmp_path / "dist"))
    assert [str(w.message).splitlines()[0] for w in said if "setuptools" in type(w.message).__module__] == []
    with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
        pth = [n for n in z.namelist() if n.endswith(".pth")]
        assert len(pth) == 1 and z.read(pth[0]).decode().strip() == str(copy)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_llm2vec_or_what_newer_pythons_removed():
    for path in sorted((ROOT / "icdlib").rglob("*.py")):
        names = _imports(path)
        assert "llm2vec" not in names, f"{path.relative_to(ROOT)} imports llm2vec"
        assert not names & REMOVED_MODULES, f"{path.relative_to(ROOT)} imports {names & REMOVED_MODULES}"


def test_the_reference_environment_is_llm2vecs_2024_stack():
    ref = pins((ROOT / "tests/llm2vec_reference/requirements.txt").read_text().splitlines())
    assert (ref["llm2vec"], ref["transformers"], ref["peft"], ref["tokenizers"]) == ("0.2.3", "4.44.2", "0.17.1", "0.19.1")
