"""Losses, metrics and smoothing: model outputs and targets -> the training loss, each epoch's
validation numbers, and the smoothed loss a run shows (its EpochRecord and History)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from specc.language.spec import FLOAT, Spec
from specc.model.lower import at_spec_line

SMOOTH_BETA = 0.98  # the seed's exponentially weighted moving average of the loss
VALID_BATCH = 8192

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


def predict_column(spec: Spec, out: torch.Tensor) -> torch.Tensor:
    """The model output compared with the target: one number per row for a float target, one
    score per class (as the model gives them) for a category target."""
    return out[:, 0] if spec.data.target.kind == FLOAT else out


def loss_fn(spec: Spec):
    """The training loss, with the seed's L2 penalty (l2 * sum of squared weights) when asked."""
    base = LOSS_FNS[spec.train.loss]
    l2 = spec.train.l2
    if not l2:
        return lambda out, y, params: base(out, y)

    def with_penalty(out, y, params):
        return base(out, y) + l2 * torch.stack([(p * p).sum() for p in params]).sum()
    return with_penalty


def batch_loss(spec: Spec, forward, params: list):
    """loss(xs, y): the training loss of `forward(*xs)` against y, the l2 penalty over `params`.
    With `precision = bf16` the forward pass runs under bfloat16 autocast (torch picks the
    operations: matrix products and convolutions in bfloat16) and the loss is taken in float32."""
    loss_of = loss_fn(spec)
    bf16 = spec.train.precision == "bf16"

    def loss(xs, y):
        try:
            if bf16:  # no autocast cache: a CUDA graph captures this step
                with torch.autocast(y.device.type, dtype=torch.bfloat16, cache_enabled=False):
                    out = forward(*xs)
                out = out.float()
            else:
                out = forward(*xs)
        except RuntimeError as err:  # a bug, not a user's mistake: say which spec line it came from
            raise at_spec_line(forward, xs, err) from err
        return loss_of(predict_column(spec, out), y, params)
    return loss


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
        preds.append(predict_column(spec, model(*batch)))
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


def fold(values: torch.Tensor, state: tuple[float, int]) -> tuple[float, tuple[float, int]]:
    """The smoothed loss after `values` (the losses since the last look), from the EWMA `state`."""
    smoothed, state = smooth(values.detach().double().cpu().numpy(), start=state)
    return float(smoothed[-1]), state


@dataclass
class EpochRecord:
    """One epoch's row of the table: its smoothed training loss (at the epoch's end), validation
    loss and metrics, the learning rate of its first step, and its seconds."""

    stage: str
    epoch: int
    train_loss: float
    valid_loss: float
    metrics: dict[str, float]
    lr: float
    seconds: float


@dataclass
class History:
    """A run's epoch records, and every step's raw and smoothed loss and learning rate."""

    records: list[EpochRecord] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)  # raw loss of each step
    step_smooth: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)

    def add(self, record: EpochRecord, raw: np.ndarray, smoothed: np.ndarray, lrs: list) -> None:
        """An epoch's record, and its steps' raw and smoothed losses and learning rates."""
        self.records.append(record)
        self.step_loss.extend(raw.tolist())
        self.step_smooth.extend(smoothed.tolist())
        self.step_lr.extend(lrs)


def better(monitor: str, new: float, best: float | None) -> bool:
    """Whether `new` improves on `best` (None: nothing to beat): accuracy rises, the rest fall."""
    if best is None:
        return True
    return new > best if monitor == "accuracy" else new < best


def monitored(record: EpochRecord, monitor: str) -> float:
    """The epoch's value of the number early stopping watches."""
    return record.valid_loss if monitor == "valid_loss" else record.metrics[monitor]
