"""Stages and steps: a stage of the plan + the model and its training batches -> the stage's set-up
(frozen groups, optimizer) and the steps of each epoch, with the epoch's losses and learning rates.

One interface (`Steps`) and three ways behind it, chosen once per run: the plain loop
(PlainSteps: index a batch, forward, backward, optimizer and scheduler step) and specc.training.fastpath's
device-resident step (DeviceSteps), taken as it is or replayed from a CUDA graph. The step factory
(`step_factory`) makes them; in data-parallel training its steps all-reduce, which the loop never
sees (specc.training.distributed.data_parallel), as nanoGPT's loop never sees DDP."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from specc.data.augment import augmenter
from specc.language.spec import Spec
from specc.model.plan import TrainPlan
from specc.training import fastpath
from specc.training.distributed import barrier, broadcast_model, data_parallel
from specc.training.implicit import implicit_loss, negatives_drawer
from specc.training.metrics import batch_loss
from specc.training.optim import make_optimizer, make_scheduler, module_groups, schedule_tables, stage_groups
from specc.training.world import World

CHECK_EVERY = 64  # steps between looks at the plain loop's losses for NaN (one host sync each)

# How train() takes its steps (run.json's "loop"): the plain loop, the device-resident step with
# torch's AdamW or with fastpath.FlatAdam, and the FlatAdam step replayed from a CUDA graph.
PLAIN, DEVICE, DEVICE_FLAT, CUDA_GRAPH = "plain", "device-step", "device-step-flat", "cuda-graph"


def loop_kind(spec, device: torch.device, device_step: bool | str, graph: bool | None,
              parallel: bool = False) -> str:
    """The loop train() takes (see its docstring); ValueError for a CUDA graph where none can be.
    Data-parallel training (`parallel`) takes the plain loop unless asked for another: its
    captured step, with the all-reduce inside the graph, is still to be measured on a GPU."""
    reason = fastpath.graph_reason(spec, device)
    if graph is None:
        graph = reason is None and not device_step and not parallel
    elif graph and reason is not None:
        raise ValueError(f"no CUDA-graph step: {reason}")  # a caller's mistake
    if graph:
        return CUDA_GRAPH
    if device_step and spec.data.augment is not None:
        raise ValueError("no device step: the spec augments its images, which only the plain loop does")
    if device_step and spec.data.feedback is not None:
        raise ValueError("no device step: implicit feedback draws negatives, which only the plain loop does")
    if device_step:
        return DEVICE_FLAT if device_step == "flat" else DEVICE
    return PLAIN


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, stage: str, epoch: int, step: int, lr: float):
        self.stage, self.epoch, self.step, self.lr = stage, epoch, step, lr
        super().__init__(f"the loss became NaN or infinite in stage '{stage}', epoch {epoch}, step {step} "
                         f"(lr {lr:.3g}); try a smaller learning rate, or set stop_on_nan = false to go on")


class NanWatch:
    """Looks at losses for NaN or infinity: stops the run (stop_on_nan), or warns (once per run:
    the plain loop looks no more after `warned`)."""

    def __init__(self, stop_on_nan: bool, quiet: bool = False):
        self.stop_on_nan, self.warned, self.quiet = stop_on_nan, False, quiet  # quiet: a rank other than 0

    def look(self, recent: torch.Tensor, offset: int, lrs: list, stage: str, epoch: int) -> None:
        """`recent` are the epoch's losses from step `offset` on; `lrs` the epoch's rates so far."""
        if bool(torch.isfinite(recent).all()):
            return
        first = offset + int((~torch.isfinite(recent)).nonzero()[0, 0])
        if self.stop_on_nan:
            raise TrainingDiverged(stage, epoch, first, lrs[first])
        self.warned = True
        if not self.quiet:
            print(f"specc: warning: the loss became NaN or infinite in stage '{stage}', epoch {epoch}, step "
                  f"{first} (lr {lrs[first]:.3g}); going on because stop_on_nan = false", file=sys.stderr)


@dataclass(frozen=True)
class Batches:
    """The training split as tensors on the device, taken `size` rows at a time by index; an epoch
    is `steps` batches (the last incomplete one is dropped)."""

    xs: list  # the model's input columns, in its order
    y: torch.Tensor
    size: int  # the global batch (data.batch), whatever the number of processes
    steps: int
    part: tuple[int, int] = (0, 1)  # (rank, size): each process trains on its slice of every batch
    interactions: object = None  # implicit feedback's training pairs (specc.training.implicit.Interactions)

    @property
    def rows(self) -> int:
        return len(self.y)

    def mine(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole batch's tensor (all of it in a single process)."""
        rank, size = self.part
        if size == 1:
            return t
        share = self.size // size
        return t[rank * share:(rank + 1) * share]


