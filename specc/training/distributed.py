"""Data-parallel training: this process's World (specc.training.world) -> its process group, and
the few collectives a run makes through torch.distributed: one all-reduce a step (every gradient,
the step's loss and the stop flag in one flat buffer), and broadcasts from rank 0 of what one rank
decides for all (validation numbers, lr-find's rate, the checkpoint a run resumes from).

The spec means the same on any number of processes: `data.batch` is the global batch, every rank
draws the same seeded order of the rows and takes its slice of each batch, so the batches are a
single process's; the gradients are averaged over the ranks' equal slices, which is the mean over
the whole batch."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from specc.language.diagnostics import UsageError, first_line
from specc.model.lower import declared_modules
from specc.training.world import TIMEOUT_ENV, World


class LostRank(Exception):
    """A collective failed: another process of the run died, or did not answer within the timeout."""


class PeerFailed(Exception):
    """Rank 0 could not start the run, or write its model (its own error says why): the other ranks stop with it."""


class Disagreement(Exception):
    """The ranks are not about to train the same thing (other options, another spec, other data):
    every rank stops before training, and rank 0 alone says what differs (the message)."""


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
    # torch.distributed.nn.functional binds the default group into its functions' default arguments
    # (`group=group.WORLD`) when it is imported. torch._dynamo imports it, and the optimizer's first
    # step imports torch._dynamo: imported after the group is made, it would keep the group alive
    # past destroy_process_group, and the backend's threads would still be running while the
    # interpreter shuts down, where gloo's, freeing a finished collective's tensors, abort the
    # process ("terminate called without an active exception"). Imported first, it binds None.
    from torch.distributed.nn import functional  # noqa: F401

    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=timedelta(seconds=world.timeout))
    except (RuntimeError, ValueError) as err:
        raise LostRank(f"rank {world.rank} could not join the other {world.size - 1} processes at "
                       f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {_backend_error(err)}") from None
    return replace(world, backend=backend, device=device)


def finish(world: World) -> None:
    """Leave the process group (once the run is over, however it ended): the backend's threads end
    here, while the interpreter is whole (see `start` for what kept them running before)."""
    if world.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def _backend_error(err: BaseException) -> str:
    """A backend's error in a few words: its first sentence, without gloo's [source:line] prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err))
    return text.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def collective(world: World, what: str):
    """A collective call: its failure as LostRank, in words: a peer that died (its connection
    closed: at once), or one that did not answer within the timeout (said only then)."""
    began = time.monotonic()
    try:
        yield
    except RuntimeError as err:  # torch.distributed's DistError and the backends' errors are RuntimeErrors
        reason = _backend_error(err)
        if "timed out" in reason.lower() or time.monotonic() - began >= world.timeout:
            how = (f"did not answer within {world.timeout:g} s ({reason}; {TIMEOUT_ENV} sets how long the "
                   "others wait)")
        else:
            how = f"has died or left ({reason})"
        raise LostRank(f"rank {world.rank}: {what} failed: another process of the run {how}") from None


def agree(world: World, ok: bool, what: str = "agreeing to start") -> bool:
    """Whether every rank is ok (one all-reduce of a flag): a rank that cannot go on says so, and
    the others stop with it rather than wait for it."""
    if not world.parallel:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=world.device)
    with collective(world, what):
        dist.all_reduce(flag)
    return int(flag.item()) == 0


WRITING = "waiting for rank 0 to write the model"


@contextlib.contextmanager
def rank_0_writes(world: World):
    """Rank 0 writing the trained run's last files (model.onnx, run.json) while the other ranks wait
    in `wait_for_rank_0`: they leave only once it has, so nothing that happens as they exit can
    stop rank 0 before its model is written (torchrun stops every worker when one fails), and
    they exit as it does: 1 when it could not write them."""
    try:
        yield
    except BaseException:
        if world.parallel:
            with contextlib.suppress(Exception):
                agree(world, False, WRITING)
        raise
    agree(world, True, WRITING)


def wait_for_rank_0(world: World) -> None:
    """A rank other than 0, its training done: wait until rank 0 has written the model (PeerFailed
    when it could not; its error says why)."""
    if not agree(world, True, WRITING):
        raise PeerFailed("rank 0 could not write the model (its error says why)")


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


# ---------------------------------------------------------------- every rank trains the same thing

PARTS = ("options", "spec", "data")  # what the ranks compare, in the order a message names them
PART_NAMES = {"options": "command line", "spec": "spec", "data": "data"}
DIGEST = hashlib.sha256().digest_size
COMPARING = "comparing the processes' spec and data"


