"""Atomic writes into the run folder.

A run folder is the contract between notebooks, so nothing in it may look complete when it is
not: files are written to a temporary name beside their target and renamed into place, and a
step's folder is built under a temporary name and renamed when the step has finished.

Temporary names carry the writer's pid: `.<name>.tmp-<pid>.<host>` (a random suffix instead of
the host for `atomic_write_text`), `.<name>.old-<pid>.<host>` for the target being replaced, and
`.<name>.running-<pid>.ipynb` for a notebook being executed (`running_notebook`). `clean_stale`
removes those of processes that are no longer alive.

A write that fills the disk (or the quota) stops in one line, `DiskFullError`: where, how much is
free, and that the previous copy is kept; the temporary copy is removed (`out_of_space` tells a
full disk from other errors, torch's writer included, which gives no errno).

What lands in place is readable by the group and others, as a plain `open()` would leave it:
files 0644 and folders 0755 under the usual umask 022 (`0o666 & ~umask`, `0o777 & ~umask`, so a
stricter umask such as 027 or 077 is respected). `tempfile.mkstemp` and safetensors create 0600
files; without this, group members could not read a run's results or weights.

`Run` knows every artifact path of a run folder (the table in ../shared/DESIGN.md): steps,
notebooks and the CLI ask it instead of joining names themselves. `lock` keeps a second writer
out of a run folder while a step runs. Cached artifacts (the synthetic twin, the tiny backbone,
step 01) carry `cache_key.txt`, the content hash of what produced them (`content_key`): an equal
key reuses the artifact, any other rebuilds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import traceback
from pathlib import Path

from icdlib.run.errors import DiskFullError, IcdlibError

# `.<target>.tmp-<pid>`, `.<target>.old-<pid>`, `.<target>.running-<pid>.ipynb`, each with an
# optional `.suffix` (mkstemp's random letters, `.ipynb`)
LEFTOVER = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old|running)-(?P<pid>\d+)(?P<rest>\.[A-Za-z0-9_]+)?$")
# what `atomic_path` leaves alone when it cleans: leftovers touched within the last 5 minutes (on a
# filesystem shared between nodes, a pid dead here may be a live writer elsewhere, e.g. another
# node's torchrun rank writing its token cache)
QUIET_S = 300.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # the disk, or the user's quota, is full
OS_ERROR = re.compile(r"\(os error (\d+)\)")  # Rust's io::Error in safetensors' messages (so peft's, transformers')
# free bytes under which a write error without errno (torch's `unexpected pos`) counts as a full disk
LOW_FREE = 64 << 20


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
        with stops_when_full(path, Path(tmp)):
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
    """Yield a temporary path `.<name>.tmp-<pid>.<host>` beside `path`; on success it is renamed to
    `path`. (The host's name too: on a filesystem shared by several nodes pids collide.)

    Works for files and folders: the caller writes whatever it likes at the yielded path.
    An existing target is replaced only once the new one is complete. What is renamed into
    place gets `share`'s modes (files 0644, folders 0755 under umask 022), recursively.
    Leftovers of dead processes in the parent folder are removed first (`clean_stale`, sparing
    those touched within QUIET_S). A full disk stops in one line (`stops_when_full`); a failed
    rename puts the previous folder back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent, min_age_s=QUIET_S)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}.{host_tag()}"
    _remove(tmp)
    try:
        with stops_when_full(path, tmp):
            yield tmp
            if tmp.exists() or tmp.is_symlink():
                share(tmp)
            if path.is_dir() and tmp.is_dir():
                _swap(path, tmp)
            else:
                os.replace(tmp, path)
    finally:
        _remove(tmp)


def _swap(path: Path, tmp: Path) -> None:
    """Replace the folder `path` by the folder `tmp`, two renames; if the second fails (ENOSPC: a
    directory that must grow), the previous folder goes back, so `path` is never missing."""
    old = path.parent / f".{path.name}.old-{os.getpid()}.{host_tag()}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def stops_when_full(path: Path, tmp: Path):
    """Writing `path` through `tmp`: an error that is a full disk (`out_of_space`) becomes one line,
    `DiskFullError`, once `tmp` is removed; any other error goes on unchanged."""
    try:
        yield
    except Exception as e:
        previous = _size(path) if os.path.lexists(path) else None
        written = _size(tmp)
        if not out_of_space(e, tmp, needed=(previous or 0) - written):
            raise
        _let_go(e)
        _remove(tmp)
        raise disk_full(path, written, previous) from None


