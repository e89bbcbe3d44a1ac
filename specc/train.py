"""Train: lowered model + prepared data -> trained weights and per-epoch metrics.

One explicit loop. The data lives in tensors on the training device; each epoch draws a fresh
permutation and takes batches by index (no DataLoader, no sampling with replacement)."""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from specc.data.prepare import Prepared
from specc.lower import lower
from specc.plan import TrainPlan, model_sizes, one_step_warmup
from specc.spec import FLOAT, SGD, Adam, Fit, FitOneCycle, RMSProp, Spec

SMOOTH_BETA = 0.98  # the seed's exponentially weighted moving average of the loss
VALID_BATCH = 8192


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# torch's threads wait for each other at the end of every operation, so an operation lasts as long
# as its slowest thread: when another process holds a core, the thread that lost it stalls every
# step. A small model's operations are too short for a second thread to gain much (bench/README.md,
# "Threads": at most about 1.6 times on an idle 2-core machine, against 3.6 to 21 times slower
# beside one busy process), so below SMALL_STEP multiply-adds a step the default is one thread.
SMALL_STEP = 1 << 26
TORCH_THREADS = torch.get_num_threads()  # torch's own default (one per core), before anything sets it


def step_multiply_adds(spec: Spec, sizes: dict[str, int], batch: int) -> int:
    """Multiply-adds of one forward step in the linear layers, batch x their weights (embedding
    lookups and elementwise operations are small beside them)."""
    from specc.expand import expand
    from specc.plan import resolve
    from specc.spec import Linear

    model = expand(spec.model, sizes)
    weights = sum(resolve(model.node(n.inputs[0]).shape[0], sizes) * resolve(n.op.out, sizes)
                  for n in model.nodes if isinstance(n.op, Linear))
    return batch * weights


def default_threads(spec: Spec, prepared: Prepared) -> int:
    """One thread for a small model (under SMALL_STEP multiply-adds a step, as every example spec
    is), else torch's own default (one per core)."""
    if step_multiply_adds(spec, model_sizes(spec, prepared), spec.data.batch) < SMALL_STEP:
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


class _DecoupledWeightDecay:
    """Weight decay that shrinks the weights directly (p -= lr * wd * p) before the update, as
    AdamW does, instead of adding wd * p to the gradient (torch's SGD and RMSprop `weight_decay`
    is that L2 form; the seed contrasts the two, and `l2` in a spec gives the other one)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group["decoupled_wd"]
            if wd:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1.0 - group["lr"] * wd)
        return super().step(closure)


class DecoupledSGD(_DecoupledWeightDecay, torch.optim.SGD):
    """torch's SGD (v = momentum*v + (1-dampening)*g, the first v = g; p -= lr*v), decoupled wd."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, wd: float, dampening: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)
        for group in self.param_groups:
            group["decoupled_wd"] = wd


class DecoupledRMSprop(_DecoupledWeightDecay, torch.optim.RMSprop):
    """torch's RMSprop (s = alpha*s + (1-alpha)*g^2; p -= lr*g/(sqrt(s)+eps)), decoupled wd."""

    def __init__(self, params, lr: float, alpha: float, eps: float, momentum: float, wd: float):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
        for group in self.param_groups:
            group["decoupled_wd"] = wd


def make_optimizer(opt, groups: list[tuple[list, float]]) -> torch.optim.Optimizer:
    """The spec's optimizer over parameter groups, each [(params, lr)] with its own learning rate."""
    params = [{"params": ps, "lr": lr} for ps, lr in groups]
    lr = groups[-1][1]
    if isinstance(opt, Adam):
        # The fused kernel does the whole update in one pass over each tensor (on the CPU too,
        # since torch 2.4): about 30% off a collab epoch on the CPU, more on the GPU.
        return torch.optim.AdamW(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd, fused=True)
    if isinstance(opt, RMSProp):
        return DecoupledRMSprop(params, lr=lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum, wd=opt.wd)
    assert isinstance(opt, SGD)
    return DecoupledSGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov, wd=opt.wd,
                        dampening=opt.dampening)