def same_run(world: World, spec, sets, prepared, **flags) -> None:
    """Disagreement unless every rank is about to train the same thing: the same command-line
    options (the --set values `sets`, and `flags` such as resume=True), the same checked spec and
    the same prepared data. Every rank calls it once its data is prepared, before any collective
    whose shapes or number depend on them: a rank with other data would abort in the backend, one
    with another batch would hang, one with another rate would train to something else in silence.
    One all-gather of a fixed-size digest of each part; only where they differ do the ranks send
    their whole accounts, so that rank 0 can say what differs."""
    if not world.parallel:
        return
    account = {"options": options_text(sets, flags), "spec": spec_fields(spec), "data": data_summary(prepared)}
    digest = b"".join(hashlib.sha256(json.dumps(account[part]).encode()).digest() for part in PARTS[:2])
    digests = _all_gather(world, digest + data_digest(prepared))
    if len(set(digests)) == 1:
        return
    texts = _all_gather_text(world, json.dumps(account))
    raise Disagreement(disagreement([json.loads(t) for t in texts], digests))


def options_text(sets, flags: dict) -> str:
    """The options that change what a rank trains, as a command line gives them."""
    import shlex

    words = [f"--set {shlex.quote(s)}" for s in sets]
    for name, value in flags.items():
        if value is True:
            words.append(f"--{name.replace('_', '-')}")
        elif value not in (False, None):
            words.append(f"--{name.replace('_', '-')}={value}")
    return " ".join(words)


def spec_fields(spec) -> list[tuple[str, str]]:
    """The checked spec as (field, value) pairs such as ("data.batch", "32"): every field its
    dataclasses show (no spans, no source text) but its name, an item of a tuple by its own name
    where it has one, and a file by its name alone (two machines may keep the same data in other
    folders: the data's digest compares their contents)."""
    pairs: list[tuple[str, str]] = []

    def walk(key: str, value) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                if f.repr:
                    walk(f"{key}.{f.name}", getattr(value, f.name))
        elif isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
            for k, item in enumerate(value):
                walk(f"{key}[{getattr(item, 'name', k)}]", item)
        else:
            pairs.append((key, repr(value.name if isinstance(value, Path) else value)))

    for f in dataclasses.fields(spec):
        if f.repr and f.name != "name":
            walk(f.name, getattr(spec, f.name))
    return pairs


def data_summary(prepared) -> dict[str, str]:
    """What a message says of a rank's data: the file, the rows, each category column's number of
    categories and each float column's mean."""
    summary = {"file": str(prepared.path), "training rows": f"{prepared.n_train:,}",
               "validation rows": f"{prepared.n_valid:,}"}
    summary.update({name: f"{len(vocab.values):,} categories" for name, vocab in prepared.vocabs.items()})
    summary.update({name: f"mean {stats.mean:.6g}" for name, stats in (prepared.stats or {}).items()})
    return summary


def data_digest(prepared) -> bytes:
    """A digest of the prepared data: every training and validation array (its name, type, shape and
    bytes), the vocabularies and the float columns' statistics."""
    import numpy as np

    from specc.data.prepare import vocabs_to_json

    digest = hashlib.sha256()
    for arrays in (prepared.train, prepared.valid):
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
            digest.update(repr(array.tolist()).encode() if array.dtype.hasobject else array.reshape(-1).view(np.uint8))
    digest.update(vocabs_to_json(prepared.vocabs).encode())
    digest.update(json.dumps({k: v.to_json() for k, v in (prepared.stats or {}).items()}, sort_keys=True).encode())
    return digest.digest()


def disagreement(accounts: list[dict], digests: list[bytes]) -> str:
    """Rank 0's words for how the others' accounts differ from its own: a line a part, naming the
    first rank that differs there."""
    lines, parts = [], []
    for k, part in enumerate(PARTS):
        piece = slice(k * DIGEST, (k + 1) * DIGEST)
        others = [r for r in range(1, len(digests)) if digests[r][piece] != digests[0][piece]]
        if not others:
            continue
        rank = others[0]
        also = f" (so do ranks {', '.join(map(str, others[1:]))})" if len(others) > 1 else ""
        how = DIFFERENCES[part](accounts[rank][part], accounts[0][part], rank)
        lines.append(f"rank {rank}'s {PART_NAMES[part]} differs from rank 0's{also}: {how}")
        parts.append(PART_NAMES[part])
    which = " and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}"
    return (f"the processes of the run differ in their {which}, so none starts training:\n  " + "\n  ".join(lines)
            + "\n  start every process with the same command, spec and data")


def _options_differ(mine: str, zero: str, rank: int) -> str:
    return f"{mine or '(no options)'} against {zero or '(no options)'}"


