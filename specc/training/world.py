"""This process's place in a run: the launcher's environment (torchrun's RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT, and SPECC_DIST_TIMEOUT) -> a World. No torch: the command line
reads it before anything heavy is imported; specc.training.distributed joins the process group."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from specc.language.diagnostics import UsageError

if TYPE_CHECKING:
    import torch

TIMEOUT_ENV = "SPECC_DIST_TIMEOUT"  # seconds a collective waits for a rank before the run gives up
DEFAULT_TIMEOUT = 600.0  # as long as rank 0 may take over validation, or writing the model, while the others wait
MAX_PROCESSES = 2**31 - 1  # torch.distributed takes the world size as a C int
TIMEOUT_RANGE = (1.0, 1e9)  # below a second no run gets through its first validation; 1e9 s is 31 years


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank of `size`, its local rank on its machine (its
    GPU), the backend of the process group (None: one process, no group) and the device it trains on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    device: torch.device | None = None

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes the run folder, and prints anything but errors."""
        return self.rank == 0

    def part(self) -> tuple[int, int]:
        """(rank, size): which slice of each global batch is this rank's."""
        return self.rank, self.size


ONE = World()  # a plain run: no launcher, or a launcher's WORLD_SIZE=1


def from_env(environ=None) -> World:
    """The World torchrun describes in the environment; ONE without a launcher or with WORLD_SIZE=1
    (exactly a plain run). UsageError for a malformed or incomplete launcher environment."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return ONE
    size = _whole(env, "WORLD_SIZE")
    timeout = _timeout(env)  # checked whenever a launcher started this process, though one process waits for none
    if not 1 <= size <= MAX_PROCESSES:
        raise UsageError(f"WORLD_SIZE={_shown(env['WORLD_SIZE'])}: expected from 1 to {MAX_PROCESSES:,} processes")
    if size == 1:
        return ONE
    rank = _whole(env, "RANK")
    if not 0 <= rank < size:
        raise UsageError(f"RANK={rank}: expected a rank from 0 to {size - 1} (WORLD_SIZE={size})")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={size} but {' and '.join(missing)} not set: launch with torchrun, which "
                         "sets them, or set them as torchrun does")
    local = _whole(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    if not 0 <= local < size:
        raise UsageError(f"LOCAL_RANK={local}: expected a rank on this machine from 0 to {size - 1}")
    return World(rank, size, local, None, timeout)


def _timeout(env) -> float:
    """SPECC_DIST_TIMEOUT in seconds (DEFAULT_TIMEOUT when unset or empty); UsageError outside
    TIMEOUT_RANGE, for NaN, infinity and text (torch takes it as a timedelta, which overflows)."""
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    low, high = TIMEOUT_RANGE
    if not low <= seconds <= high:  # NaN fails both comparisons
        most = f"{high:.0e}".replace("e+0", "e")  # 1e9
        raise UsageError(f"{TIMEOUT_ENV}={_shown(env[TIMEOUT_ENV])}: expected a number of seconds from {low:g} to "
                         f"{most} (unset: {DEFAULT_TIMEOUT:g})")
    return seconds


def _whole(env, name: str) -> int:
    text = env.get(name)
    if text is None:
        raise UsageError(f"WORLD_SIZE is set but {name} is not: launch with torchrun, which sets both")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={_shown(text)}: expected a whole number") from None


def _shown(text: str) -> str:
    """An environment variable's value as a message quotes it: at most 40 characters."""
    return repr(text if len(text) <= 40 else text[:37] + "...")
