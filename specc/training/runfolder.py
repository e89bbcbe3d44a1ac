"""The run folder as a unit: locked while a command writes it, marked `running` in run.json until
the run is complete, never mixed with another run's files; every artifact is written to a
temporary name and renamed into place, so an interrupted write never leaves half a file."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from specc.language.diagnostics import UsageError

LOCK = ".specc.lock"  # flock()ed while a command writes the folder; holds its pid
RUN_JSON = "run.json"
CHECKPOINT = "checkpoint.safetensors"
# What `specc train` writes. A new file in the run folder belongs here, or the next run into the
# folder takes it for a file of the user's (tests/test_runfolder.py trains a run and checks).
RUN_FILES = frozenset({"spec.spec", "model.safetensors", CHECKPOINT, "metrics.csv", "loss.png", "model.onnx",
                       RUN_JSON})
# What the learning-rate finder writes (`specc lr-find`, and `lr = find` in a stage).
_LR_FIND = re.compile(r"lr_find(_[A-Za-z_][A-Za-z0-9_]*)?\.(csv|png)|lr_find\.json")
# Leftovers of a killed writer: atomic_write's temporary names of specc's files, the old write probe.
_TEMP = re.compile(r"\.(.+)\.tmp[0-9]+|\.write-test[0-9]+")
STATUSES = ("running", "interrupted", "failed", "pruned", "complete")  # pruned: a trial specc tune stopped

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}


def is_run_file(name: str) -> bool:
    """One of the files `specc train` writes: RUN_FILES, and its TensorBoard event files."""
    from specc.training.tracking import EVENTS

    return name in RUN_FILES or EVENTS.fullmatch(name) is not None


def _is_temp(name: str) -> bool:
    """A temporary name atomic_write gives one of specc's own files (what a killed writer leaves)."""
    m = _TEMP.fullmatch(name)
    return m is not None and (m[1] is None or m[1] in RUN_FILES or _LR_FIND.fullmatch(m[1]) is not None)


def os_reason(err: OSError) -> str:
    """What an OSError means, in lowercase words."""
    return _REASONS.get(err.errno, (err.strerror or str(err)).lower())


class WriteError(UsageError):
    """A file could not be written (full disk, read-only, no permission): one line, naming the file."""


class RunFinished(Exception):
    """`--resume` of a run that has already finished: there is nothing to go on with."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                tmp.unlink()
    except OSError as err:  # ENOSPC and friends: the user's to fix, so one line, not a traceback
        raise WriteError(f"cannot write {path}: {os_reason(err)}") from None


@dataclass(frozen=True)
class Contents:
    """What a folder holds, as specc sees it."""

    status: str | None  # None: no run; else running, interrupted, failed, complete, or unknown
    resumable: bool  # a run with a checkpoint to go on from
    foreign: tuple[str, ...]  # entries specc did not write (a user's files, even under specc's names)
    run_files: tuple[str, ...]  # the run's own files
    lr_find: tuple[str, ...]  # the learning-rate finder's files
    record: dict  # run.json, when it is specc's
    trained: bool = True  # it got past its first epoch: a checkpoint, an epoch's weights, metrics or a model

    @property
    def replaceable(self) -> bool:
        """A run that stopped before its first epoch (a data error, a failed start, a kill): it has
        nothing to resume or keep, so the next run may replace it without --force."""
        return self.status in ("running", "interrupted", "failed") and not self.trained

    def describe(self) -> str:
        """`a finished run of 'collab'`, `a run that did not finish (interrupted)`..."""
        of = f" of '{self.record['spec']}'" if isinstance(self.record.get("spec"), str) else ""
        if self.status == "complete":
            return f"a finished run{of}"
        if self.status == "unknown":
            return f"a run whose {RUN_JSON} cannot be read"
        # a run.json that still says `running` while nobody holds the lock: its process was killed
        how = "stopped" if self.status == "running" else self.status
        return f"a run{of} that did not finish ({how})"


def _read_run_json(path: Path) -> dict | None:
    """run.json as specc wrote it; None when it is not specc's or cannot be read."""
    if not path.is_file():  # a folder, a FIFO or a device under that name is not read
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
        value = json.loads(text)
    except (OSError, ValueError):
        return None
    if isinstance(value, dict) and ("status" in value or {"spec", "overrides"} <= value.keys()):
        return value
    return None


