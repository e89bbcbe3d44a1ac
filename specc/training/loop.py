"""Train: lowered model + prepared data -> trained weights and per-epoch metrics.

One explicit loop, `train`: stage by stage, epoch by epoch. The data lives in tensors on the
training device; each epoch draws a fresh permutation and takes batches by index (no DataLoader, no
sampling with replacement). How a step is taken (plain, device-resident, CUDA graph; all-reduced in
data-parallel training) is specc.training.steps'; the optimizers are specc.training.optim's, the
losses and metrics specc.training.metrics'; who watches the run listens (specc.training.listeners)."""

from __future__ import annotations

import dataclasses

import contextlib
import gc
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from specc.data.prepare import Prepared
from specc.data.splits import validates
from specc.language import codes
from specc.language.spec import EarlyStop, Spec
from specc.model.lower import declared_modules, lower
from specc.model.plan import TrainPlan
from specc.model.sized import SizedModel, sized_model
from specc.training import optimizers
from specc.training.checkpoint import TrainState
from specc.training.distributed import broadcast_floats
from specc.training.listeners import Listener
from specc.training.implicit import LR_FIND_STAGE, Interactions, negatives_drawer, validate
from specc.training.lrfind import END, START, STEPS, LRFindResult, lr_find
from specc.training.metrics import EpochRecord, History, better, evaluate, monitored, smooth
from specc.training.optim import module_groups
from specc.training.options import RunOptions
from specc.training.steps import (
    Batches, StageSetup, StepFactory, Steps, run_epoch, setup_stage, step_factory, train_mode, training_loss,
)
from specc.training.world import World


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_device(options: RunOptions) -> torch.device:
    """Where this process trains: its World's device in a data-parallel run, else options.device."""
    return options.world.device if options.world.parallel else pick_device(options.device)


# torch's threads wait for each other at the end of every operation, so an operation lasts as long
# as its slowest thread: when another process holds a core, the thread that lost it stalls every
# step. A small model's operations are too short for a second thread to gain much (bench/README.md,
# "Threads": at most about 1.6 times on an idle 2-core machine, against 3.6 to 21 times slower
# beside one busy process), so below SMALL_STEP multiply-adds a step the default is one thread.
SMALL_STEP = 1 << 26
TORCH_THREADS = torch.get_num_threads()  # torch's own default (one per core), before anything sets it


def step_multiply_adds(model: SizedModel, batch: int) -> int:
    """Multiply-adds of one forward step in the layers that have them (linear), batch x their
    weights (embedding lookups and elementwise operations are small beside them)."""
    return batch * model.multiply_adds()


def default_threads(spec: Spec, prepared: Prepared) -> int:
    """One thread for a small model (under SMALL_STEP multiply-adds a step, as every example spec
    is), else torch's own default (one per core)."""
    if step_multiply_adds(sized_model(spec, prepared), spec.data.batch) < SMALL_STEP:
        return 1
    return TORCH_THREADS


@contextlib.contextmanager
def torch_threads(n: int):
    """torch.set_num_threads(n) for the block, then the count from before (a sweep, or a caller
    of train_run, keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def to_tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Each column as a tensor on the device (shared with the array on the CPU, not copied)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def training_batches(spec: Spec, prepared: Prepared, plan: TrainPlan, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> Batches:
    """The training split's model inputs and target on the device, in the plan's batches (of
    which this rank trains on its `part`)."""
    tensors = to_tensors(prepared.train, device)
    return Batches([tensors[c] for c in spec.model.inputs], tensors[spec.data.target.name], plan.batch,
                   plan.steps_per_epoch, part, interactions_of(spec, prepared, device))


def interactions_of(spec: Spec, prepared: Prepared, device: torch.device) -> Interactions | None:
    """Implicit feedback's training pairs on the device (None for a spec without it)."""
    feedback = spec.data.feedback
    if feedback is None:
        return None
    pairs = prepared.train if prepared.pairs is None else prepared.pairs  # view = users: the rows are users
    inter = Interactions.of(feedback, pairs, prepared.vocabs[feedback.user].size,
                            prepared.vocabs[feedback.item].size, device)
    sides = {name: (side.key, torch.from_numpy(side.by_index(prepared.vocabs[side.key])).to(device))
             for name, side in (prepared.sides or {}).items()}
    return dataclasses.replace(inter, sides=sides) if sides else inter