def _let_go(error: BaseException) -> None:
    """Drop what the finished frames of `error`'s tracebacks hold: torch's writer keeps its file open
    there, and an open file removed keeps its space until closed (the free space said would be short)."""
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        traceback.clear_frames(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__


def out_of_space(error: BaseException, where: Path, needed: int = 0) -> bool:
    """Whether `error`, raised writing at `where`, is a full disk or quota: ENOSPC/EDQUOT anywhere in
    its chain (an OSError's errno, `os error 28` in safetensors' message); for torch's writer, whose
    RuntimeError has no errno (`[enforce fail at inline_container.cc:672] . unexpected pos`), less
    free at `where` than `needed` (what was left to write) or LOW_FREE. Other errors are not."""
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        if _errno(cause) in NO_SPACE:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(error, RuntimeError):
        return False
    free = free_space(where)
    return free is not None and free < max(LOW_FREE, needed)


def _errno(error: BaseException) -> int | None:
    """An OSError's errno, or the `(os error N)` in a message (safetensors raises no OSError)."""
    if isinstance(error, OSError):
        return error.errno
    found = OS_ERROR.search(str(error))
    return int(found[1]) if found else None


def free_space(path: Path) -> int | None:
    """Bytes this user may still write on the filesystem of `path` (its nearest existing folder);
    None when it cannot be read."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(path: Path, written: int, previous: int | None) -> DiskFullError:
    """The one line of a write of `path` that filled the disk, its temporary copy (`written` bytes so
    far) removed; `previous`: the size of the copy it was to replace, None when there was none."""
    free = free_space(path.parent)
    # the copy it replaces, the size of a checkpoint, says what is needed; once it was outgrown, only "more"
    need = f", about {amount(previous)} needed" if previous and previous > max(written, free or 0) else ""
    space = f"no space left on {shown_path(path)} ({'?' if free is None else amount(free)} free{need})"
    kept = f"the previous {path.name} is kept as it was" if previous is not None else f"no {path.name} was written"
    return DiskFullError(f"{space}: {kept}, nothing half-written is left; free space there and rerun", space=space)


def amount(n: int) -> str:
    """Bytes for people: `1.9 GB`, `412.0 MB`, `0 bytes` (GB = 10^9, as memory_plan counts)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def _size(path: Path) -> int:
    """Bytes of the file `path`, or of every file under the folder `path` (0 when it cannot be read)."""
    try:
        if not Path(path).is_dir() or Path(path).is_symlink():
            return os.lstat(path).st_size
        return sum(os.lstat(os.path.join(root, name)).st_size
                   for root, _, files in os.walk(path) for name in files)
    except OSError:  # gone, or unreadable: never an error of its own while another is explained
        return 0


def host_tag() -> str:
    """This machine's name as a file-name part (letters, digits, `_`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


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


# ---------------------------------------------------------------- the run folder's paths

STEPS = ("01_preprocess", "02_label_stats", "03_train", "04_evaluate", "05_error_analysis")
SCORED_SPLITS = ("val", "test")  # the splits 03 writes predictions for
CHECKPOINTS = ("best", "last")
MANIFEST = "manifest.json"
KEY_FILE = "cache_key.txt"


# the second fine-tuning of an MNTP comparison (mntp_compare), by what it starts from
MNTP_ARMS = {"without": "without_mntp", "with": "with_mntp"}


def seed_variant(seed: int) -> str:
    """The variant (`Run(run_dir, seed_variant(s))`) of a training seed after the run's first
    (`Config.seeds`): its fine-tuning writes `03_train/seed_<s>/`."""
    return f"seed_{seed}"


class Run:
    """Every path of one run folder, `outputs/<run>/`, as DESIGN.md's table lists them.

    Paths only: nothing is read or created here (`lock` and the steps do that). Steps are named
    `01_preprocess` … `05_error_analysis`; `step()` also takes `"01"`, `1` or `"preprocess"`.
    """

    def __init__(self, run_dir: str | os.PathLike, variant: str = ""):
        self.dir = Path(run_dir)
        self.variant = variant  # another fine-tuning of the same run (`without_mntp`, `seed_1`): its own 03 outputs

    @classmethod
    def of(cls, cfg) -> "Run":
        """The run folder of a Config."""
        return cls(cfg.run_dir)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}" + (f", variant={self.variant!r})" if self.variant else ")")

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and (self.dir, self.variant) == (other.dir, other.variant)

    def __hash__(self) -> int:
        return hash((self.dir, self.variant))

    # the record
    @property
    def config(self) -> Path:
        """`config.json`: the parameters the run was started with (written by step 01)."""
        return self.dir / "config.json"

    @property
    def lock(self) -> Path:
        """`.lock`: held (flock) by the process running a step; holds that process's pid."""
        return self.dir / ".lock"

    @staticmethod
    def step_name(step: str | int) -> str:
        """`"01_preprocess"` for `"01_preprocess"`, `"01"`, `1` or `"preprocess"`."""
        text = f"{step:02d}" if isinstance(step, int) else str(step)
        for name in STEPS:
            if text in (name, name[:2], name[3:]):
                return name
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")

    def step(self, step: str | int) -> Path:
        """A step's folder, `NN_step/`."""
        return self.dir / self.step_name(step)

    def manifest(self, step: str | int) -> Path:
        """`NN_step/manifest.json`: what the step used, read and wrote (see `icdlib.run.record`)."""
        return self.step(step) / MANIFEST

    # inputs made for the run
    @property
    def synthetic_mimic(self) -> Path:
        """The synthetic MIMIC-III twin, generated when `mimic_dir` is empty (dataset mimic3)."""
        return self.dir / "synthetic_mimic"

    @property
    def synthetic_mimic4(self) -> Path:
        """The synthetic MIMIC-IV twin (hosp/ and note/), generated when `mimic_dir` is empty and
        the dataset is MIMIC-IV's."""
        return self.dir / "synthetic_mimic4"

    # 01
    @property
    def notes(self) -> Path:
        return self.step("01") / "notes.parquet"

    @property
    def labels(self) -> Path:
        return self.step("01") / "labels.parquet"

    @property
    def stats(self) -> Path:
        return self.step("01") / "stats.json"

    @property
    def evidence(self) -> Path:
        """`01_preprocess/evidence.parquet`: evidence spans in notes.parquet's text (icdlib.data.evidence);
        absent when the run has none."""
        return self.step("01") / "evidence.parquet"

    # 03
    @property
    def trained(self) -> Path:
        """Where a fine-tuning writes: `03_train/`, or `03_train/<variant>/` for a variant."""
        return self.step("03") / self.variant if self.variant else self.step("03")

    def checkpoint(self, which: str = "best") -> Path:
        """`03_train/best/` or `03_train/last/` (model folders, see `icdlib.model.checkpoint`)."""
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
        return self.trained / which

    @property
    def history(self) -> Path:
        return self.trained / "history.csv"

    @property
    def progress(self) -> Path:
        """`03_train/progress.jsonl`: one JSON line per evaluation of the fit running (or last run)."""
        return self.trained / "progress.jsonl"

    @property
    def evaluate_progress(self) -> Path:
        """`04_evaluate.progress.jsonl`: what step 04 is doing (the baseline's epochs, the explanation
        methods' stages), one JSON line each, beside the step's folder (written under a temporary name)."""
        return self.dir / "04_evaluate.progress.jsonl"

    @property
    def failure(self) -> Path:
        """`03_train/failure.txt`: the tracebacks of the ranks that stopped a multi-process fit."""
        return self.step("03") / "failure.txt"

    def predictions(self, split: str) -> Path:
        """`03_train/predictions_<split>.npz`: hadm_id, scores, and `best`, the id (`tree_hash`) of
        the best/ that scored them."""
        if split not in SCORED_SPLITS:
            raise ValueError(f"predictions exist for {', '.join(SCORED_SPLITS)}, not {split!r}")
        return self.trained / f"predictions_{split}.npz"

    @property
    def backbone(self) -> Path:
        """`03_train/backbone/`: the tiny backbone built for the run (when `model_path` is empty)."""
        return self.step("03") / "backbone"

    @property
    def mntp(self) -> Path:
        """The MNTP adapter (McGill's -mntp layout) and its history.csv."""
        return self.step("03") / "mntp"

    @property
    def mntp_last(self) -> Path:
        """MNTP's resume state."""
        return self.step("03") / "mntp_last"

    @property
    def tokens(self) -> Path:
        """`03_train/tokens/`: the token cache, `<split>-<hash>.npz`."""
        return self.step("03") / "tokens"

    @property
    def tokens_json(self) -> Path:
        """`03_train/tokens.json`: per split, the notes and tokens truncation drops (`train.token_stats`)."""
        return self.trained / "tokens.json"

    # 04
    @property
    def metrics(self) -> Path:
        return self.step("04") / "metrics.json"

    @property
    def per_code(self) -> Path:
        return self.step("04") / "per_code.parquet"

    # reports
    @property
    def reports(self) -> Path:
        return self.dir / "reports"

    def report(self, name: str, ext: str = "ipynb") -> Path:
        """`reports/<name>.<ext>`, e.g. `report("03_train", "html")`."""
        return self.reports / f"{name}.{ext}"

    def rel(self, path: Path) -> str:
        """`path` relative to the run folder, as manifests name artifacts (`01_preprocess/notes.parquet`)."""
        return Path(path).relative_to(self.dir).as_posix()


# ---------------------------------------------------------------- one cache rule

def content_key(parts) -> str:
    """A short hash of JSON-able `parts`: what produced an artifact (parameters, input hashes, code)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_key(folder: Path) -> str:
    """The cache key a cached folder was built with ("" when it has none)."""
    try:
        return (Path(folder) / KEY_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def write_key(folder: Path, key: str) -> None:
    """Record `key` in a folder being built (call it on `atomic_path`'s temporary folder)."""
    (Path(folder) / KEY_FILE).write_text(key + "\n")


def source_hash(*objects) -> str:
    """A short hash of the source code of modules, functions or classes: the code that produced an
    artifact, so an edit of that code rebuilds what it made and an edit elsewhere does not."""
    import inspect

    digest = hashlib.sha256()
    for obj in objects:
        digest.update(inspect.getsource(obj).encode())
    return digest.hexdigest()[:16]


def tree_hash(folder: Path, skip: tuple[str, ...] = ("backbone",)) -> str | None:
    """A short content hash of a folder's files (names and bytes), or None when it does not exist.

    Subfolders of `folder` named in `skip` are left out: a fully trained backbone is gigabytes and
    changes whenever the head beside it does, so the head identifies a model folder well enough."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == folder and d in skip))
        for name in sorted(files):
            path = Path(root) / name
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\1")
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- one writer at a time

LOCK_ENV = "ICDLIB_RUN_LOCKS"  # lock files held by this process or by the process that started it


class RunFolderError(IcdlibError):
    """A run folder that cannot be written."""


def unwritable(run_dir: Path, error: OSError) -> RunFolderError:
    """One line for a run folder that cannot be written: a read-only disk, no permission, a file
    where a folder should be (was a 20-line OSError traceback from `.lock`)."""
    where = f" ({shown_path(Path(error.filename))})" if error.filename else ""
    return RunFolderError(f"cannot write the run folder {shown_path(run_dir)}: {error.strerror or error}{where}; "
                          f"choose a writable --output-root (-p output_root=...)")


class RunLockedError(IcdlibError):
    """Another process is running a step in the run folder."""


def shown_path(path: Path) -> str:
    """`path` as the user probably typed it: relative to the working directory when under it."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def lock_holder(run_dir: Path) -> dict:
    """What `.lock` says about its holder: `{"pid", "step", "since"}` (empty when nothing is readable)."""
    try:
        holder = json.loads(Run(run_dir).lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def lock(run_dir: Path, step: str):
    """Hold the run folder for `step`: `flock` on `<run>/.lock`, with this pid, the step and the
    time written in it. A second holder gets `RunLockedError`, one line naming the first's pid:
    `run folder outputs/x is in use by pid 1234 (03_train since 10:02); wait for it or use another run`.

    Re-entrant: the process holding the lock, and the processes it starts (a notebook kernel of
    `icdlib run`, the torchrun workers `train.launch` spawns), pass through: the lock file is named
    in the environment variable ICDLIB_RUN_LOCKS while it is held. The kernel frees an flock when
    its holder exits, however it exits, so a killed run leaves no stale lock behind.
    """
    path = Run(run_dir).lock
    key = os.path.realpath(path)
    held = [p for p in os.environ.get(LOCK_ENV, "").split(os.pathsep) if p]
    if key in held:
        yield path
        return
    made = _missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise unwritable(run_dir, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(run_dir)
            since = holder.get("since")
            when = f" since {time.strftime('%H:%M', time.localtime(since))}" if isinstance(since, (int, float)) else ""
            who = f"pid {holder['pid']} ({holder.get('step', 'a step')}{when})" if holder.get("pid") else "another process"
            raise RunLockedError(f"run folder {shown_path(run_dir)} is in use by {who}; "
                                 f"wait for it or use another run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "step": step, "since": time.time()}) + "\n").encode(), 0)
        previous = os.environ.get(LOCK_ENV)
        os.environ[LOCK_ENV] = os.pathsep.join([*held, key])
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop(LOCK_ENV, None)
            else:
                os.environ[LOCK_ENV] = previous
            os.ftruncate(fd, 0)
            if made and os.listdir(path.parent) == [path.name]:  # the step wrote nothing: leave no folder behind
                _remove_made(path, made)
    finally:
        os.close(fd)  # releases the flock


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_made(lock_file: Path, made: list[Path]) -> None:
    """Remove the lock file and the empty folders `lock` made for it (while still holding the flock)."""
    lock_file.unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run's folder under the same new output root
            break
