"""Memory: this machine (SPECC_MEMORY, the cgroup's limit, /proc/meminfo) -> the bytes a run may
hold, which `check` weighs a spec's training against and the data readers stop at (no torch)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from specc.language import codes
from specc.language.diagnostics import DataError, UsageError

MEMORY_ENV = "SPECC_MEMORY"  # the budget in bytes (8G, 512M, ...), in place of what the machine says
OBJECT_BYTES = 64  # a text value in a numpy object array: its pointer and a short Python str
BUDGET_NOTE = f"{MEMORY_ENV}=SIZE (such as 8G) sets the memory specc counts on, where it knows better"
UNLIMITED = 1 << 62  # a cgroup limit at or above this is no limit (cgroup v1 writes 2^63 - page size)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Budget:
    """The bytes a run may hold, and where the number comes from, for messages."""

    bytes: int
    source: str

    def __str__(self) -> str:
        return f"the {shown_bytes(self.bytes)} of memory available ({self.source})"


# What a data reader may decode: a quarter of the budget, because preparing the data holds about
# four times what is read at its peak (the columns as read, split in two, encoded, and np.unique's
# sorted copies: bench/load.py measured 2.6 GB for the 0.6 GB of 25M ratings).
DATA_SHARE = 4


def data_limit(env=None) -> Budget:
    """The bytes a reader may decode from a data file (see DATA_SHARE)."""
    whole = budget(env)
    return Budget(whole.bytes // DATA_SHARE, f"a quarter of {whole}")


def too_much_data(path: str, what: str, limit: Budget, line: int | None = None) -> DataError:
    """The error of a reader that stopped at its limit (D113): `what` it found, in words."""
    return DataError(path, f"{what}, more than the {shown_bytes(limit.bytes)} specc reads a data file into: "
                     f"{limit.source}, as preparing the data holds about {DATA_SHARE} times what is read; "
                     f"{MEMORY_ENV}=SIZE sets the memory specc counts on", line=line, code=codes.TOO_MUCH_DATA)


def parse_size(text: str) -> int:
    """A size of memory as people write it: `8G`, `512M`, `1.5GiB`, `2e9` (K, M, G, T, P in powers
    of 1024, as docker's --memory and ulimit count; B and iB after them are optional). UsageError
    for anything else, and for a size that is not positive and finite."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"{MEMORY_ENV}={text!r}: expected a size of memory such as 8G or 512M (bytes, or K, M, G, "
                         "T in powers of 1024)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not math.isfinite(value) or value < 1 or value >= 2.0 ** 63:
        raise UsageError(f"{MEMORY_ENV}={text!r}: expected a positive size of memory below 8 EiB, such as 8G")
    return int(value)


def budget(env=None, root: Path = Path("/")) -> Budget:
    """What a run may hold: SPECC_MEMORY when it is set; else the memory the system can still give
    (the least of the cgroup's room and MemAvailable) plus what this process already holds, which
    is what it counts as its own (its data, once read); else the machine's physical memory.
    `root` is where /proc and /sys are (tests give a folder of their own)."""
    env = os.environ if env is None else env
    if env.get(MEMORY_ENV) is not None:
        return Budget(parse_size(env[MEMORY_ENV]), f"{MEMORY_ENV}={env[MEMORY_ENV]}")
    rooms = [(room, what) for room, what in ((cgroup_room(root), "the room left under this cgroup's memory limit"),
                                            (_meminfo(root, "MemAvailable"), "MemAvailable"))
             if room is not None]
    if rooms:
        room, what = min(rooms)
        return Budget(room + resident(root), f"{what}, and what specc holds")
    physical = physical_memory()
    if physical is not None:
        return Budget(physical, "this machine's physical memory")
    return Budget(UNLIMITED, "the system does not say how much there is")


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def resident(root: Path = Path("/")) -> int:
    """This process's resident memory in bytes (0 where /proc does not say)."""
    try:
        pages = int((root / "proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _meminfo(root: Path, key: str) -> int | None:
    """A line of /proc/meminfo in bytes (`MemAvailable:  24103704 kB`), None where there is none."""
    try:
        text = (root / "proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def cgroup_room(root: Path = Path("/")) -> int | None:
    """The bytes this process's cgroup may still take before its memory limit (cgroup v2's
    memory.max, or v1's memory.limit_in_bytes, of its own group or the nearest limited one above
    it): the limit less the usage, plus the file cache the kernel gives back first. None without
    a limit."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            found.append(_room(root / "sys/fs/cgroup", path, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):
            found.append(_room(root / "sys/fs/cgroup/memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                               "total_inactive_file"))
    rooms = [r for r in found if r is not None]
    return min(rooms) if rooms else None


def _room(base: Path, path: str, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    """The room under the nearest limit at `path` or above it (up to `base`); in a container the
    group's own path is often not there, and its limit is at `base` itself."""
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        folder = base.joinpath(*parts[:depth])
        limit = _number(folder / limit_file)
        if limit is None or limit >= UNLIMITED:
            continue
        usage = _number(folder / usage_file) or 0
        cache = 0
        try:
            stat = (folder / "memory.stat").read_text()
            found = re.search(rf"^{cache_key} (\d+)", stat, re.MULTILINE)
            cache = int(found.group(1)) if found else 0
        except OSError:
            pass
        return max(0, limit - usage + cache)
    return None


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # `max`: no limit


def allocation_failed(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) is an allocation that failed: numpy's
    MemoryError, torch's CPU allocator ("can't allocate memory"), CUDA's "out of memory"."""
    while err is not None:
        text = str(err)
        if isinstance(err, MemoryError) or isinstance(err, RuntimeError) and (
                "can't allocate memory" in text or "out of memory" in text.lower()):
            return True
        err = err.__cause__
    return False


def shown_bytes(n: float) -> str:
    """A size for people, in powers of 1024: `8.0 GiB`, `512 MiB`, `640 bytes`."""
    for unit, size in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} {unit}"
    return f"{int(n):,} bytes"