def make_scheduler(fit, opt, optimizer, total_steps: int):
    """torch's OneCycleLR for fit_one_cycle, each group to its own peak; nothing for a constant lr."""
    if isinstance(fit, Fit):
        return None
    assert isinstance(fit, FitOneCycle)
    # Momentum cycles for Adam (beta1) and for SGD / RMSProp that use momentum at all.
    cycle = isinstance(opt, Adam) or opt.momentum > 0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
        pct_start=fit.pct_start,
        anneal_strategy="cos", div_factor=fit.div, final_div_factor=fit.final_div,
        cycle_momentum=cycle, base_momentum=fit.moms[1], max_momentum=fit.moms[0])


def smooth(losses: np.ndarray, beta: float = SMOOTH_BETA, start: tuple[float, int] = (0.0, 0)):
    """Debiased EWMA: avg = beta*avg + (1-beta)*loss; shown = avg / (1 - beta**n).
    Returns (smoothed values, (avg, n)) so that it can continue across epochs."""
    avg, n = start
    out = np.empty(len(losses))
    for k, value in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * float(value)
        n += 1
        out[k] = avg / (1.0 - beta ** n)
    return out, (avg, n)


@dataclass
class EpochRecord:
    stage: str
    epoch: int
    train_loss: float
    valid_loss: float
    metrics: dict[str, float]
    lr: float
    seconds: float


@dataclass
class History:
    records: list[EpochRecord] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)  # raw loss of each step
    step_smooth: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)


def _predict_column(spec: Spec, out: torch.Tensor) -> torch.Tensor:
    """The model output compared with the target: one number per row for a float target, one
    score per class (as the model gives them) for a category target."""
    return out[:, 0] if spec.data.target.kind == FLOAT else out


# Each loss as the seed describes it; cross_entropy takes logits (log-softmax inside), nll takes
# log-probabilities (a model that ends in log_softmax), bce takes probabilities (ends in sigmoid).
LOSS_FNS = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
}


def loss_fn(spec: Spec):
    """The training loss, with the seed's L2 penalty (l2 * sum of squared weights) when asked."""
    base = LOSS_FNS[spec.train.loss]
    l2 = spec.train.l2
    if not l2:
        return lambda out, y, params: base(out, y)

    def with_penalty(out, y, params):
        return base(out, y) + l2 * torch.stack([(p * p).sum() for p in params]).sum()
    return with_penalty


@torch.no_grad()
def evaluate(spec: Spec, model, columns: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, float]:
    """Loss (without the l2 penalty) and metrics over a whole split, in large batches."""
    was_training = model.training
    model.eval()
    preds = []
    n = len(target)
    chunk = VALID_BATCH if target.device.type == "cpu" else 8 * VALID_BATCH  # fewer launches on a GPU
    for s in range(0, n, chunk):
        batch = [columns[c][s:s + chunk] for c in spec.model.inputs]
        preds.append(_predict_column(spec, model(*batch)))
    model.train(was_training)
    pred = torch.cat(preds).double()
    if spec.data.target.kind == FLOAT:
        y = target.double()
        values = {"loss": float(LOSS_FNS[spec.train.loss](pred, y))}
        err = pred - y
        mse = float((err * err).mean())
        for metric in spec.train.metrics:
            values[metric] = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(err.abs().mean())}[metric]
        return values
    values = {"loss": float(LOSS_FNS[spec.train.loss](pred, target))}
    accuracy = float((pred.argmax(dim=-1) == target).double().mean())
    for metric in spec.train.metrics:
        values[metric] = {"accuracy": accuracy, "error_rate": 1.0 - accuracy}[metric]
    return values