@dataclass(frozen=True)
class StageSetup:
    """A stage ready to train: the optimizer over its groups that train, their parameters (in the
    optimizer's order: the l2 penalty's), the frozen groups' modules, and whether lr-find picks
    the rate (`find`: the optimizer holds a placeholder until then)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list
    frozen: list
    find: bool


def setup_stage(spec: Spec, model, plan: TrainPlan, stage) -> StageSetup:
    """Freeze the stage's frozen groups and make the optimizer over the others, each at its peak
    rate (1e-3 where lr = find, until the finder has picked one)."""
    owners = module_groups(model)
    frozen_groups = {g.name for g, lr in zip(plan.groups, stage.lrs) if lr is None}
    frozen = [m for name, m in model.named_children() if owners.get(name) in frozen_groups]
    for name, module in model.named_children():
        module.requires_grad_(owners.get(name) not in frozen_groups)
    train_mode(model, frozen)
    groups = stage_groups(model, owners, plan, stage)
    find = any(lr != lr for _, lr in groups)  # lr = find: NaN until the finder has run
    optimizer = make_optimizer(spec.train.optimizer, [(ps, 1e-3 if find else lr) for ps, lr in groups])
    return StageSetup(model, optimizer, [p for ps, _ in groups for p in ps], frozen, find)


def train_mode(model, frozen: list) -> None:
    """Training mode, except frozen groups: their batchnorm statistics and dropout stay as in eval."""
    model.train()
    for module in frozen:
        module.eval()


class Steps(Protocol):
    """A stage's way of taking its steps. An epoch is start_epoch, step(s) for each step s in turn,
    then end_epoch (also on a stop request, after the steps taken)."""

    def start_epoch(self, epoch: int, perm: torch.Tensor, first: int, losses: torch.Tensor, lrs: list) -> None:
        """A new epoch (or a stopped one from step `first`, with its losses and rates so far) in `perm`'s order."""

    def step(self, s: int) -> None:
        """Take the epoch's step `s`."""

    def losses(self, start: int, stop: int) -> torch.Tensor:
        """The raw losses of the epoch's steps start..stop-1 (taken already)."""

    def end_epoch(self, done: int) -> tuple[torch.Tensor, list]:
        """The epoch's raw losses and last-group learning rates of its first `done` steps."""

    def lr(self) -> float:
        """The last group's learning rate of the next step."""

    def optimizer_state(self) -> dict:
        """The optimizer's state dict, as a checkpoint keeps it."""

    def scheduler_state(self) -> dict | None:
        """The schedule's state dict (None for a constant rate)."""


def run_epoch(steps: Steps, first: int, total: int, stop, listener) -> int:
    """Steps `first`..total-1 of an epoch, the listener told after each (Listener.on_step); returns
    the step a stop request came before (`total` when none came)."""
    on_step = listener.on_step
    for s in range(first, total):
        if stop is not None and stop.requested:
            return s
        steps.step(s)
        on_step(s)
    return total


@dataclass(frozen=True)
class StepFactory:
    """Every stage's steps, taken the run's one way (`loop`, chosen once). In data-parallel
    training (`world`) a stage's steps all-reduce each step's gradients, loss and stop flag, and
    the ops that draw random numbers per row draw the whole batch's, each rank keeping its rows
    (specc.training.distributed.data_parallel): the loop that asks for the steps never sees it."""

    spec: Spec
    loop: str
    device: torch.device
    watch: NanWatch
    world: World
    stop: object  # the run's specc.training.loop.StopRequest, or None

    @contextlib.contextmanager
    def steps(self, stage, setup: StageSetup, batches: Batches, resumed=None) -> Iterator[Steps]:
        """The stage's steps (see stage_steps), for the block."""
        with data_parallel(self.world, setup.model, self.stop) as sync:
            yield stage_steps(self.loop, self.spec, stage, setup, batches, self.watch, self.device, resumed, sync)


@contextlib.contextmanager
def step_factory(spec: Spec, model, device: torch.device, options, stop) -> Iterator[StepFactory]:
    """The run's StepFactory for the block, its loop chosen from `options` (a
    specc.training.options.RunOptions: device_step, graph, world). Every rank starts from rank 0's
    weights; once every stage is done, each waits for the others (then rank 0 writes the model)."""
    world = options.world
    loop = loop_kind(spec, device, options.device_step, options.graph, world.parallel)
    broadcast_model(world, model)  # every rank starts from rank 0's numbers
    yield StepFactory(spec, loop, device, NanWatch(spec.train.stop_on_nan, quiet=not world.writes), world, stop)
    barrier(world, "waiting for every rank to finish")


