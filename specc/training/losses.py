"""The loss and metric registry: every loss and metric a spec may name, declared once and torch-free:
the target it needs, what the exported model returns, which way is better, and how `specc evaluate`
computes it from the exported model's outputs. specc.training.metrics holds the torch side by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from specc.language.spec import CATEGORY, FLOAT

# What an exported model returns from the model's output `out` (a loss's `returns`); specc.export's
# graph and parity each translate every one of them.
RETURNS = ("value", "sigmoid", "softmax", "exp")


@dataclass(frozen=True, slots=True)
class LossDef:
    """One loss of the language, declared once.

    name, doc  what a spec calls it; what the model's output must be, for the docs
    target     the kind of target it compares the output with: FLOAT or CATEGORY
    returns    what the exported model returns from the model's output (one of RETURNS): the value
               as it is, a logit made a probability (sigmoid), logits made probabilities (softmax),
               log-probabilities made probabilities (exp); a category target's label comes beside them
    evaluate   (what the exported model returned, the target) -> the loss, as `specc evaluate`
               computes it (numpy, float64): the values and the float target; or the probabilities
               [rows, classes] and the target's class indices
    example    the model's last line, `out = ...` from `h` (a value of width 4), ending in what the
               loss compares with the target (the coverage test, tests/test_kinds.py, trains one)
    """

    name: str
    doc: str
    target: str
    returns: str
    evaluate: Callable
    example: str


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of the language, declared once.

    name, doc  what a spec calls it; one line for the docs
    target     the kind of target it needs: FLOAT or CATEGORY
    higher     a higher value is better (accuracy), else a lower one (rmse): early stopping, keep_best, tune
    compute    (prediction, target) -> the metric, as `specc evaluate` computes it (numpy): the values
               and the float target; or the predicted and the true classes, as indices
    """

    name: str
    doc: str
    target: str
    higher: bool
    compute: Callable


def _mse(pred, y) -> float:
    err = pred - y
    return float((err * err).mean())


def _mae(pred, y) -> float:
    return float(abs(pred - y).mean())


def _bce(p, y) -> float:
    """Binary cross entropy of probabilities, each log clamped at -100 as torch's is."""
    import numpy as np  # here, not at the top: `specc check` reads the declarations without numpy

    with np.errstate(divide="ignore"):
        return float(-(y * np.maximum(np.log(p), -100.0) + (1 - y) * np.maximum(np.log(1 - p), -100.0)).mean())


def _class_nll(probs, truth) -> float:
    """The mean negative log-probability of each row's true class (the probability clipped at 1e-12)."""
    import numpy as np

    picked = probs[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def _accuracy(pred, truth) -> float:
    return float((pred == truth).mean())


LOSSES: dict[str, LossDef] = {d.name: d for d in (
    LossDef("mse", "width 1", FLOAT, "value", _mse, "out = h |> linear(1)"),
    LossDef("l1", "width 1", FLOAT, "value", _mae, "out = h |> linear(1)"),
    LossDef("bce", "width 1, a probability (end with `sigmoid`)", FLOAT, "value", _bce,
            "out = h |> linear(1) |> sigmoid"),
    LossDef("bce_with_logits", "width 1, a logit", FLOAT, "sigmoid", _bce, "out = h |> linear(1)"),
    LossDef("cross_entropy", "a score (logit) per class: `linear(classes)`", CATEGORY, "softmax", _class_nll,
            "out = h |> linear(classes)"),
    LossDef("nll", "log-probabilities: end with `log_softmax`", CATEGORY, "exp", _class_nll,
            "out = h |> linear(classes) |> log_softmax"),
)}
METRICS: dict[str, MetricDef] = {d.name: d for d in (
    MetricDef("rmse", "the root of the mean squared error", FLOAT, False, lambda pred, y: math.sqrt(_mse(pred, y))),
    MetricDef("mse", "the mean squared error", FLOAT, False, _mse),
    MetricDef("mae", "the mean absolute error", FLOAT, False, _mae),
    MetricDef("accuracy", "the fraction of rows whose class is predicted", CATEGORY, True, _accuracy),
    MetricDef("error_rate", "1 - accuracy", CATEGORY, False, lambda pred, y: 1 - _accuracy(pred, y)),
)}
VALID_LOSS = "valid_loss"  # what early stopping and tune watch unless a metric is named


def loss(name: str) -> LossDef:
    """The declaration of a loss (KeyError for one never declared: the checker asks first)."""
    if name not in LOSSES:
        raise KeyError(f"loss '{name}' is not declared in specc.training.losses")
    return LOSSES[name]


def metric(name: str) -> MetricDef:
    """The declaration of a metric (KeyError for one never declared: the checker asks first)."""
    if name not in METRICS:
        raise KeyError(f"metric '{name}' is not declared in specc.training.losses")
    return METRICS[name]


def higher_is_better(monitor: str) -> bool:
    """Which way `monitor` improves: valid_loss falls; a metric as declared."""
    return False if monitor == VALID_LOSS else metric(monitor).higher
