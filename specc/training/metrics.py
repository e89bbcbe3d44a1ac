"""Losses, metrics and smoothing: model outputs and targets -> the training loss, each epoch's
validation numbers, and the smoothed loss a run shows (its EpochRecord and History).

LOSS_FNS and METRIC_FNS hold the torch side of every loss and metric of specc.training.losses, by name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from specc.language.spec import FLOAT, Spec
from specc.model.lower import at_spec_line
from specc.training import losses

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
    # implicit feedback's over pairs (losses.PAIRS): (the positives' scores [rows], their negatives' [rows, negatives])
    "bpr": lambda pos, neg: -F.logsigmoid(pos[:, None] - neg).mean(),  # Bayesian personalised ranking, every pair
    "sampled_bce": lambda pos, neg: sampled_bce(pos, neg),
    # and over the catalogue (losses.CATALOGUE): (every item's score for each positive's user [rows, items],
    # the positive's item among them [rows]); the mean of logsumexp(scores) - the positive's score
    "softmax": F.cross_entropy,
    # and over a user's items (losses.SETS): (every item's score for each user [users, items], the user's
    # items multi-hot [users, items]); per user the sum over its items of -log softmax, the mean over users
    "multinomial": lambda scores, items: -(F.log_softmax(scores, dim=1) * items).sum(dim=1).mean(),
}


def sampled_bce(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of the logits, each positive labelled 1 and each negative 0, over all of them."""
    logits = torch.cat([pos[:, None], neg], dim=1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def _mse(pred: torch.Tensor, y: torch.Tensor) -> float:
    err = pred - y
    return float((err * err).mean())


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean())


# Each metric over a whole split (float64): the values and the float target, or the predicted and the
# true classes as indices.
METRIC_FNS = {
    "rmse": lambda pred, y: math.sqrt(_mse(pred, y)),
    "mse": _mse,
    "mae": lambda pred, y: float((pred - y).abs().mean()),
    "accuracy": _accuracy,
    "error_rate": lambda pred, y: 1.0 - _accuracy(pred, y),
}


# What the exported model returns from the model's output, for each `returns` a loss declares (as
# specc.export.graph.RETURNS builds it in ONNX), computed by torch.
RETURNED = {
    "value": lambda out: out,
    "sigmoid": torch.sigmoid,
    "softmax": lambda out: torch.softmax(out, dim=-1),
    "exp": torch.exp,
}


def returned_by_export(loss: str, out: torch.Tensor) -> torch.Tensor:
    """What the exported model returns for the model's output `out`, as the loss declares it: the
    value (a probability where the loss took a logit), or the probabilities of the classes."""
    return RETURNED[losses.loss(loss).returns](out)


def torch_loss(name: str):
    """The torch function of a declared loss (KeyError for one never declared, or declared without one)."""
    losses.loss(name)
    if name not in LOSS_FNS:
        raise KeyError(f"loss '{name}' is declared but has no torch function in specc.training.metrics")
    return LOSS_FNS[name]


def torch_metric(name: str):
    """The torch function of a declared metric (KeyError for one never declared, or declared without one)."""
    losses.metric(name)
    if name not in METRIC_FNS:
        raise KeyError(f"metric '{name}' is declared but has no torch function in specc.training.metrics")
    return METRIC_FNS[name]


def predict_column(spec: Spec, out: torch.Tensor) -> torch.Tensor:
    """The model output compared with the target: one number per row for a float target, one
    score per class (as the model gives them) for a category target."""
    return out[:, 0] if spec.data.target.kind == FLOAT else out


def loss_fn(spec: Spec):
    """The training loss, with the seed's L2 penalty (l2 * sum of squared weights) when asked."""
    base = torch_loss(spec.train.loss)
    l2 = spec.train.l2
    if not l2:
        return lambda out, y, params: base(out, y)

    def with_penalty(out, y, params):
        return base(out, y) + l2 * torch.stack([(p * p).sum() for p in params]).sum()
    return with_penalty


def batch_loss(spec: Spec, forward, params: list):
    """loss(xs, y): the training loss of `forward(*xs)` against y, the l2 penalty over `params`.
    With `precision = bf16` the forward pass runs under bfloat16 autocast (torch picks the
    operations: matrix products and convolutions in bfloat16) and the loss is taken in float32.
    (Implicit feedback's is specc.training.implicit.implicit_loss: specc.training.steps.training_loss picks.)"""
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
    y = target.double() if spec.data.target.kind == FLOAT else target
    values = {"loss": float(torch_loss(spec.train.loss)(pred, y))}
    # A metric compares what the model predicts with the target: the value the exported model returns
    # (a probability where the loss took a logit), or the class with the highest score.
    pred = returned_by_export(spec.train.loss, pred) if spec.data.target.kind == FLOAT else pred.argmax(dim=-1)
    for metric in spec.train.metrics:
        values[metric] = torch_metric(metric)(pred, y)
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
    loss and metrics (None and {} with `valid = none`, which keeps no validation rows), the learning
    rate of its first step, and its seconds."""

    stage: str
    epoch: int
    train_loss: float
    valid_loss: float | None
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
    """Whether `new` improves on `best` (None: nothing to beat), the way the monitor's declaration says."""
    if best is None:
        return True
    return new > best if losses.higher_is_better(monitor) else new < best


def monitored(record: EpochRecord, monitor: str) -> float:
    """The epoch's value of the number early stopping watches."""
    return record.valid_loss if monitor == "valid_loss" else record.metrics[monitor]