def batch_order(spec: Spec, device: torch.device) -> torch.Generator:
    """The generator that draws each epoch's order of the rows (and lr-find's batches), seeded."""
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.train.seed)
    return generator


def build_model(spec: Spec, prepared: Prepared):
    """Seeded model construction (the same weights for the same spec and data), then the groups
    that `init GROUP from "RUN"` names take their weights from that run."""
    torch.manual_seed(spec.train.seed)
    model = lower(sized_model(spec, prepared), prepared.stats, class_name=_class_name(spec.name),
                  tables=prepared.tables)
    if optimizers.get(spec.train.optimizer.kind).sparse_tables:  # the tables' gradients: the rows looked up
        for module in declared_modules(model, "lookup"):
            module.sparse = True
    for init in spec.inits:
        load_group(model, module_groups(model), init)
    return model


def load_group(model, groups: dict[str, str], init) -> None:
    """Copy a group's weights from an earlier run's model.safetensors, checking names and shapes."""
    from safetensors import SafetensorError, safe_open

    from specc.language.diagnostics import Diagnostic, SpecError

    path = init.run / "model.safetensors"
    where = f"{init.run}"
    if not path.is_file():
        raise SpecError([Diagnostic(codes.BAD_INIT_RUN, f"no model.safetensors in {where}", init.span,
                                    ("train that run first: its run folder holds the weights",))])
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:  # a damaged or cut-short file
        raise SpecError([Diagnostic(codes.BAD_INIT_RUN, f"cannot read {path}: {err}", init.span,
                                    ("train that run again, or init from another run",))]) from None
    state = model.state_dict()
    wanted = [k for k in state if groups.get(k.split(".")[0]) == init.group]
    problems = []
    for key in wanted:
        if key not in saved:
            problems.append(f"the run has no '{key}'")
        elif saved[key].shape != state[key].shape:
            problems.append(f"'{key}' is {tuple(saved[key].shape)} in the run but {tuple(state[key].shape)} here")
    if problems or not wanted:
        notes = tuple(problems[:5]) or (f"group '{init.group}' has no weights",)
        raise SpecError([Diagnostic(codes.BAD_INIT_RUN, f"cannot take group '{init.group}' from {where}", init.span,
                                    notes)])
    with torch.no_grad():
        for key in wanted:
            state[key].copy_(saved[key])


def _class_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.title())
    return cleaned if cleaned[:1].isalpha() else "Spec" + cleaned


class StopRequest:
    """Set by a signal handler (Ctrl-C, SIGTERM): the loop stops after the step in progress. In
    data-parallel training (`shared`) the handler only marks this rank `signalled`; the step's
    all-reduce then sets `requested` on every rank at once, so all stop before the same step."""

    def __init__(self, shared: bool = False) -> None:
        self.requested = False
        self.signalled = False
        self.shared = shared

    def ask(self) -> None:
        self.signalled = True
        if not self.shared:
            self.requested = True


class Interrupted(Exception):
    """Training stopped on request; `state` continues it (specc.training.checkpoint)."""

    def __init__(self, state):
        self.state = state
        super().__init__(f"stopped in epoch {state.epoch} before step {state.step}")


def find_lr(spec: Spec, setup: StageSetup, batches: Batches, generator: torch.Generator, device,
            start: float = START, end: float = END, steps: int = STEPS) -> LRFindResult:
    """lr-find over the stage's optimizer and random batches of its training rows (whole batches:
    in data-parallel training every rank runs it as one process does); the model, optimizer and
    generators are left as they were."""
    loss = training_loss(spec, setup.model, setup.params, batches.interactions)
    # implicit feedback's negatives, drawn as a stage of their own would draw them (lr-find's probes are not augmented)
    negatives = negatives_drawer(spec, batches.interactions, LR_FIND_STAGE) if spec.data.feedback else None
    probes = iter(range(1 << 62))

    def step_loss(idx):
        xs = [x[idx] for x in batches.xs]
        return loss(negatives(xs, 0, next(probes)) if negatives else xs, batches.y[idx])

    return lr_find(setup.model, setup.optimizer, step_loss, batches.rows, batches.size, generator, start, end,
                   steps, device=device)