def stage_steps(loop: str, spec, stage, setup: StageSetup, batches: Batches, watch: NanWatch, device,
                resumed=None, sync=None) -> Steps:
    """The stage's steps, the `loop` way, with its schedule from the optimizer's rates on; `resumed`
    (a specc.training.checkpoint.TrainState stopped within this stage) puts the optimizer's and the
    schedule's state back; `sync` (specc.training.distributed.StepSync) averages the ranks' gradients."""
    optimizer = setup.optimizer
    peaks = [g["lr"] for g in optimizer.param_groups]
    total = batches.steps * stage.epochs
    scheduler = make_scheduler(stage.fit, spec.train.optimizer, optimizer, total)
    saved = resumed is not None and bool(resumed.optimizer["param_groups"])
    if saved:
        # cloned: torch's load_state_dict keeps tensors that are already right, and the steps
        # would then change the caller's TrainState in place
        optimizer.load_state_dict({"state": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()}
                                             for k, st in resumed.optimizer["state"].items()},
                                   "param_groups": resumed.optimizer["param_groups"]})
        if scheduler is not None and resumed.scheduler is not None:
            scheduler.load_state_dict(resumed.scheduler)
    if loop == PLAIN:
        index = [st.name for st in spec.train.stages].index(stage.name)
        loss = training_loss(spec, setup.model, setup.params, batches.interactions)
        return PlainSteps(optimizer, scheduler, loss, batches, watch, stage.name,
                          augment=batch_draws(spec, index, batches), sync=sync)
    return DeviceSteps.build(spec, stage, setup, peaks, batches, total, resumed.scheduler if saved else None, loop,
                             watch, device, sync)


def training_loss(spec, forward, params: list, interactions):
    """loss(xs, y) of a batch: the spec's loss of the model's output against the target; for implicit
    feedback, of each positive against the negatives drawn after the inputs (batch_draws) or against every
    item of `interactions` (specc.training.implicit.Interactions; None without implicit feedback)."""
    if spec.data.feedback is not None:
        return implicit_loss(spec, forward, params, interactions)
    return batch_loss(spec, forward, params)


def batch_draws(spec, stage: int, batches: Batches):
    """What a step draws anew for each whole batch, from its place in the run: the images augmented,
    or implicit feedback's negatives after the inputs; None when neither (a loss that draws no negatives)."""
    if spec.data.feedback is not None:
        return negatives_drawer(spec, batches.interactions, stage)
    return augmenter(spec, stage)