def duration(seconds: float) -> str:
    """A time for people: `12.3 s`, `4 min 05 s`, `1 h 02 min`."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """The per-epoch table, and on a terminal a line within a long epoch that is rewritten in
    place (step, elapsed, eta, smoothed loss); nothing but the table when the output is a file or
    a pipe, so that logs stay clean."""

    LIVE_AFTER = 2.0  # seconds into an epoch before the line appears: a short epoch shows just its row
    LIVE_EVERY = 0.25  # seconds between two updates at least

    def __init__(self, metrics: tuple[str, ...], out=None, live: bool | None = None, stages: bool = False):
        self.out = out or sys.stdout
        self.metrics = metrics
        self.live = self.out.isatty() if live is None else live
        self.header_done = False
        self.stages = stages  # a column for the stage when the plan has several
        self.columns = ["stage"] * stages + ["epoch", "train_loss", "valid_loss", *metrics, "time"]
        self._next = self.LIVE_AFTER  # seconds into the epoch of the next update
        self._shown = 0  # length of the live line on the screen, 0 when there is none

    def header(self) -> None:
        print("  ".join(f"{c:<10}" for c in self.columns).rstrip(), file=self.out, flush=True)
        self.header_done = True

    def start_epoch(self) -> None:
        """A new epoch: the live line waits LIVE_AFTER seconds again."""
        self._next = self.LIVE_AFTER

    def due(self, elapsed: float) -> bool:
        """Whether the live line wants an update, `elapsed` seconds into the epoch."""
        return self.live and elapsed >= self._next

    def step(self, stage: str, epoch: int, done: int, total: int, smoothed: float, elapsed: float) -> None:
        """Rewrite the live line: `done` of `total` steps taken in `elapsed` seconds."""
        self._next = elapsed + self.LIVE_EVERY
        eta = elapsed / done * (total - done) if done else 0.0
        where = f"stage {stage}  epoch {epoch}" if self.stages else f"epoch {epoch}"
        line = f"{where}  step {done}/{total}  {duration(elapsed)} elapsed  eta {duration(eta)}  loss {smoothed:.6f}"
        line = line[:shutil.get_terminal_size().columns - 1]  # a line that wrapped could not be rewritten
        self.out.write("\r" + line.ljust(self._shown))  # the padding covers a longer line before it
        self.out.flush()
        self._shown = len(line)

    def epoch(self, record: EpochRecord) -> None:
        if self._shown:  # the table's row takes the live line's place
            self.out.write("\r" + " " * self._shown + "\r")
            self._shown = 0
        if not self.header_done:
            self.header()
        mins, secs = divmod(int(round(record.seconds)), 60)
        cells = [f"{record.stage:<10}"] * self.stages + [
                 f"{record.epoch:<10}", f"{record.train_loss:<10.6f}", f"{record.valid_loss:<10.6f}",
                 *(f"{record.metrics[m]:<10.6f}" for m in self.metrics), f"{mins:02d}:{secs:02d}"]
        print("  ".join(cells), file=self.out, flush=True)


def _fold(values: torch.Tensor, state: tuple[float, int]) -> tuple[float, tuple[float, int]]:
    """The smoothed loss after `values` (the losses since the last look), from the EWMA `state`."""
    smoothed, state = smooth(values.detach().double().cpu().numpy(), start=state)
    return float(smoothed[-1]), state


def to_tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def build_model(spec: Spec, prepared: Prepared):
    """Seeded model construction (the same weights for the same spec and data), then the groups
    that `init GROUP from "RUN"` names take their weights from that run."""
    torch.manual_seed(spec.train.seed)
    model = lower(spec.model, model_sizes(spec, prepared), prepared.stats, class_name=_class_name(spec.name))
    for init in spec.inits:
        load_group(model, module_groups(model), init)
    return model


def module_groups(model) -> dict[str, str]:
    """Submodule name -> its layer group (lowering records it on each module's node)."""
    return {n.target: n.meta.get("group", "model") for n in model.graph.nodes if n.op == "call_module"}


def group_params(model, owners: dict[str, str], group: str) -> list:
    """The parameters of one layer group's modules."""
    return [p for name, m in model.named_children() if owners.get(name) == group for p in m.parameters()]


def stage_groups(model, owners: dict[str, str], plan: TrainPlan, stage) -> list[tuple[list, float]]:
    """A stage's optimizer parameter groups, in order: each layer group that trains in it (not
    frozen, with parameters) and its peak learning rate (NaN where lr-find will pick it)."""
    groups = [(group_params(model, owners, g.name), lr) for g, lr in zip(plan.groups, stage.lrs) if lr is not None]
    return [(ps, lr) for ps, lr in groups if ps]


def load_group(model, groups: dict[str, str], init) -> None:
    """Copy a group's weights from an earlier run's model.safetensors, checking names and shapes."""
    from safetensors import SafetensorError, safe_open

    from specc.diagnostics import Diagnostic, SpecError

    path = init.run / "model.safetensors"
    where = f"{init.run}"
    if not path.is_file():
        raise SpecError([Diagnostic("E207", f"no model.safetensors in {where}", init.span,
                                    ("train that run first: its run folder holds the weights",))])
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:  # a damaged or cut-short file
        raise SpecError([Diagnostic("E207", f"cannot read {path}: {err}", init.span,
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
        raise SpecError([Diagnostic("E207", f"cannot take group '{init.group}' from {where}", init.span, notes)])
    with torch.no_grad():
        for key in wanted:
            state[key].copy_(saved[key])


def _class_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.title())
    return cleaned if cleaned[:1].isalpha() else "Spec" + cleaned


class StopRequest:
    """Set by a signal handler (Ctrl-C): the loop stops after the step in progress."""

    def __init__(self) -> None:
        self.requested = False


class Interrupted(Exception):
    """Training stopped on request; `state` continues it (specc.checkpoint)."""

    def __init__(self, state):
        self.state = state
        super().__init__(f"stopped in epoch {state.epoch} before step {state.step}")


def _monitor_value(record: EpochRecord, monitor: str) -> float:
    return record.valid_loss if monitor == "valid_loss" else record.metrics[monitor]


def _better(monitor: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if monitor == "accuracy" else new < best


def train(spec: Spec, prepared: Prepared, plan: TrainPlan, device: torch.device,
          progress: Progress | None = None, on_epoch=None, on_start=None, resume=None,
          stop: StopRequest | None = None, found_lrs: dict | None = None,
          on_lr_found=None, device_step: bool | str = False, graph: bool | None = None) -> tuple[torch.nn.Module, History]:
    """Train the spec's model, stage by stage. `on_start(model)` runs before the first step (not
    on resume); `on_epoch(model, record, history, state)` after each epoch, with the state to go on
    from. `resume` (a specc.checkpoint.TrainState) continues a run where it stopped, to the same
    weights as a run that never stopped; `stop.requested` stops it after the current step.
    `found_lrs[stage]` replays a learning rate lr-find found before (`lr = find`), and
    `on_lr_found(stage, lr, result)` is told of a new one. `graph` replays each step from a CUDA
    graph (specc.fastpath; None: wherever fastpath.graph_reason finds nothing against it, so on a
    CUDA device with Adam). `device_step` takes the same device-resident step uncaptured (Adam only;
    on the CPU it trains to the plain loop's weights bit for bit); "flat" makes it update with
    fastpath.FlatAdam, the update the captured step uses."""
    from specc import fastpath
    from specc.checkpoint import TrainState

    reason = fastpath.graph_reason(spec, device)
    if graph is None:
        graph = reason is None and not device_step
    elif graph and reason is not None:
        raise ValueError(f"no CUDA-graph step: {reason}")  # a caller's mistake
    model = build_model(spec, prepared).to(device)
    model.train()
    if on_start is not None and resume is None:
        on_start(model)
    owners = module_groups(model)
    loss_of = loss_fn(spec)
    inputs, target = spec.model.inputs, spec.data.target.name
    train_t = to_tensors(prepared.train, device)
    valid_t = to_tensors(prepared.valid, device)
    x_train = [train_t[c] for c in inputs]
    y_train = train_t[target]
    n, bs = prepared.n_train, plan.batch
    steps = plan.steps_per_epoch
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.train.seed)
    history = History()
    ewma = (0.0, 0)
    found_lrs = dict(found_lrs or {})
    first_stage, first_epoch, first_step, perm, losses, lrs, carried = 0, 0, 0, None, [], [], 0.0
    early, best_state = {}, None
    if resume is not None:
        model.load_state_dict(resume.model)
        torch.set_rng_state(resume.torch_rng)
        generator.set_state(resume.generator.to(generator.get_state().device))
        first_stage, first_epoch, first_step = resume.stage, resume.epoch, resume.step
        perm = resume.perm.to(device) if resume.perm.numel() else None  # empty: draw the epoch's own
        losses = [v for v in resume.epoch_losses.to(device)]
        lrs, ewma, carried = list(resume.epoch_lrs), tuple(resume.ewma), resume.epoch_seconds
        history.records = [EpochRecord(**r) for r in resume.records]
        history.step_loss = list(resume.history.get("step_loss", []))
        history.step_smooth = list(resume.history.get("step_smooth", []))
        history.step_lr = list(resume.history.get("step_lr", []))
        early, found_lrs = dict(resume.early), {**found_lrs, **resume.found_lrs}
        best_state = resume.best or None
    check_every = 64  # steps between looks at the loss for NaN (one host sync each)
    warned = False
    optimizer = scheduler = fast = None

    def optimizer_state() -> dict:
        if fast is None:
            return optimizer.state_dict()
        # the device step keeps lr and betas as tensors; a checkpoint keeps the next step's numbers
        from specc.fastpath import float_groups

        saved = float_groups(optimizer.state_dict())
        for group, shadow in zip(saved["param_groups"], fast[1].param_groups):
            group["lr"], group["betas"] = shadow["lr"], (shadow["betas"][0], group["betas"][1])
        return saved

    def state(stage: int, epoch: int, step: int, seconds: float, next_stage: bool = False) -> TrainState:
        # At the start of a new stage there is no optimizer, scheduler or early-stopping state yet:
        # the stage makes its own, as a run that never stopped does.
        sched = fast[2] if fast is not None else scheduler
        return TrainState(
            epoch=epoch, step=step, perm=perm, model=model.state_dict(),
            optimizer={"state": {}, "param_groups": []} if next_stage or optimizer is None else optimizer_state(),
            scheduler=None if next_stage or sched is None else sched.state_dict(),
            torch_rng=torch.get_rng_state(), generator=generator.get_state(),
            epoch_losses=_stacked(losses), epoch_lrs=list(lrs), ewma=ewma,
            records=[r.__dict__ for r in history.records],
            history={"step_loss": history.step_loss, "step_smooth": history.step_smooth,
                     "step_lr": history.step_lr}, epoch_seconds=seconds, stage=stage,
            early={} if next_stage else dict(early), best={} if next_stage else (best_state or {}),
            found_lrs=dict(found_lrs))

    for si in range(first_stage, len(plan.stages)):
        stage = plan.stages[si]
        resuming = resume is not None and si == first_stage
        frozen = {g.name for g, lr in zip(plan.groups, stage.lrs) if lr is None}
        frozen_modules = [m for name, m in model.named_children() if owners.get(name) in frozen]
        for name, module in model.named_children():
            module.requires_grad_(owners.get(name) not in frozen)
        _train_mode(model, frozen_modules)
        groups = stage_groups(model, owners, plan, stage)
        params = [p for ps, _ in groups for p in ps]
        find = any(lr != lr for _, lr in groups)  # lr = find: NaN until the finder has run
        optimizer = make_optimizer(spec.train.optimizer, [(ps, 1e-3 if find else lr) for ps, lr in groups])
        if find:
            if stage.name not in found_lrs:
                result = _find_lr(spec, model, optimizer, loss_of, x_train, y_train, params, n, bs, generator,
                                  device)
                found_lrs[stage.name] = result.suggestions["valley"]
                if on_lr_found is not None:
                    on_lr_found(stage.name, found_lrs[stage.name], result)
            for group in optimizer.param_groups:
                group["lr"] = found_lrs[stage.name]
        stage_steps = steps * stage.epochs
        peaks = [g["lr"] for g in optimizer.param_groups]
        scheduler = make_scheduler(stage.fit, spec.train.optimizer, optimizer, stage_steps)
        if resuming and resume.optimizer["param_groups"]:
            # cloned: torch's load_state_dict keeps tensors that are already right, and the steps
            # would then change the caller's TrainState in place
            optimizer.load_state_dict({"state": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()}
                                                 for k, st in resume.optimizer["state"].items()},
                                       "param_groups": resume.optimizer["param_groups"]})
            if scheduler is not None and resume.scheduler is not None:
                scheduler.load_state_dict(resume.scheduler)
        fast = None
        if device_step or graph:
            fast = _device_step(spec, stage, model, optimizer, peaks, loss_of, params, x_train, y_train, steps, bs,
                                stage_steps, device, resume.scheduler if resuming and resume.optimizer[
                                    "param_groups"] else None, graph, device_step == "flat")
        if not resuming:
            early, best_state = {}, None
        es = stage.early_stop
        for epoch in range(first_epoch if resuming else 0, stage.epochs):
            if es is not None and early.get("stopped"):
                break
            start = time.perf_counter() - (carried if resuming and epoch == first_epoch else 0.0)
            if not (resuming and epoch == first_epoch) or perm is None or not perm.numel():
                perm = torch.randperm(n, generator=generator, device=device)
                losses, lrs = [], []  # detached loss tensors: no host synchronisation inside the epoch
            lr_now = lrs[0] if lrs else (fast[1] if fast else optimizer).param_groups[-1]["lr"]
            first_s = first_step if resuming and epoch == first_epoch else 0
            # the live line's smoothed loss: the epoch's losses folded into the EWMA as they are shown
            live, live_k, live_ewma = progress is not None and progress.live, 0, ewma
            if live:
                progress.start_epoch()
            if fast is not None:
                dstep, _, shadow_sched, lr_host = fast
                row = epoch * steps + first_s
                dstep.start_epoch(perm, row, first_s)
                if len(losses):
                    dstep.losses[:len(losses)].copy_(_stacked(losses))
                done = steps
                for s in range(first_s, steps):
                    if stop is not None and stop.requested:
                        done = s
                        break
                    dstep()  # queued: the host runs ahead of the device until the epoch's end
                    if live and progress.due(time.perf_counter() - start):  # a few times a second at most
                        shown, live_ewma = _fold(dstep.losses[live_k:s + 1], live_ewma)
                        live_k = s + 1
                        progress.step(stage.name, epoch, s + 1, steps, shown, time.perf_counter() - start)
                lrs.extend(lr_host[row:row + done - first_s])
                if shadow_sched is not None:  # the host's copy of the schedule, for checkpoints
                    for _ in range(done - first_s):
                        shadow_sched.step()
                if done < steps:
                    losses = dstep.losses[:done].clone()
                    raise Interrupted(state(si, epoch, done, time.perf_counter() - start))
                losses = dstep.losses.clone()  # one tensor: the epoch's losses, read once below
                if spec.train.stop_on_nan and not bool(torch.isfinite(losses).all()):
                    first = int((~torch.isfinite(losses)).nonzero()[0, 0])
                    raise TrainingDiverged(stage.name, epoch, first, lrs[first])
            else:
                for s in range(first_s, steps):
                    if stop is not None and stop.requested:
                        raise Interrupted(state(si, epoch, s, time.perf_counter() - start))
                    idx = perm[s * bs:(s + 1) * bs]
                    out = model(*[x[idx] for x in x_train])
                    loss = loss_of(_predict_column(spec, out), y_train[idx], params)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    lrs.append(optimizer.param_groups[-1]["lr"])
                    if scheduler is not None:
                        scheduler.step()
                    losses.append(loss.detach())
                    if (s % check_every == check_every - 1 or s == steps - 1) and not warned:
                        recent = torch.stack(losses[-check_every:])
                        if not bool(torch.isfinite(recent).all()):
                            first = len(losses) - len(recent) + int((~torch.isfinite(recent)).nonzero()[0, 0])
                            if spec.train.stop_on_nan:
                                raise TrainingDiverged(stage.name, epoch, first, lrs[first])
                            warned = True
                            print(f"specc: warning: the loss became NaN or infinite in stage '{stage.name}', epoch "
                                  f"{epoch}, step {first} (lr {lrs[first]:.3g}); going on because stop_on_nan = false",
                                  file=sys.stderr)
                    if live and progress.due(time.perf_counter() - start):  # a few times a second at most
                        shown, live_ewma = _fold(torch.stack(losses[live_k:]), live_ewma)
                        live_k = len(losses)
                        progress.step(stage.name, epoch, s + 1, steps, shown, time.perf_counter() - start)
            raw = _stacked(losses).double().cpu().numpy()
            smoothed, ewma = smooth(raw, start=ewma)
            scores = evaluate(spec, model, valid_t, valid_t[target])
            _train_mode(model, frozen_modules)
            seconds = time.perf_counter() - start
            record = EpochRecord(stage.name, epoch, float(smoothed[-1]), scores["loss"],
                                 {m: scores[m] for m in spec.train.metrics}, lr_now, seconds)
            history.records.append(record)
            history.step_loss.extend(raw.tolist())
            history.step_smooth.extend(smoothed.tolist())
            history.step_lr.extend(lrs)
            if progress is not None:
                progress.epoch(record)
            if es is not None:
                value = _monitor_value(record, es.monitor)
                if _better(es.monitor, value, early.get("best")):
                    early.update(best=value, best_epoch=epoch, wait=0)
                    if es.keep_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    early["wait"] = early.get("wait", 0) + 1
                    if early["wait"] >= es.patience:
                        early["stopped"] = True
            last = epoch == stage.epochs - 1 or early.get("stopped", False)
            if last and es is not None and es.keep_best and best_state is not None:
                model.load_state_dict(best_state)  # the stage ends with its best epoch's weights
            if on_epoch is not None:
                # the state to go on from: the next epoch (or stage), its permutation not drawn yet
                losses, lrs, perm = [], [], torch.zeros(0, dtype=torch.int64)
                if last:
                    on_epoch(model, record, history, state(si + 1, 0, 0, 0.0, next_stage=True))
                else:
                    on_epoch(model, record, history, state(si, epoch + 1, 0, 0.0))
        first_epoch = first_step = 0
        early, best_state = {}, None
    return model, history


def _stacked(losses) -> torch.Tensor:
    """An epoch's losses so far as one tensor (the plain loop keeps a list, the device step a tensor)."""
    if torch.is_tensor(losses):
        return losses
    return torch.stack(losses) if losses else torch.zeros(0)


def _device_step(spec, stage, model, optimizer, peaks, loss_of, params, x_train, y_train, steps, bs, stage_steps,
                 device, scheduler_state, graph: bool, flat: bool = False):
    """The device-resident step of a stage (captured in a CUDA graph if `graph`), with a shadow
    schedule on the host for checkpoints and the host's copy of the last group's learning rates."""
    from specc import fastpath

    if not fastpath.applies(spec):
        raise ValueError("the device step needs Adam")  # a caller's mistake, not a user's
    lr_table, beta1_table = fastpath.schedule_tables(stage.fit, spec.train.optimizer, peaks, stage_steps, device)
    stand_ins = [[torch.nn.Parameter(torch.zeros(1))] for _ in peaks]
    shadow = make_optimizer(spec.train.optimizer, list(zip(stand_ins, peaks)))
    shadow_sched = make_scheduler(stage.fit, spec.train.optimizer, shadow, stage_steps)
    if shadow_sched is not None:
        shadow.step()  # the scheduler wants an optimizer step before its own
        if scheduler_state is not None:
            shadow_sched.load_state_dict(scheduler_state)
            for group, lr in zip(shadow.param_groups, shadow_sched.get_last_lr()):
                group["lr"] = lr

    lr_host = lr_table[:, -1].tolist()
    forward = fastpath.gather_rows_graph(model) if graph and isinstance(model, torch.fx.GraphModule) else model

    def forward_loss(xs, y):
        return loss_of(_predict_column(spec, forward(*xs)), y, params)

    step = fastpath.DeviceStep(model, optimizer, forward_loss, x_train, y_train, steps, bs, lr_table, beta1_table,
                               device, update="flat" if graph or flat else "optimizer",
                               compiled=graph and fastpath.can_compile())
    return (fastpath.CapturedStep(step) if graph else step), shadow, shadow_sched, lr_host


def _train_mode(model, frozen_modules) -> None:
    """Training mode, except frozen groups: their batchnorm statistics and dropout stay as in eval."""
    model.train()
    for module in frozen_modules:
        module.eval()


def _find_lr(spec, model, optimizer, loss_of, x_train, y_train, params, n, bs, generator, device):
    from specc.lrfind import lr_find

    def step_loss(idx):
        out = model(*[x[idx] for x in x_train])
        return loss_of(_predict_column(spec, out), y_train[idx], params)

    return lr_find(model, optimizer, step_loss, n, bs, generator, device=device)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, stage: str, epoch: int, step: int, lr: float):
        self.stage, self.epoch, self.step, self.lr = stage, epoch, step, lr
        super().__init__(f"the loss became NaN or infinite in stage '{stage}', epoch {epoch}, step {step} "
                         f"(lr {lr:.3g}); try a smaller learning rate, or set stop_on_nan = false to go on")