def validation(spec: Spec, model, valid: dict, world: World, interactions: Interactions | None = None
               ) -> dict[str, float]:
    """The validation loss and metrics over the whole split, computed once: by rank 0 in
    data-parallel training, its numbers shared with the others (so early stopping decides alike).
    Implicit feedback's rank every item for each validation user (specc.training.implicit.validate).
    Nothing, {}, with `valid = none`, which keeps no validation rows."""
    if not validates(spec.data.valid):
        return {}

    def scores_now() -> dict[str, float]:
        if interactions is not None:
            return validate(spec, model, interactions, valid)
        return evaluate(spec, model, valid, valid[spec.data.target.name])

    if not world.parallel:
        return scores_now()
    keys = ["loss", *spec.train.metrics]
    scores = scores_now() if world.writes else None
    return dict(zip(keys, broadcast_floats(world, scores and [scores[k] for k in keys], len(keys))))


@dataclass
class EarlyStopping:
    """A stage's early stopping (`rule`; None: the stage runs all its epochs): the best value of
    the monitored number so far, its epoch, the epochs waited since, and with keep_best the best
    epoch's weights."""

    rule: EarlyStop | None
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False
    weights: dict | None = None

    @classmethod
    def resumed(cls, rule: EarlyStop | None, state: TrainState) -> EarlyStopping:
        """Where a stopped run's stage had got to (its checkpoint's `early` and `best`)."""
        early = state.early
        return cls(rule, early.get("best"), early.get("best_epoch"), early.get("wait", 0),
                   bool(early.get("stopped", False)), state.best or None)

    def after(self, record: EpochRecord, model) -> None:
        """Take an epoch's record: a better value is the new best (its weights kept), else one more wait."""
        if self.rule is None:
            return
        value = monitored(record, self.rule.monitor)
        if better(self.rule.monitor, value, self.best):
            self.best, self.best_epoch, self.wait = value, record.epoch, 0
            if self.rule.keep_best:
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.wait += 1
            self.stopped = self.stopped or self.wait >= self.rule.patience

    def restore_best(self, model) -> None:
        """The stage ends with its best epoch's weights, when the rule keeps them."""
        if self.rule is not None and self.rule.keep_best and self.weights is not None:
            model.load_state_dict(self.weights)

    def saved(self) -> dict:
        """The checkpoint's `early`: best, best_epoch and wait once there is a best, and stopped."""
        if self.best is None and not self.wait and not self.stopped:
            return {}
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait} | (
            {"stopped": True} if self.stopped else {})


@dataclass
class Position:
    """What a run carries besides its weights, optimizer and place (stage, epoch): the epoch in
    progress (the next step, its order of the rows, its losses, rates and seconds so far) and what
    goes on from epoch to epoch (the smoothed loss's state, the rates lr-find found)."""

    step: int = 0
    perm: torch.Tensor | None = None  # None: the epoch's order is not drawn yet
    losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    lrs: list = field(default_factory=list)
    seconds: float = 0.0
    ewma: tuple = (0.0, 0)
    found_lrs: dict = field(default_factory=dict)

    def next_epoch(self) -> None:
        """The epoch is over: the next one starts at step 0, its order not drawn yet."""
        self.step, self.perm, self.losses, self.lrs, self.seconds = 0, None, torch.zeros(0), [], 0.0


@dataclass
class _Run:
    """What train() carries through a run: the model, its batches and validation split on the
    device, the generator that orders the rows, the history, where the run is (`at`), and who
    listens; `world` and `device` as specc.training.loop.training_device found them."""

    spec: Spec
    plan: TrainPlan
    model: torch.nn.Module
    batches: Batches
    valid: dict
    generator: torch.Generator
    history: History
    at: Position
    listener: Listener
    stop: StopRequest | None
    world: World
    device: torch.device