@dataclass
class PlainSteps:
    """The everyday step: the batch's rows by index, forward, loss, backward, optimizer step,
    scheduler step. Losses stay on the device (detached) until the epoch ends, but for a look for
    NaN every CHECK_EVERY steps."""

    optimizer: torch.optim.Optimizer
    scheduler: object  # torch's LRScheduler, or None for a constant rate
    loss: Callable  # loss(xs, y) of a batch (training_loss)
    batches: Batches
    watch: NanWatch
    stage: str
    epoch: int = 0
    perm: torch.Tensor | None = None
    losses_: list = field(default_factory=list)  # the epoch's detached loss tensors
    lrs: list = field(default_factory=list)
    augment: Callable | None = None  # (xs, epoch, step) -> xs with the images augmented, or negatives after (batch_draws)
    sync: Callable | None = None  # (optimizer, loss) -> the whole batch's loss, gradients averaged over the ranks

    def start_epoch(self, epoch, perm, first, losses, lrs) -> None:
        self.epoch, self.perm, self.losses_, self.lrs = epoch, perm, list(losses), lrs

    def step(self, s: int) -> None:
        batches, bs = self.batches, self.batches.size
        idx = self.perm[s * bs:(s + 1) * bs]
        if self.augment is None:
            idx = batches.mine(idx)  # in data-parallel training, only this rank's slice is read
        xs, y = [x[idx] for x in batches.xs], batches.y[idx]
        if self.augment is not None:  # the whole batch, as one process augments it; then this rank's slice
            xs = [batches.mine(x) for x in self.augment(xs, self.epoch, s)]
            y = batches.mine(y)
        loss = self.loss(xs, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sync is not None:
            loss = self.sync(self.optimizer, loss)
        self.optimizer.step()
        self.lrs.append(self.optimizer.param_groups[-1]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        self.losses_.append(loss.detach())
        if (s % CHECK_EVERY == CHECK_EVERY - 1 or s == self.batches.steps - 1) and not self.watch.warned:
            recent = torch.stack(self.losses_[-CHECK_EVERY:])
            self.watch.look(recent, len(self.losses_) - len(recent), self.lrs, self.stage, self.epoch)

    def losses(self, start: int, stop: int) -> torch.Tensor:
        return torch.stack(self.losses_[start:stop])

    def end_epoch(self, done: int) -> tuple[torch.Tensor, list]:
        return torch.stack(self.losses_) if self.losses_ else torch.zeros(0), self.lrs

    def lr(self) -> float:
        return self.optimizer.param_groups[-1]["lr"]

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def scheduler_state(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()


@dataclass
class DeviceSteps:
    """specc.training.fastpath's device-resident step (a DeviceStep, or a CapturedStep replaying it), with
    a shadow of the schedule on the host: an optimizer over stand-in parameters whose scheduler is
    stepped as the device steps, for checkpoints and the epoch's first rate. Nothing is read back
    from the device until the epoch ends."""

    device_step: object  # fastpath.DeviceStep or fastpath.CapturedStep
    optimizer: torch.optim.Optimizer
    shadow: torch.optim.Optimizer
    shadow_sched: object  # the shadow's LRScheduler, or None for a constant rate
    lr_host: list  # the last group's learning rate at each step of the stage
    batches: Batches
    watch: NanWatch
    stage: str
    epoch: int = 0
    first: int = 0  # the epoch's first step (a resumed epoch's is where it stopped)
    lrs: list = field(default_factory=list)
    sync: object = None  # specc.training.distributed.StepSync in data-parallel training

    @classmethod
    def build(cls, spec, stage, setup: StageSetup, peaks: list, batches: Batches, total: int,
              scheduler_state: dict | None, loop: str, watch: NanWatch, device, sync=None) -> DeviceSteps:
        """The stage's device step over schedule tables of its `total` steps, captured for CUDA_GRAPH."""
        if not fastpath.applies(spec):
            raise ValueError("the device step needs Adam")  # a caller's mistake, not a user's
        graph = loop == CUDA_GRAPH
        lr_table, beta1_table = schedule_tables(stage.fit, spec.train.optimizer, peaks, total, device)
        stand_ins = [[torch.nn.Parameter(torch.zeros(1))] for _ in peaks]
        shadow = make_optimizer(spec.train.optimizer, list(zip(stand_ins, peaks)))
        shadow_sched = make_scheduler(stage.fit, spec.train.optimizer, shadow, total)
        if shadow_sched is not None:
            shadow.step()  # the scheduler wants an optimizer step before its own
            if scheduler_state is not None:
                shadow_sched.load_state_dict(scheduler_state)
                for group, lr in zip(shadow.param_groups, shadow_sched.get_last_lr()):
                    group["lr"] = lr
        model = setup.model
        forward = fastpath.gather_rows_graph(model) if graph and isinstance(model, torch.fx.GraphModule) else model
        step = fastpath.DeviceStep(model, setup.optimizer, batch_loss(spec, forward, setup.params), batches.xs,
                                   batches.y, batches.steps, batches.size, lr_table, beta1_table, device,
                                   update="optimizer" if loop == DEVICE else "flat",
                                   compiled=graph and fastpath.can_compile(), sync=sync, part=batches.part)
        return cls(fastpath.CapturedStep(step) if graph else step, setup.optimizer, shadow, shadow_sched,
                   lr_table[:, -1].tolist(), batches, watch, stage.name, sync=sync)

    def start_epoch(self, epoch, perm, first, losses, lrs) -> None:
        self.epoch, self.first, self.lrs = epoch, first, lrs
        self.device_step.start_epoch(perm, epoch * self.batches.steps + first, first)
        if len(losses):
            self.device_step.losses[:len(losses)].copy_(losses)

    def step(self, s: int) -> None:
        self.device_step()  # queued: the host runs ahead of the device until the epoch's end
        if self.sync is not None and (s % CHECK_EVERY == CHECK_EVERY - 1 or s == self.batches.steps - 1):
            self.sync.agree_stop()  # every rank at the same steps: a stop request reaches all alike

    def losses(self, start: int, stop: int) -> torch.Tensor:
        return self.device_step.losses[start:stop]

    def end_epoch(self, done: int) -> tuple[torch.Tensor, list]:
        row = self.epoch * self.batches.steps + self.first
        self.lrs.extend(self.lr_host[row:row + done - self.first])
        if self.shadow_sched is not None:  # the host's copy of the schedule, for checkpoints
            for _ in range(done - self.first):
                self.shadow_sched.step()
        losses = self.device_step.losses[:done].clone()  # one tensor: the epoch's losses, read once
        if done == self.batches.steps and self.watch.stop_on_nan:  # the plain loop's warning is not given here
            self.watch.look(losses, 0, self.lrs, self.stage, self.epoch)
        return losses, self.lrs

    def lr(self) -> float:
        return self.shadow.param_groups[-1]["lr"]

    def optimizer_state(self) -> dict:
        # the device step keeps lr and betas as tensors; a checkpoint keeps the next step's numbers
        saved = fastpath.float_groups(self.optimizer.state_dict())
        for group, shadow in zip(saved["param_groups"], self.shadow.param_groups):
            group["lr"], group["betas"] = shadow["lr"], (shadow["betas"][0], group["betas"][1])
        return saved

    def scheduler_state(self) -> dict | None:
        return None if self.shadow_sched is None else self.shadow_sched.state_dict()