def simulate_schedules(spec: Spec, plan: TrainPlan, max_steps: int | None = None) -> dict[str, tuple[list, list]]:
    """Each group's learning rate and momentum at every step of every stage, from torch's own
    schedulers (specc.fastpath.schedule_tables): what training will do, before any training.
    A frozen group's rate is 0; a rate lr-find will pick is drawn at 1e-3 (a placeholder).
    With `max_steps`, a longer plan is simulated with every stage shortened in proportion (the
    one-cycle shape depends on the fraction of steps, not their number): enough to draw it."""
    from specc.fastpath import schedule_tables

    shrink = 1.0 if max_steps is None or plan.total_steps <= max_steps else max_steps / plan.total_steps
    out = {g.name: ([], []) for g in plan.groups}
    for stage in plan.stages:
        live = [(g, lr) for g, lr in zip(plan.groups, stage.lrs) if lr is not None]
        total = plan.steps_per_epoch * stage.epochs
        if shrink < 1.0:
            total = max(2, round(total * shrink))
            total += one_step_warmup(stage.fit, total)  # which OneCycleLR cannot schedule: one step more
        lr, mom = schedule_tables(stage.fit, spec.train.optimizer, [1e-3 if r != r else r for _, r in live], total,
                                  "cpu")
        index = {g.name: k for k, (g, _) in enumerate(live)}
        for g in plan.groups:
            lrs, moms = out[g.name]
            if g.name in index:
                lrs.extend(lr[:, index[g.name]].tolist())
                moms.extend(mom[:, index[g.name]].tolist())
            else:
                lrs.extend([0.0] * total)
                moms.extend([float("nan")] * total)
    return out