def train(spec: Spec, prepared: Prepared, plan: TrainPlan, options: RunOptions = RunOptions(),
          listener: Listener | None = None, resume: TrainState | None = None, stop: StopRequest | None = None,
          found_lrs: dict | None = None) -> tuple[torch.nn.Module, History]:
    """Train the spec's model, stage by stage, as `options` say (its device, device_step, graph
    and world: specc.training.options.RunOptions); `listener` (specc.training.listeners.Listener)
    hears the run's start, each epoch and step, lr-find's rates and a stop. `resume` (a
    specc.training.checkpoint.TrainState) continues a run where it stopped, to the same weights as a
    run that never stopped; `stop.requested` stops it after the current step (Interrupted, with
    the state to go on from). `found_lrs[stage]` replays a learning rate lr-find found before
    (`lr = find`). How each step is taken, and all-reduced in data-parallel training, is the step
    factory's (specc.training.steps.step_factory)."""
    listener = listener or Listener()
    device = training_device(options)
    model = build_model(spec, prepared).to(device)
    model.train()
    if resume is None:
        listener.on_start(model)
    run = _Run(spec, plan, model, training_batches(spec, prepared, plan, device, options.world.part()),
               to_tensors(prepared.valid, device), batch_order(spec, device), History(),
               Position(found_lrs=dict(found_lrs or {})), listener, stop, options.world, device)
    if resume is not None:  # the weights, generators and history of the stopped run, its place in its epoch
        run.at = restore(resume, model, run.generator, run.history, run.at.found_lrs, device)
    with step_factory(spec, model, device, options, stop) as factory:
        for si in range(resume.stage if resume is not None else 0, len(plan.stages)):
            train_stage(run, factory, si, resume if resume is not None and si == resume.stage else None)
            run.at.next_epoch()  # the next stage begins with a fresh epoch
    return model, run.history


def train_stage(run: _Run, factory: StepFactory, si: int, resumed: TrainState | None) -> None:
    """The plan's stage `si`: its set-up (frozen groups, optimizer), lr-find's rate where it asks
    for one, then its epochs (from where `resumed`, a run stopped within this stage, stopped)."""
    stage = run.plan.stages[si]
    setup = setup_stage(run.spec, run.model, run.plan, stage)
    if setup.find:  # lr = find: the finder's valley, found once (a rerun or a resume replays it)
        found_rate(run, setup, stage.name)
    early = EarlyStopping.resumed(stage.early_stop, resumed) if resumed is not None else EarlyStopping(
        stage.early_stop)
    # the schedule starts at the found rate; a stopped run's optimizer and schedule state are put back
    with factory.steps(stage, setup, run.batches, resumed) as steps, heap_set_aside():
        for epoch in range(resumed.epoch if resumed is not None else 0, stage.epochs):
            if early.stopped:
                break
            train_epoch(run, si, epoch, setup, steps, early)