def inspect_folder(path: Path) -> Contents:
    """Sort a folder's entries into the run's files, lr-find's, leftovers and the user's own."""
    run_files, lr_find, other = [], [], []
    try:
        entries = sorted(e.name for e in os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (or in the way: acquire says so)
        entries = []
    except OSError as err:
        raise WriteError(f"cannot read the run folder {path}: {os_reason(err)}") from None
    for name in entries:
        if name == LOCK or _is_temp(name):
            continue
        (run_files if is_run_file(name) else lr_find if _LR_FIND.fullmatch(name) else other).append(name)
    # {}: no run.json; None: a run.json that is not specc's (or cannot be read); else specc's own
    record = _read_run_json(path / RUN_JSON) if RUN_JSON in run_files else {}
    # specc writes run.json first, so a run is a folder with specc's run.json; a checkpoint alone is
    # a run of an older specc that was stopped. model.onnx and spec.spec alone may well be the user's.
    if not record and CHECKPOINT not in run_files:
        return Contents(None, False, tuple(other + run_files), (), tuple(lr_find), {})
    if record is None:
        status = "unknown"
    elif not record:
        status = "running"  # an older specc's run, stopped before it wrote run.json at its end
    else:
        status = record.get("status", "complete")  # older specc wrote run.json only at the end
        status = status if status in STATUSES else "unknown"
    return Contents(status, CHECKPOINT in run_files, tuple(other), tuple(run_files), tuple(lr_find), record or {},
                    _trained(path, run_files))


def _trained(path: Path, run_files: list[str]) -> bool:
    """Whether a run got past its first epoch: specc writes the initial weights (epoch -1) before
    training, then after each epoch the weights, the checkpoint and metrics.csv, at the end model.onnx."""
    if {CHECKPOINT, "metrics.csv", "model.onnx"} & set(run_files):
        return True
    return "model.safetensors" in run_files and _weights_epoch(path / "model.safetensors") != -1


def _weights_epoch(path: Path) -> int | None:
    """The epoch model.safetensors' metadata records (-1: the initial weights); None where it cannot be read."""
    if not path.is_file():  # a FIFO under that name would block the read
        return None
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size <= 1 << 26 else None
        epoch = header["__metadata__"]["specc.epoch"]
        return int(epoch)
    except (OSError, ValueError, TypeError, KeyError):
        return None


class RunFolder:
    """`runs/<spec name>/`: spec copy, weights, metrics, plots and the ONNX model."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: int | None = None
        self._created: list[Path] = []  # the folders acquire made, deepest first: removed again if left empty
        self.record: dict = {}

    # -- the lock --------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Create the folder and lock it; UsageError when another specc command holds the lock."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(self._not_a_folder())
        self._made()
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # another command removed the folder it made and left empty
                self._made()
                continue
            except OSError as err:
                raise WriteError(f"cannot write the run folder {self.path}: {os_reason(err)}") from None
            try:
                # flock, not a lock file's mere existence: the kernel lets go when the process
                # dies, however it dies, so a killed run never leaves a stale lock behind
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                why = self._in_use(fd)
                os.close(fd)
                raise UsageError(why) from None
            except OSError as err:
                os.close(fd)
                raise WriteError(f"cannot lock the run folder {self.path}: {os_reason(err)}") from None
            # A holder unlinks the lock file as it lets go; if this is that old file, lock the new one.
            try:
                held = os.fstat(fd)
                now = os.stat(lock)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._lock = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as err:
            self.release()
            raise WriteError(f"cannot write {lock}: {os_reason(err)}") from None

    def _not_a_folder(self) -> str:
        return f"cannot write the run folder {self.path}: it is a file, not a folder"

    def _in_use(self, fd: int) -> str:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        who = f" (pid {pid})" if pid.isdigit() else ""
        return f"{self.path} is in use by another specc command{who}; wait for it to finish, or choose another --out"

    def busy(self) -> str | None:
        """Why the folder cannot be had now: another specc command holds its lock (None: none
        does). Found without creating anything, for a refusal before any write."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: no holder (one keeps its file until it lets go)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._in_use(fd)
        except OSError:
            return None  # acquire says why, if it cannot lock it either
        finally:
            os.close(fd)  # and with it the lock, if this took it
        return None

    def _made(self) -> None:
        """Make the folder (and its parents), noting which of them did not exist before."""
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteError(f"cannot write the run folder {self.path}: {os_reason(err)}") from None
        self._created += [p for p in missing if p not in self._created]

    def release(self) -> None:
        """Let go of the lock (and remove the lock file, so a finished run folder holds none); the
        folders acquire made go again if nothing was written in them (a refusal writes nothing)."""
        fd, self._lock = self._lock, None
        if fd is None:
            return
        try:
            os.unlink(self.path / LOCK)
        except OSError:
            pass  # a lock file left behind is harmless: the lock is the flock, gone with the fd
        finally:
            os.close(fd)
        created, self._created = self._created, []
        for folder in created:
            try:
                folder.rmdir()  # only an empty one: another command's lock file or a run keeps it
            except OSError:
                break

    @contextlib.contextmanager
    def locked(self):
        """The folder, locked for the duration of the block."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    # -- the run ---------------------------------------------------------------------------------

    def contents(self) -> Contents:
        return inspect_folder(self.path)

    def refusal(self, force: bool = False, c: Contents | None = None) -> str | None:
        """Why `specc train` must not start a new run here (None: it may), as a one-line message.
        `c`: what the folder holds, when the caller has already looked."""
        if self.path.exists() and not self.path.is_dir():
            return self._not_a_folder()  # --force or not
        c = c or self.contents()
        if c.status is not None:
            if force or c.replaceable:
                return None
            if c.resumable and c.status != "complete":
                return (f"{self.path} holds {c.describe()}; go on with it with --resume {self.path}, replace it "
                        "with --force, or choose another --out")
            return f"{self.path} holds {c.describe()}; pass --force to replace it, or choose another --out"
        if c.foreign and not force:
            clash = [n for n in c.foreign if n in RUN_FILES]
            over = f" (it would overwrite {', '.join(clash)})" if clash else ""
            return (f"{self.path} holds files specc did not write ({_names(c.foreign)}); pass --force to train "
                    f"into it anyway{over}, or choose another --out")
        return None

    def begin(self, spec_name: str, spec_text: str, sets: list[str], force: bool = False,
              resume: bool = False) -> str | None:
        """Under the lock: refuse a folder that is not ours to write (see `refusal`), clear the
        previous run on --force or where it stopped before its first epoch, and mark the folder
        `running` until `end` or the final run.json. Returns what it replaced without --force, in words."""
        if self._lock is None:
            raise RuntimeError("RunFolder.begin needs the lock")  # a caller's mistake
        replaced = None
        if not resume:
            c = self.contents()
            why = self.refusal(force, c)
            if why is not None:
                raise UsageError(why)
            if c.status is not None:
                self._clear(c, spec_text, sets)
            if c.replaceable and not force:
                error = c.record.get("error")
                if isinstance(error, str) and len(error) > 160:
                    error = error[:157] + "..."
                replaced = f"{c.describe()} before its first epoch" + (f" ({error})" if isinstance(error, str) else "")
        self.record = {"status": "running", "spec": spec_name, "overrides": list(sets), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resume}
        self.write_json(RUN_JSON, self.record)
        return replaced

    def _clear(self, c: Contents, spec_text: str, sets: list[str]) -> None:
        """--force: remove the previous run's files (never the user's). Its lr-find results stay
        when it ran this same spec with the same --set values: a rerun then takes the same rates."""
        doomed = list(c.run_files) + ([] if self._same(c, spec_text, sets) else list(c.lr_find))
        doomed += [e.name for e in os.scandir(self.path) if _is_temp(e.name)]
        for name in doomed:
            try:
                os.unlink(self.path / name)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise WriteError(f"cannot remove {self.path / name}: {os_reason(err)}") from None

    def _read_spec(self) -> str | None:
        path = self.path / "spec.spec"
        if not path.is_file():
            return None
        try:
            return path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _same(self, c: Contents, spec_text: str, sets: list[str]) -> bool:
        """Whether the folder's run is of this spec text with these --set values."""
        return c.record.get("overrides") == list(sets) and self._read_spec() == spec_text

    def check_lr_find(self, spec_text: str, sets: list[str], force: bool = False) -> None:
        """`specc lr-find` writes lr_find.csv and .png into a folder that is new, or holds lr-find's
        files or a run of this same spec; anything else only with --force (UsageError)."""
        c = self.contents()
        if force:
            return
        if c.foreign:
            raise UsageError(f"{self.path} holds files specc did not write ({_names(c.foreign)}); pass --force to "
                             "write lr_find.csv and lr_find.png there anyway, or choose another --out")
        if c.status is not None and not self._same(c, spec_text, sets):
            raise UsageError(f"{self.path} holds {c.describe()}, with another spec or other --set values; pass "
                             "--force to write lr_find.csv and lr_find.png beside it anyway, or choose another --out")

    def end(self, status: str, error: str | None = None) -> None:
        """Mark the run `interrupted` or `failed` (best effort: on a full disk run.json may keep
        `running`, which reads as a run that did not finish all the same)."""
        record = dict(self.record, status=status)
        if error:
            record["error"] = error
        try:
            self.write_json(RUN_JSON, record)
        except WriteError:
            pass

    # -- writing ---------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.file(name)
        atomic_write(path, data)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, value) -> Path:
        return self.write_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def write_metrics(self, records, metric_names) -> Path:
        """metrics.csv: one row per epoch (stage, epoch, train_loss, valid_loss, metrics, lr, seconds); a
        run without validation rows (valid = none) leaves valid_loss and the metrics empty (NaN to pandas)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["stage", "epoch", "train_loss", "valid_loss", *metric_names, "lr", "seconds"])
        for r in records:
            writer.writerow([r.stage, r.epoch, f"{r.train_loss:.6g}", _number(r.valid_loss),
                             *(_number(r.metrics.get(m)) for m in metric_names), f"{r.lr:.6g}", f"{r.seconds:.3f}"])
        return self.write_text("metrics.csv", buf.getvalue())


def _names(names, limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _number(value: float | None) -> str:
    """A validation number as metrics.csv writes it: empty where there is none (valid = none)."""
    return "" if value is None else f"{value:.6g}"
