"""Where a run's results come from: code version, software, device, date and data fingerprints.

Why this module exists: an executed notebook is shared without the machine that made it, so
it must say what made it. `collect` gathers that as one JSON-ready dict; reports show it
(`report.header`) and step manifests can record it. It changes nothing: it reads git, the
installed packages' metadata, the visible devices and the files it hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # icdlib/run/provenance.py -> the checkout (or site-packages when installed)
PACKAGES = ("torch", "transformers", "peft", "tokenizers", "icdlib")
DATA_FILES = ("01_preprocess/notes.parquet", "01_preprocess/labels.parquet")
HASH_CHARS = 12  # of a sha256 hex digest: enough to tell two data sets apart at a glance


def file_hash(path: Path, chars: int = HASH_CHARS) -> str | None:
    """The first `chars` hex digits of the sha256 of the file's bytes; None when there is no file."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:chars]


def git_state(repo: Path = PACKAGE_ROOT) -> dict:
    """`{"commit": sha or None, "dirty": bool or None}` of the checkout holding icdlib.

    dirty: tracked files differ from the commit (untracked files do not count, as `git describe
    --dirty`). Both None outside a git checkout or without git. GIT_OPTIONAL_LOCKS=0: looking
    must not take the index lock from someone working in the same checkout."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def versions(packages=PACKAGES) -> dict:
    """Python's version and each package's installed version (None when not installed)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device() -> str:
    """The accelerators torch sees: `cuda: 4 × NVIDIA H100 80GB HBM3`, `mps` or `cpu (16 cores)`."""
    cores = f"{os.cpu_count()} cores"
    try:
        import torch
    except ImportError:
        return f"cpu ({cores}; torch not installed)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        kinds = {n: names.count(n) for n in dict.fromkeys(names)}
        return "cuda: " + ", ".join(f"{k} × {n}" for n, k in kinds.items())
    if torch.backends.mps.is_available():
        return f"mps ({cores})"
    return f"cpu ({cores})"


def collect(run_dir: Path, files=DATA_FILES) -> dict:
    """What made the results in `run_dir`, as a JSON-ready dict.

    Keys: `commit` (full sha or None), `dirty` (bool or None), `date` (UTC, ISO 8601, seconds),
    `versions` (python, torch, transformers, peft, tokenizers, icdlib), `device`, `platform`
    (OS and machine), `data` (each of `files`, relative to `run_dir`, mapped to its short
    content hash, or None where it does not exist yet). No absolute path and no host name.
    """
    run_dir = Path(run_dir)
    return {
        **git_state(),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "versions": versions(),
        "device": device(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "data": {str(rel): file_hash(run_dir / rel) for rel in files},
    }
