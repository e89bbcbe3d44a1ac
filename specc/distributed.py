"""Data-parallel training: the launcher's environment (torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT) -> a World, and the few collectives a run makes through torch.distributed: one
all-reduce a step (every gradient, the step's loss and the stop flag in one flat buffer), and
broadcasts from rank 0 of what one rank decides for all (validation numbers, lr-find's rate, the
checkpoint a run resumes from).

The spec means the same on any number of processes: `data.batch` is the global batch, every rank
draws the same seeded order of the rows and takes its slice of each batch, so the batches are a
single process's; the gradients are averaged over the ranks' equal slices, which is the mean over
the whole batch."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from specc.diagnostics import UsageError, first_line

TIMEOUT_ENV = "SPECC_DIST_TIMEOUT"  # seconds a collective waits for a rank before the run gives up
DEFAULT_TIMEOUT = 600.0  # as long as rank 0 may take over an epoch's validation while the others wait


class LostRank(Exception):
    """A collective failed: another process of the run died, or did not answer within the timeout."""


class PeerFailed(Exception):
    """Rank 0 could not start the run (its own error says why): the other ranks stop with it."""


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
    if size < 1:
        raise UsageError(f"WORLD_SIZE={env['WORLD_SIZE']}: expected at least 1 process")
    if size == 1:
        return ONE
    rank = _whole(env, "RANK")
    if not 0 <= rank < size:
        raise UsageError(f"RANK={rank}: expected a rank from 0 to {size - 1} (WORLD_SIZE={size})")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={size} but {' and '.join(missing)} not set: launch with torchrun, which "
                         "sets them, or set them as torchrun does")
    timeout = DEFAULT_TIMEOUT
    if env.get(TIMEOUT_ENV):
        try:
            timeout = float(env[TIMEOUT_ENV])
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise UsageError(f"{TIMEOUT_ENV}={env[TIMEOUT_ENV]}: expected a positive number of seconds")
    return World(rank, size, _whole(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, None, timeout)


def _whole(env, name: str) -> int:
    text = env.get(name)
    if text is None:
        raise UsageError(f"WORLD_SIZE is set but {name} is not: launch with torchrun, which sets both")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r}: expected a whole number") from None


def start(world: World, device_name: str) -> World:
    """Join the process group: NCCL with one GPU per local rank where there is CUDA (or
    `--device cuda`), else gloo on the CPU. The timeout bounds every collective, so a rank that
    dies or hangs makes the others stop rather than wait for ever."""
    if not world.parallel:
        return world
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={world.local_rank}, but torch sees {torch.cuda.device_count()} CUDA "
                             "devices here: start at most one process per GPU")
        torch.cuda.set_device(world.local_rank)
        device, backend = torch.device("cuda", world.local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=timedelta(seconds=world.timeout))
    except (RuntimeError, ValueError) as err:
        raise LostRank(f"rank {world.rank} could not join the other {world.size - 1} processes at "
                       f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {_backend_error(err)}") from None
    return replace(world, backend=backend, device=device)


def finish(world: World) -> None:
    """Leave the process group (once the run is over, however it ended)."""
    if world.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def _backend_error(err: BaseException) -> str:
    """A backend's error in a few words: its first sentence, without gloo's [source:line] prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err))
    return text.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def collective(world: World, what: str):
    """A collective call: its failure (a peer that died, the timeout) as LostRank, in words."""
    try:
        yield
    except RuntimeError as err:  # torch.distributed's DistError and the backends' errors are RuntimeErrors
        raise LostRank(f"rank {world.rank}: {what} failed: another process of the run has died or stopped "
                       f"answering (waited at most {world.timeout:g} s: {_backend_error(err)})") from None


def agree(world: World, ok: bool) -> bool:
    """Whether every rank is ok (one all-reduce of a flag): a rank that cannot go on says so, and
    the others stop with it rather than wait for it."""
    if not world.parallel:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=world.device)
    with collective(world, "agreeing to start"):
        dist.all_reduce(flag)
    return int(flag.item()) == 0


def broadcast_floats(world: World, values: list[float] | None, count: int) -> list[float]:
    """Rank 0's `count` numbers on every rank (float64: a validation loss arrives as it left)."""
    if not world.parallel:
        return list(values)
    buf = torch.zeros(count, dtype=torch.float64, device=world.device)
    if world.rank == 0:
        buf.copy_(torch.tensor(values, dtype=torch.float64))
    with collective(world, "sharing rank 0's numbers"):
        dist.broadcast(buf, 0)
    return buf.tolist()


def broadcast_bytes(world: World, data: bytes | None) -> bytes:
    """Rank 0's bytes on every rank (a checkpoint, a JSON object): the others need no shared disk."""
    if not world.parallel:
        return data or b""
    size = torch.tensor([len(data or b"") if world.rank == 0 else 0], dtype=torch.int64, device=world.device)
    with collective(world, "sharing rank 0's files"):
        dist.broadcast(size, 0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=world.device)
        if world.rank == 0 and data:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy().tobytes())


