"""Where `specc tune` keeps its study: --out and --storage -> an Optuna storage, refused before Optuna writes
to it when it is not one (a FIFO, a file that is not SQLite, another application's tables, a newer Optuna's
schema), and opened under a lock, so that processes that start one new study at once share it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import stat
import time
from pathlib import Path

from specc.language.diagnostics import UsageError, first_line, os_text

DEFAULT = "study.db"  # in --out
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
OPTUNA_TABLES = {"studies", "trials", "alembic_version", "version_info"}
# every table an Optuna study's database holds (Optuna 4); a database of these alone, some of them, is
# Optuna's (perhaps still being created by another process, which creates them one at a time)
OPTUNA_SCHEMA = OPTUNA_TABLES | {"study_directions", "study_system_attributes", "study_user_attributes",
                                 "trial_heartbeats", "trial_intermediate_values", "trial_params",
                                 "trial_system_attributes", "trial_user_attributes", "trial_values", "sqlite_sequence"}
SQLITE_WAIT_S = 60  # how long a write waits for another process's (SQLite's own default is 5 s)
CREATE_TRIES = 3  # a database server has no lock of ours: creating its tables is tried again when another won

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind(path: Path) -> str | None:
    """What is at `path` in words ("a file", "a FIFO (named pipe)", ...); None where nothing is."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        return "a symbolic link that leads nowhere" if os.path.lexists(path) else None
    return next((name for test, name in _KINDS if test(mode)), "not a file or a folder")


def named(path: Path) -> str:
    """A path as a message shows it (a byte that is not UTF-8 as \\xNN)."""
    return os_text(str(path))


def shown(url: str) -> str:
    """A storage URL as it may be printed: never with its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", os_text(url))


def check_out(out: Path) -> None:
    """--out: a folder for the trials, or nothing yet (not a file, a FIFO, a run of its own); makes nothing."""
    from specc.training.runfolder import RunFolder

    what = kind(out)
    if what is not None and what != "a folder":
        raise UsageError(f"--out {named(out)}: is {what}, not a folder: the trials and the study go into a folder")
    if RunFolder(out).contents().status is not None:
        raise UsageError(f"--out {named(out)}: holds a run of its own; a study's trials go into a folder of their own: "
                         "choose another --out")


def make_out(out: Path) -> None:
    """Make --out (checked by check_out) where it is not there."""
    from specc.training.runfolder import os_reason

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {named(out)}: cannot be made: {os_reason(err)}") from None


def storage_url(storage: str | None, out: Path) -> str:
    """The study's database URL: --storage, else a SQLite file in --out."""
    if storage is None:
        return f"sqlite:///{(out / DEFAULT).resolve()}"
    if "://" not in storage:
        raise UsageError(f"--storage {storage!r}: expected a database URL, e.g. sqlite:///study.db or "
                         "postgresql://user:password@host/database")
    return storage


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for another database, or SQLite in memory."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise UsageError(f"--storage {shown(url)}: {first_line(err)}") from None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def check_sqlite(path: Path, where: str, creating: bool = False) -> None:
    """Refuse a SQLite study file that cannot be one, before Optuna creates its tables in it. `where`:
    how the messages name it (the --storage URL, or the file in --out). `creating`: another process may be
    creating Optuna's tables one at a time (outside creation_lock), so some of them alone pass; under the
    lock, tables are none or Optuna's whole set."""
    folder = kind(path.parent)
    if folder != "a folder":
        raise UsageError(f"{where}: the folder {named(path.parent)} {'is ' + folder if folder else 'does not exist'}")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # SQLite writes its journal beside the database
        raise UsageError(f"{where}: cannot write in the folder {named(path.parent)}: permission denied")
    what = kind(path)
    if what is None:
        return  # a new study
    if what != "a file":
        raise UsageError(f"{where}: is {what}, not a database file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise UsageError(f"{where}: cannot be read and written: permission denied")
    try:
        head = _head(path)
        if head is None:
            raise UsageError(f"{where}: is not a regular file (it changed while it was opened)")
        if not head:
            return  # an empty file is a new SQLite database
        if head != SQLITE_HEADER:
            raise UsageError(f"{where}: is not a SQLite database (it does not start as one)")
        tables = _tables(path)
    except OSError as err:
        from specc.training.runfolder import os_reason

        raise UsageError(f"{where}: cannot be read: {os_reason(err)}") from None
    except sqlite3.Error as err:
        raise UsageError(f"{where}: is not a SQLite database that can be read: {first_line(err)}") from None
    if tables - OPTUNA_SCHEMA if creating else tables and not OPTUNA_TABLES <= tables:
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UsageError(f"{where}: holds another application's tables ({listed}), not an Optuna study; "
                         "choose another --storage or --out")


def _head(path: Path) -> bytes | None:
    """The first bytes of a file, opened without blocking (a FIFO put in its place reads as None)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, len(SQLITE_HEADER))
    finally:
        os.close(fd)


def _tables(path: Path) -> set[str]:
    """The tables of a SQLite file, read without writing to it."""
    from urllib.parse import quote

    connection = sqlite3.connect(f"file:{quote(os.fsencode(path.resolve()))}?mode=ro", uri=True, timeout=SQLITE_WAIT_S)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        connection.close()


@contextlib.contextmanager
def creation_lock(database: Path | None):
    """Held while the storage and the study are created or opened: an flock on the folder of a SQLite
    database (two processes creating Optuna's tables at once fail on them), the folder itself so that
    nothing is left beside the user's file. Yields whether it is held: not for a server, nor where the
    file system refuses to lock a folder (open_storage then tries the creation again instead)."""
    if database is None:
        yield False
        return
    from specc.training.runfolder import os_reason

    try:
        fd = os.open(database.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"cannot open the folder of the study's database {named(database)}: "
                         f"{os_reason(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other process's creation, a fraction of a second
        except OSError:  # a network file system that does not lock folders
            yield False
            return
        yield True
    finally:
        os.close(fd)  # lets go of the lock


def open_storage(url: str, sqlite: bool, locked: bool, where: str):
    """Optuna's storage for the URL (its tables created where they are not there); UsageError for a
    database it cannot use. Unless `locked`, creating the tables is tried again when another process won."""
    import optuna
    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": SQLITE_WAIT_S}} if sqlite else {}
    tries = 0
    while True:
        tries += 1
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) \
                as err:
            # "UNIQUE constraint failed: alembic_version", "table studies already exists", "duplicate key"
            if locked or tries == CREATE_TRIES or not _lost_race(err):
                raise UsageError(f"{where}: {first_line(err)}") from None
            time.sleep(0.2 * tries)
        except (ValueError, ImportError, RuntimeError, sqlalchemy.exc.SQLAlchemyError) as err:
            # RuntimeError: a schema this Optuna does not know (a newer one's) or must upgrade (an older one's)
            raise UsageError(f"{where}: {first_line(err)}") from None


def _lost_race(err: Exception) -> bool:
    """Whether a database error is another process creating the same tables at the same time."""
    text = str(err).lower()
    return any(words in text for words in ("unique", "duplicate", "already exists"))
