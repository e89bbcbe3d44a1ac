"""Plan: checked spec + data sizes -> the training plan (optimizer, parameter groups, schedule).

Torch-free, so `specc show --stage plan` and `specc check` stay fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from specc.spec import SGD, Adam, Embedding, Fit, FitOneCycle, Spec


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """Parameters trained with one learning rate (a model without groups is one group)."""

    name: str
    modules: tuple[str, ...]
    params: int
    lr: float


@dataclass(frozen=True, slots=True)
class TrainPlan:
    groups: tuple[ParamGroup, ...]
    batch: int
    n_train: int
    n_valid: int
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def module_params(spec: Spec, vocab_sizes: dict[str, int]) -> dict[str, int]:
    """Parameter count of each module the model will have, without building it."""
    counts = {}
    for node in spec.model.nodes:
        if isinstance(node.op, Embedding):
            counts[node.name] = vocab_sizes[node.op.column] * node.op.dim
    return counts


def make_plan(spec: Spec, vocab_sizes: dict[str, int], n_train: int, n_valid: int) -> TrainPlan:
    counts = module_params(spec, vocab_sizes)
    group = ParamGroup("model", tuple(counts), sum(counts.values()), spec.train.fit.lr)
    steps = math.ceil(n_train / spec.data.batch)
    return TrainPlan((group,), spec.data.batch, n_train, n_valid, steps, spec.train.fit.epochs)


def describe_optimizer(opt) -> str:
    if isinstance(opt, Adam):
        return (f"AdamW (decoupled weight decay): betas=({opt.betas[0]:g}, {opt.betas[1]:g}) "
                f"eps={opt.eps:g} wd={opt.wd:g}")
    assert isinstance(opt, SGD)
    return f"SGD: momentum={opt.momentum:g} nesterov={str(opt.nesterov).lower()} wd={opt.wd:g} (decoupled)"


def describe_schedule(fit, total_steps: int) -> list[str]:
    if isinstance(fit, Fit):
        return [f"fit: constant lr {fit.lr:g} for {fit.epochs} epochs ({total_steps} steps)"]
    assert isinstance(fit, FitOneCycle)
    warm = int(fit.pct_start * total_steps)
    return [
        f"fit_one_cycle: {fit.epochs} epochs, {total_steps} steps (torch OneCycleLR, cosine)",
        f"  lr   {fit.lr / fit.div:.3g} -> {fit.lr:g} over the first {warm} steps ({fit.pct_start:.0%}),"
        f" then -> {fit.lr / (fit.div * fit.final_div):.3g}",
        f"  momentum {fit.moms[0]:g} -> {fit.moms[1]:g} -> {fit.moms[2]:g} (Adam's beta1 / SGD's momentum)",
    ]


def describe(spec: Spec, plan: TrainPlan) -> str:
    lines = [
        f"data: {plan.n_train} training rows, {plan.n_valid} validation rows, batch {plan.batch}"
        f" -> {plan.steps_per_epoch} steps per epoch",
        f"loss: {spec.train.loss}   metrics: {', '.join(spec.train.metrics) or '-'}   seed: {spec.train.seed}",
        f"optimizer: {describe_optimizer(spec.train.optimizer)}",
        "parameter groups:",
    ]
    for g in plan.groups:
        lines.append(f"  {g.name:<8} {g.params:>10,} params  lr {g.lr:g}  ({', '.join(g.modules)})")
    lines.extend(describe_schedule(spec.train.fit, plan.total_steps))
    return "\n".join(lines)