def broadcast_model(world: World, model: nn.Module) -> None:
    """Rank 0's weights and buffers on every rank, so that all start from the same numbers."""
    if not world.parallel:
        return
    with collective(world, "sharing the initial weights"), torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def barrier(world: World, what: str) -> None:
    if world.parallel:
        with collective(world, what):
            dist.barrier()


class StepSync:
    """After each rank's backward pass over its slice: one all-reduce (a sum, then / size) of a
    flat buffer that holds every gradient, the batchnorm running statistics, the step's loss and
    the stop flag. The gradients come back as the mean over the ranks' equal slices, which is the
    whole batch's mean gradient; the loss as the whole batch's; the stop flag set on every rank
    when any was asked to stop, so all stop before the same step. One flat buffer rather than
    DistributedDataParallel's buckets: the model stays the spec's own module (no `module.`
    prefix in its weights), the step stays one readable line of the loop, and the loss and the
    stop decision ride along at no extra cost; the price is no overlap of the all-reduce with the
    backward pass, which buckets give on large models."""

    def __init__(self, world: World, stop, model: nn.Module):
        self.world, self.stop = world, stop
        # running statistics change in every rank's forward pass: averaged with the gradients they
        # stay equal on every rank (each rank normalises with its own slice's statistics, though)
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __call__(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
        """The plain loop's step: average the gradients of the optimizer's parameters over the
        ranks; returns the whole batch's loss, and sets the stop request when any rank asked."""
        flag = bool(self.stop is not None and self.stop.signalled)
        loss, anyone = self.reduce(gradients(optimizer), loss, flag)
        if self.stop is not None and bool(anyone > 0):
            self.stop.requested = True
        return loss

    def reduce(self, grads: list, loss: torch.Tensor, flag: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The all-reduce itself, reading nothing back (so a CUDA graph can hold it): `grads` and
        the running statistics averaged in place; (the batch's loss, the sum of the flags) as tensors."""
        stats = [b for m in self.norms if m.training for b in (m.running_mean, m.running_var) if b is not None]
        parts = [g.reshape(-1) for g in grads] + [b.reshape(-1) for b in stats]
        tail = torch.stack([loss.detach().reshape(()).to(parts[0].dtype),
                            torch.full((), float(flag), dtype=parts[0].dtype, device=parts[0].device)])
        flat = torch.cat(parts + [tail])
        with collective(self.world, "averaging the gradients"):
            dist.all_reduce(flat)
        flat.div_(self.world.size)
        offset = 0
        with torch.no_grad():
            for t in grads + stats:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        return flat[-2], flat[-1] * self.world.size

    def agree_stop(self) -> None:
        """The device step's stop decision, taken apart from its steps (which read nothing back):
        one small all-reduce of the ranks' flags, at the same step on every rank."""
        flag = torch.tensor([1 if self.stop is not None and self.stop.signalled else 0], device=self.world.device)
        with collective(self.world, "agreeing to stop"):
            dist.all_reduce(flag)
        if self.stop is not None and int(flag.item()) > 0:
            self.stop.requested = True


def gradients(optimizer: torch.optim.Optimizer) -> list:
    """The optimizer's parameters' gradients, in its order (those that have one)."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


class SliceDropout(nn.Dropout):
    """Dropout whose mask is this rank's rows of the mask one process would draw for the whole
    batch: every rank draws the whole batch's mask from the seeded generator (which every rank
    advances alike) and keeps its own rows, so a 2-process run drops what a 1-process run drops.
    With one part it computes exactly what nn.Dropout does on the CPU (x * mask / (1 - p))."""

    def __init__(self, p: float, part: tuple[int, int]):
        super().__init__(p)
        self.part = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        rank, size = self.part
        rows = len(x)
        noise = x.new_empty((rows * size, *x.shape[1:])).bernoulli_(1 - self.p)
        return x * noise[rank * rows:(rank + 1) * rows].div_(1 - self.p)


def slice_dropout(model: nn.Module, part: tuple[int, int]) -> None:
    """Each nn.Dropout of the model as a SliceDropout of the same p taking `part`'s rows; nn.Dropout
    again with part None (for the export, which knows nn.Dropout)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if part is None and isinstance(child, SliceDropout):
                setattr(parent, name, nn.Dropout(child.p))
            elif part is not None and type(child) is nn.Dropout:
                setattr(parent, name, SliceDropout(child.p, part))


@contextlib.contextmanager
def whole_batches(model: nn.Module):
    """Within the block each rank's dropout draws as one process does over a whole batch (lr-find,
    which every rank runs whole)."""
    drops = [m for m in model.modules() if isinstance(m, SliceDropout)]
    parts = [m.part for m in drops]
    for m in drops:
        m.part = (0, 1)
    try:
        yield
    finally:
        for m, part in zip(drops, parts):
            m.part = part
