"""The loss and metric registry: every loss and metric a spec may name, declared once and torch-free:
the target it needs, what the exported model returns, which way is better, and how `specc evaluate`
computes it from the exported model's outputs. specc.training.metrics holds the torch side by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from specc.language.spec import CATEGORY, FLOAT, IMPLICIT

# What an exported model returns from the model's output `out` (a loss's `returns`); specc.export's
# graph and parity each translate every one of them.
RETURNS = ("value", "sigmoid", "softmax", "exp")
# What the torch function of a loss of implicit feedback compares (a LossDef's `compares`); specc.training.implicit
# takes a batch each way, and specc.model.plan counts the (user, item) pairs a step scores each way.
PAIRS, CATALOGUE, SETS = "pairs", "catalogue", "sets"
COMPARES = (PAIRS, CATALOGUE, SETS)


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
               [rows, classes] and the target's class indices; None for implicit feedback, whose
               exported model ranks items (`specc evaluate` scores its ranking)
    example    the model's last line, `out = ...` from `h` (a value of width 4), ending in what the
               loss compares with the target (the coverage test, tests/test_kinds.py, trains one)
    negatives  it compares each positive with sampled negatives: `implicit(..., negatives=n)` needs n >= 1
    compares   implicit feedback's: what its torch function (specc.training.metrics) takes, one of COMPARES:
               PAIRS, the positives' scores [rows] and their sampled negatives' [rows, negatives]; CATALOGUE,
               every item's score for each positive's user [rows, items] (the unknown item left out) and the
               positive's item among them, its class [rows]: a softmax over the whole catalogue, whose
               data.batch x items scores a step are bounded (specc.model.plan.CATALOGUE_CELLS); SETS, a
               user's score of every item [users, items] (the unknown item left out) and the user's items
               multi-hot [users, items], for implicit(..., view=users), whose example is a user. None for
               the other targets' losses
    """

    name: str
    doc: str
    target: str
    returns: str
    evaluate: Callable | None
    example: str
    negatives: bool = False
    compares: str | None = None


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of the language, declared once.

    name, doc  what a spec calls it; one line for the docs
    target     the kind of target it needs: FLOAT or CATEGORY
    higher     a higher value is better (accuracy), else a lower one (rmse): early stopping, keep_best, tune
    compute    (prediction, target) -> the metric, as `specc evaluate` computes it (numpy): the values
               and the float target; or the predicted and the true classes, as indices. A ranking
               metric's: (hits [users, ranks] bool, relevant items per user, k) -> per-user values
               (specc.training.ranking)
    cutoff     a ranking metric, written with its cutoff: `ndcg(10)`, named `ndcg@10` in tables
    """

    name: str
    doc: str
    target: str
    higher: bool
    compute: Callable
    cutoff: bool = False


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
    LossDef("bpr", "width 1, a score per (user, item): -log sigmoid(positive - negative), over sampled negatives",
            IMPLICIT, "value", None, "out = h |> linear(1)", negatives=True, compares=PAIRS),
    LossDef("sampled_bce", "width 1, a logit per (user, item): binary cross entropy, the positive 1 and each "
            "sampled negative 0", IMPLICIT, "value", None, "out = h |> linear(1)", negatives=True, compares=PAIRS),
    LossDef("softmax", "width 1, a score per (user, item): cross entropy of the softmax over every item's score "
            "for the user, the positive's item the class; no negatives", IMPLICIT, "value", None,
            "out = h |> linear(1)", compares=CATALOGUE),
    LossDef("multinomial", "one score per item, `linear(classes)`, for a user of implicit(..., view=users): the "
            "multinomial log-likelihood of the user's items, -sum over them of log softmax(scores), as Mult-DAE "
            "trains", IMPLICIT, "value", None, "out = h |> linear(classes)", compares=SETS),
)}
def _ranked(name: str) -> Callable:
    """A ranking metric's per-user function, by name (specc.training.ranking imported when used)."""
    def compute(hit, n_relevant, k):
        from specc.training import ranking

        return ranking.RANKING[name](hit, n_relevant, k)
    return compute


_RANKING_DOCS = {
    "ndcg": "normalised discounted cumulative gain of the top k (binary relevance)",
    "recall": "the user's validation items in the top k, over the number of them",
    "hit": "1 when any of the user's validation items is in the top k",
    "precision": "the user's validation items in the top k, over k",
    "mrr": "1 / the rank of the first of the user's validation items in the top k (0: none)",
    "map": "the mean of the precisions at the ranks of the hits in the top k, over min(relevant, k)",
}
METRICS: dict[str, MetricDef] = {d.name: d for d in (
    MetricDef("rmse", "the root of the mean squared error", FLOAT, False, lambda pred, y: math.sqrt(_mse(pred, y))),
    MetricDef("mse", "the mean squared error", FLOAT, False, _mse),
    MetricDef("mae", "the mean absolute error", FLOAT, False, _mae),
    MetricDef("accuracy", "the fraction of rows whose class is predicted", CATEGORY, True, _accuracy),
    MetricDef("error_rate", "1 - accuracy", CATEGORY, False, lambda pred, y: 1 - _accuracy(pred, y)),
    *(MetricDef(name, doc, IMPLICIT, True, _ranked(name), cutoff=True) for name, doc in _RANKING_DOCS.items()),
)}
VALID_LOSS = "valid_loss"  # what early stopping and tune watch unless a metric is named


def loss(name: str) -> LossDef:
    """The declaration of a loss (KeyError for one never declared: the checker asks first)."""
    if name not in LOSSES:
        raise KeyError(f"loss '{name}' is not declared in specc.training.losses")
    return LOSSES[name]


def metric(name: str) -> MetricDef:
    """The declaration of a metric, by its name in tables (`ndcg@10` for a ranking metric; KeyError
    for one never declared: the checker asks first)."""
    base, _ = cutoff_of(name)
    if base not in METRICS:
        raise KeyError(f"metric '{name}' is not declared in specc.training.losses")
    return METRICS[base]


def cutoff_of(name: str) -> tuple[str, int | None]:
    """A metric's name in tables -> (its declaration's name, its cutoff k or None): `ndcg@10` -> (ndcg, 10)."""
    base, at, k = name.partition("@")
    return (base, int(k)) if at else (base, None)


def metric_key(name: str, k: int | None) -> str:
    """A metric's name in tables (metrics.csv's column, early_stop's monitor): `ndcg@10`, or `rmse`."""
    return name if k is None else f"{name}@{k}"


def higher_is_better(monitor: str) -> bool:
    """Which way `monitor` improves: valid_loss falls; a metric as declared."""
    return False if monitor == VALID_LOSS else metric(monitor).higher
