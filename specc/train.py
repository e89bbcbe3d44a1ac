"""Train: lowered model + prepared data -> trained weights and per-epoch metrics.

One explicit loop. The data lives in tensors on the training device; each epoch draws a fresh
permutation and takes batches by index (no DataLoader, no sampling with replacement)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from specc.data.prepare import Prepared
from specc.lower import lower
from specc.plan import TrainPlan
from specc.spec import SGD, Adam, Fit, FitOneCycle, Spec

SMOOTH_BETA = 0.98  # the seed's exponentially weighted moving average of the loss
VALID_BATCH = 8192


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class DecoupledSGD(torch.optim.SGD):
    """SGD whose weight decay shrinks the weights directly (p -= lr * wd * p), as AdamW does,
    instead of adding wd * p to the gradient (torch's SGD weight_decay is an L2 penalty)."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, wd: float):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov)
        for group in self.param_groups:
            group["decoupled_wd"] = wd

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group["decoupled_wd"]
            if wd:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1.0 - group["lr"] * wd)
        return super().step(closure)


def make_optimizer(spec: Spec, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    opt, lr = spec.train.optimizer, spec.train.fit.lr
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(opt, Adam):
        # The fused kernel does the whole update in one pass over each tensor (on the CPU too,
        # since torch 2.4): about 30% off a collab epoch on the CPU, more on the GPU.
        return torch.optim.AdamW(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd, fused=True)
    assert isinstance(opt, SGD)
    return DecoupledSGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov, wd=opt.wd)


def make_scheduler(spec: Spec, optimizer, total_steps: int):
    fit = spec.train.fit
    if isinstance(fit, Fit):
        return None
    assert isinstance(fit, FitOneCycle)
    opt = spec.train.optimizer
    cycle = isinstance(opt, Adam) or (isinstance(opt, SGD) and opt.momentum > 0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=fit.lr, total_steps=total_steps, pct_start=fit.pct_start,
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
    """The model output compared with the target: one number per row for a float target."""
    return out[:, 0]


def loss_fn(name: str):
    if name == "mse":
        return F.mse_loss
    raise KeyError(name)  # check only lets known losses through


@torch.no_grad()
def evaluate(spec: Spec, model, columns: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, float]:
    """Loss and metrics over a whole split (in large batches)."""
    was_training = model.training
    model.eval()
    preds = []
    n = len(target)
    for s in range(0, n, VALID_BATCH):
        batch = [columns[c][s:s + VALID_BATCH] for c in spec.model.inputs]
        preds.append(_predict_column(spec, model(*batch)))
    model.train(was_training)
    pred = torch.cat(preds).double()
    y = target.double()
    err = pred - y
    mse = float((err * err).mean())
    values = {"loss": mse}
    for metric in spec.train.metrics:
        if metric == "mse":
            values[metric] = mse
        elif metric == "rmse":
            values[metric] = math.sqrt(mse)
        elif metric == "mae":
            values[metric] = float(err.abs().mean())
    return values


class Progress:
    """The per-epoch table on stdout and a progress bar on stderr (only on a terminal)."""

    def __init__(self, metrics: tuple[str, ...], out=None, err=None, bar: bool | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.metrics = metrics
        self.bar = self.err.isatty() if bar is None else bar
        self.header_done = False
        self.columns = ["epoch", "train_loss", "valid_loss", *metrics, "time"]

    def header(self) -> None:
        print("  ".join(f"{c:<10}" for c in self.columns).rstrip(), file=self.out, flush=True)
        self.header_done = True

    def step(self, epoch: int, done: int, total: int, smoothed: float | None, elapsed: float) -> None:
        if not self.bar:
            return
        width = 30
        filled = int(width * done / total)
        loss = f" loss {smoothed:.4f}" if smoothed is not None else ""
        eta = elapsed / max(done, 1) * (total - done)
        self.err.write(f"\r  epoch {epoch} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{loss}"
                       f"  eta {eta:4.0f}s ")
        self.err.flush()

    def epoch(self, record: EpochRecord) -> None:
        if self.bar:
            self.err.write("\r" + " " * 79 + "\r")
        if not self.header_done:
            self.header()
        mins, secs = divmod(int(round(record.seconds)), 60)
        cells = [f"{record.epoch:<10}", f"{record.train_loss:<10.6f}", f"{record.valid_loss:<10.6f}",
                 *(f"{record.metrics[m]:<10.6f}" for m in self.metrics), f"{mins:02d}:{secs:02d}"]
        print("  ".join(cells), file=self.out, flush=True)


def to_tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def build_model(spec: Spec, prepared: Prepared):
    """Seeded model construction (the same weights for the same spec and data)."""
    torch.manual_seed(spec.train.seed)
    sizes = {c: v.size for c, v in prepared.vocabs.items()}
    return lower(spec.model, sizes, class_name=_class_name(spec.name))


def _class_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.title())
    return cleaned if cleaned[:1].isalpha() else "Spec" + cleaned


def train(spec: Spec, prepared: Prepared, plan: TrainPlan, device: torch.device,
          progress: Progress | None = None, on_epoch=None) -> tuple[torch.nn.Module, History]:
    """Train the spec's model; `on_epoch(model, record, history)` runs after each epoch (checkpoints)."""
    model = build_model(spec, prepared).to(device)
    model.train()
    optimizer = make_optimizer(spec, model, device)
    scheduler = make_scheduler(spec, optimizer, plan.total_steps)
    loss_of = loss_fn(spec.train.loss)
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
    bar_every = 64

    for epoch in range(plan.epochs):
        start = time.perf_counter()
        lr_now = optimizer.param_groups[-1]["lr"]
        perm = torch.randperm(n, generator=generator, device=device)
        losses = []  # detached loss tensors: no host synchronisation inside the epoch
        lrs = []
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            out = model(*[x[idx] for x in x_train])
            loss = loss_of(_predict_column(spec, out), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lrs.append(optimizer.param_groups[-1]["lr"])
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            if progress is not None and progress.bar and s % bar_every == bar_every - 1:
                progress.step(epoch, s + 1, steps, float(losses[-1]), time.perf_counter() - start)
        raw = torch.stack(losses).double().cpu().numpy()
        if not np.isfinite(raw).all():
            bad = int(np.argmax(~np.isfinite(raw)))
            raise TrainingDiverged(epoch, bad, lrs[bad])
        smoothed, ewma = smooth(raw, start=ewma)
        scores = evaluate(spec, model, valid_t, valid_t[target])
        seconds = time.perf_counter() - start
        record = EpochRecord("train", epoch, float(smoothed[-1]), scores["loss"],
                             {m: scores[m] for m in spec.train.metrics}, lr_now, seconds)
        history.records.append(record)
        history.step_loss.extend(raw.tolist())
        history.step_smooth.extend(smoothed.tolist())
        history.step_lr.extend(lrs)
        if progress is not None:
            progress.epoch(record)
        if on_epoch is not None:
            on_epoch(model, record, history)
    return model, history


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, lr: float):
        self.epoch, self.step, self.lr = epoch, step, lr
        super().__init__(f"the loss became NaN or infinite in epoch {epoch}, step {step} (lr {lr:.3g}); "
                         "try a smaller learning rate")