def _specs_differ(mine: list, zero: list, rank: int) -> str:
    a, b = (dict(map(tuple, pairs)) for pairs in (mine, zero))
    keys = list(a) + [k for k in b if k not in a]
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if not differ:  # the digests differ, the fields do not: cannot be, but say so rather than nothing
        return "in a way its fields do not show"
    key = differ[0]
    if key not in b:
        first = f"{key} = {a[key]}, which rank 0's lacks"
    elif key not in a:
        first = f"no {key}, where rank 0's is {b[key]}"
    else:
        first = f"{key} = {a[key]} against {b[key]}"
    more = len(differ) - 1
    return first + (f" (and {more} more difference{'s' * (more > 1)})" if more else "")


def _data_differ(mine: dict, zero: dict, rank: int) -> str:
    differ = [f"{k}: {mine.get(k, 'none')} against {zero.get(k, 'none')}"
              for k in list(mine) + [k for k in zero if k not in mine] if k != "file" and mine.get(k) != zero.get(k)]
    how = "; ".join(differ) or "the same numbers of rows and categories, but other values"
    where = (f"both read {zero['file']}" if mine["file"] == zero["file"]
             else f"rank {rank} read {mine['file']}, rank 0 {zero['file']}")
    return f"{how} ({where})"


DIFFERENCES = {"options": _options_differ, "spec": _specs_differ, "data": _data_differ}


def _all_gather(world: World, data: bytes) -> list[bytes]:
    """Every rank's `data` (as many bytes on each), in rank order."""
    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(world.device)
    parts = [torch.empty_like(mine) for _ in range(world.size)]
    with collective(world, COMPARING):
        dist.all_gather(parts, mine)
    return [bytes(part.cpu().numpy().tobytes()) for part in parts]


def _all_gather_text(world: World, text: str) -> list[str]:
    """Every rank's `text` (of any length), in rank order: the lengths first, then each padded to the longest."""
    data = text.encode()
    sizes = [int.from_bytes(n, "little") for n in _all_gather(world, len(data).to_bytes(8, "little"))]
    padded = _all_gather(world, data.ljust(max(sizes), b"\0"))
    return [part[:size].decode() for part, size in zip(padded, sizes)]


class StepSync:
    """After each rank's backward pass over its slice: one all-reduce (a sum, then / size) of a
    flat buffer that holds every gradient, the running statistics of the ops that keep batch
    statistics (OpDef.batch_statistics: batchnorm), the step's loss and the stop flag. The
    gradients come back as the mean over the ranks' equal slices, which is the
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
        self.norms = declared_modules(model, "batch_statistics")

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
        stats = [b for m in self.norms if m.training for b in m.buffers(recurse=False) if b.is_floating_point()]
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


class RowSlices:
    """This rank's rows of what the ops that draw random numbers per row (OpDef.random_per_row:
    dropout) draw for the whole batch. A hook before each such module gives it a batch of the whole
    batch's shape (this rank's rows in their place, zeros in the others'), so that it draws its
    numbers as one process does, from the seeded generator that every rank advances alike; a hook
    after it keeps this rank's rows of its output. So N processes drop what one drops, bit for bit.
    A module in evaluation mode, or one part (`part` = (rank, size)), runs as it is."""

    def __init__(self, model: nn.Module, part: tuple[int, int]):
        self.part = part
        self.handles = [handle for m in declared_modules(model, "random_per_row")
                        for handle in (m.register_forward_pre_hook(self._whole), m.register_forward_hook(self._mine))]

    def _sliced(self, module: nn.Module) -> bool:
        return module.training and self.part[1] > 1

    def _whole(self, module: nn.Module, args: tuple):
        if not self._sliced(module):
            return None
        rank, size = self.part
        return tuple(spread(a, rank, size) if torch.is_tensor(a) else a for a in args)

    def _mine(self, module: nn.Module, args: tuple, out: torch.Tensor):
        if not self._sliced(module):
            return None
        rank, size = self.part
        rows = len(out) // size
        return out[rank * rows:(rank + 1) * rows]

    def remove(self) -> None:
        """The modules run as they are again."""
        for handle in self.handles:
            handle.remove()


def spread(x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """`x` as rank `rank`'s rows of a batch `size` times as long, zeros in the other ranks' rows."""
    rows, shape = len(x), x.shape[1:]
    return torch.cat([x.new_zeros((rank * rows, *shape)), x, x.new_zeros(((size - rank - 1) * rows, *shape))])


@contextlib.contextmanager
def data_parallel(world: World, model: nn.Module, stop):
    """A stage's data parallelism: for the block, the model's random-per-row ops draw the whole
    batch's numbers (RowSlices), and the StepSync it yields all-reduces each step; in one process
    it yields None and changes nothing."""
    if not world.parallel:
        yield None
        return
    slices = RowSlices(model, world.part())
    try:
        yield StepSync(world, stop, model)
    finally:
        slices.remove()
