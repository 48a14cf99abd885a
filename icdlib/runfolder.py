"""Atomic writes into the run folder.

A run folder is the contract between notebooks, so nothing in it may look complete when it is
not: files are written to a temporary name beside their target and renamed into place, and a
step's folder is built under a temporary name and renamed when the step has finished.

Temporary names carry the writer's pid: `.<name>.tmp-<pid>` (with a random suffix for
`atomic_write_text`), `.<name>.old-<pid>` for the target being replaced, and
`.<name>.running-<pid>.ipynb` for a notebook being executed (`running_notebook`). `clean_stale`
removes those of processes that are no longer alive.

What lands in place is readable by the group and others, as a plain `open()` would leave it:
files 0644 and folders 0755 under the usual umask 022 (`0o666 & ~umask`, `0o777 & ~umask`, so a
stricter umask such as 027 or 077 is respected). `tempfile.mkstemp` and safetensors create 0600
files; without this, group members could not read a run's results or weights.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

# `.<target>.tmp-<pid>`, `.<target>.old-<pid>`, `.<target>.running-<pid>.ipynb`, each with an
# optional `.suffix` (mkstemp's random letters, `.ipynb`)
LEFTOVER = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old|running)-(?P<pid>\d+)(?P<rest>\.[A-Za-z0-9_]+)?$")
# what `atomic_path` leaves alone when it cleans: leftovers touched within the last 5 minutes (on a
# filesystem shared between nodes, a pid dead here may be a live writer elsewhere, e.g. another
# node's torchrun rank writing its token cache)
QUIET_S = 300.0


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(executable: bool = False) -> int:
    """The mode `open()` gives a new file under the current umask (0644 under 022)."""
    return (0o777 if executable else 0o666) & ~umask()


def share(path: Path) -> Path:
    """Give `path` (a file, or a folder and everything under it) the modes a plain `open()` /
    `mkdir()` would: files 0o666 & ~umask (0o777 & ~umask when the owner may execute them),
    folders 0o777 & ~umask. Symbolic links are left as they are and not followed."""
    path = Path(path)
    mask = umask()
    modes = {"file": 0o666 & ~mask, "exec": 0o777 & ~mask, "dir": 0o777 & ~mask}

    def one(p: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            want = modes["dir"]
        elif stat.S_ISREG(st.st_mode):
            want = modes["exec"] if st.st_mode & stat.S_IXUSR else modes["file"]
        else:
            return
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(p, want)

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return path
    one(str(path), st)
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                p = os.path.join(root, name)
                one(p, os.lstat(p))
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file renamed into place; the file ends up
    0o666 & ~umask (0644 under umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}.", suffix="", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path `.<name>.tmp-<pid>` beside `path`; on success it is renamed to `path`.

    Works for files and folders: the caller writes whatever it likes at the yielded path.
    An existing target is replaced only once the new one is complete. What is renamed into
    place gets `share`'s modes (files 0644, folders 0755 under umask 022), recursively.
    Leftovers of dead processes in the parent folder are removed first (`clean_stale`, sparing
    those touched within QUIET_S).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent, min_age_s=QUIET_S)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if tmp.exists() or tmp.is_symlink():
            share(tmp)
        if path.is_dir() and tmp.is_dir():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def running_notebook(folder: Path, name: str) -> Path:
    """Where a notebook `name` is executed before it is renamed to `<name>.ipynb` (pid in the name,
    so `clean_stale` can tell a dead run's notebook from a live one's)."""
    return Path(folder) / f".{name}.running-{os.getpid()}.ipynb"


def alive(pid: int) -> bool:
    """Whether a process with that pid exists on this machine (`os.kill(pid, 0)`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OverflowError:
        return False
    return True


def clean_stale(folder: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove the leftovers of dead processes directly in `folder`; return what was removed.

    Leftovers are `.<target>.tmp-<pid>[.xxx]`, `.<target>.old-<pid>` and
    `.<target>.running-<pid>.ipynb` whose pid is not a live process (`os.kill(pid, 0)`). Kept:
    - a `tmp`/`old` leftover while its target is missing: a process killed between `atomic_path`'s
      two renames leaves the complete new copy in `.tmp-<pid>` and the previous one in
      `.old-<pid>`, the only copies there are (resume recovers `.last.tmp-*`);
    - one modified (anywhere inside) less than `min_age_s` ago: pids are of this machine, and on
      a filesystem shared between nodes a writer on another node is not visible here.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        m = LEFTOVER.match(entry.name)
        if not m or alive(int(m["pid"])):
            continue
        if m["kind"] in ("tmp", "old") and not os.path.lexists(folder / m["target"]):
            continue
        if min_age_s > 0 and now - _newest_mtime(entry.path) < min_age_s:
            continue
        try:
            _remove(Path(entry.path))
        except FileNotFoundError:  # another cleaner got there first
            continue
        removed.append(Path(entry.path))
    return removed


def _newest_mtime(path: str) -> float:
    """The latest mtime of `path` and, for a folder, of everything under it (0 if it vanished)."""
    try:
        newest = os.lstat(path).st_mtime
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    except FileNotFoundError:
        return 0.0
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