@contextlib.contextmanager
def heap_set_aside():
    """Python's cyclic collector leaves out, for the block, every object there is when it begins
    (gc.freeze): torch and what it imported, the data, the model. A full pass over that heap took
    0.14 s in the first epoch of specs/collab.spec, 40% of an epoch, whenever the steps' own
    objects happened to trigger one (bench/first_epoch.py); the steps' objects are still collected.
    A program that froze objects of its own (gc.get_freeze_count) is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def found_rate(run: _Run, setup: StageSetup, stage: str) -> None:
    """The stage's optimizer at the rate lr-find finds (rank 0's, in data-parallel training), or
    found before (a rerun, or a resumed run)."""
    if stage not in run.at.found_lrs:
        result = find_lr(run.spec, setup, run.batches, run.generator, run.device)
        run.at.found_lrs[stage] = broadcast_floats(run.world, [result.suggestions["valley"]], 1)[0]
        run.listener.on_lr_found(stage, run.at.found_lrs[stage], result)
    for group in setup.optimizer.param_groups:
        group["lr"] = run.at.found_lrs[stage]


def train_epoch(run: _Run, si: int, epoch: int, setup: StageSetup, steps: Steps, early: EarlyStopping) -> None:
    """One epoch of stage `si`: its steps (from where a stopped run stopped), then validation, its
    record and the state to go on from for the listener; Interrupted on a stop request."""
    at, stage, total = run.at, run.plan.stages[si], run.batches.steps
    start = time.perf_counter() - at.seconds  # a resumed epoch's clock goes on where it stopped
    if at.perm is None:  # each epoch its own order of the rows, from the seeded generator
        at.perm = torch.randperm(run.batches.rows, generator=run.generator, device=run.device)
        at.losses, at.lrs = torch.zeros(0), []
    lr = at.lrs[0] if at.lrs else steps.lr()  # the rate of the epoch's first step, for its record
    steps.start_epoch(epoch, at.perm, at.step, at.losses, at.lrs)
    run.listener.on_epoch_start(stage.name, epoch, total, start, at.ewma, steps.losses)
    done = run_epoch(steps, at.step, total, run.stop, run.listener)
    at.step, (at.losses, at.lrs) = done, steps.end_epoch(done)  # the losses' one read back
    if done < total:  # stopped on request: the state to go on from this step
        at.seconds = time.perf_counter() - start
        state = checkpoint(run.model, si, epoch, at, steps, early, run.generator, run.history)
        run.listener.on_stop(state)
        raise Interrupted(state)
    raw = at.losses.double().cpu().numpy()
    smoothed, at.ewma = smooth(raw, start=at.ewma)
    scores = validation(run.spec, run.model, run.valid, run.world, run.batches.interactions)
    train_mode(run.model, setup.frozen)  # evaluate left every module in training mode
    record = EpochRecord(stage.name, epoch, float(smoothed[-1]), scores.get("loss"),  # None, {}: valid = none
                         {m: scores[m] for m in run.spec.train.metrics} if scores else {}, lr,
                         time.perf_counter() - start)
    run.history.add(record, raw, smoothed, at.lrs)
    early.after(record, run.model)
    last = epoch == stage.epochs - 1 or early.stopped
    if last:
        early.restore_best(run.model)  # the stage ends with its best epoch's weights, if it keeps them
    at.next_epoch()
    # the state to go on from: the next epoch, or the next stage's first
    state = (checkpoint(run.model, si + 1, 0, at, None, None, run.generator, run.history) if last
             else checkpoint(run.model, si, epoch + 1, at, steps, early, run.generator, run.history))
    run.listener.on_epoch(run.model, record, run.history, state)


def checkpoint(model, stage: int, epoch: int, at: Position, steps: Steps | None, early: EarlyStopping | None,
               generator: torch.Generator, history: History) -> TrainState:
    """The state to go on from: `at` in `epoch` of `stage`. Without `steps` and `early` (a stage not
    begun) it holds no optimizer, schedule or early-stopping state: the stage makes its own, as a
    run that never stopped does."""
    return TrainState(
        epoch=epoch, step=at.step, perm=torch.zeros(0, dtype=torch.int64) if at.perm is None else at.perm,
        model=model.state_dict(),
        optimizer={"state": {}, "param_groups": []} if steps is None else steps.optimizer_state(),
        scheduler=None if steps is None else steps.scheduler_state(),
        torch_rng=torch.get_rng_state(), generator=generator.get_state(),
        epoch_losses=at.losses, epoch_lrs=list(at.lrs), ewma=at.ewma,
        records=[r.__dict__ for r in history.records],
        history={"step_loss": history.step_loss, "step_smooth": history.step_smooth, "step_lr": history.step_lr},
        epoch_seconds=at.seconds, stage=stage, early={} if early is None else early.saved(),
        best={} if early is None else (early.weights or {}), found_lrs=dict(at.found_lrs))


def restore(state: TrainState, model, generator: torch.Generator, history: History, found_lrs: dict,
            device) -> Position:
    """Put a stopped run's weights, random number generators and history back; its place in the
    epoch it stopped in (its stage and epoch are the state's)."""
    model.load_state_dict(state.model)
    torch.set_rng_state(state.torch_rng)
    generator.set_state(state.generator.to(generator.get_state().device))
    history.records = [EpochRecord(**r) for r in state.records]
    history.step_loss = list(state.history.get("step_loss", []))
    history.step_smooth = list(state.history.get("step_smooth", []))
    history.step_lr = list(state.history.get("step_lr", []))
    return Position(state.step,
                    state.perm.to(device) if state.perm.numel() else None,  # empty: draw the epoch's own
                    state.epoch_losses.to(device), list(state.epoch_lrs), state.epoch_seconds, tuple(state.ewma),
                    {**found_lrs, **state.found_lrs})
