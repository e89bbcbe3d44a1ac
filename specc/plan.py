"""Plan: checked spec + data sizes -> the training plan (optimizer, parameter groups, schedule).

Torch-free, so `specc show --stage plan` and `specc check` stay fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from specc.diagnostics import Diagnostic, SpecError
from specc.expand import expand
from specc.spec import (
    CATEGORY, CLASSES, SGD, Adam, BatchNorm, Embedding, Fit, FitOneCycle, Linear, LRFind, LRSlice, RMSProp, Spec,
)


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """A layer group: the modules whose weights share a learning rate and are frozen together."""

    name: str
    modules: tuple[str, ...]
    params: int


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage: each group's peak learning rate (None: frozen; nan: found by lr-find first)."""

    name: str
    fit: object  # specc.spec.Fit or FitOneCycle
    lrs: tuple[float | None, ...]
    early_stop: object = None

    @property
    def epochs(self) -> int:
        return self.fit.epochs


@dataclass(frozen=True, slots=True)
class TrainPlan:
    groups: tuple[ParamGroup, ...]
    stages: tuple[StagePlan, ...]
    batch: int
    n_train: int
    n_valid: int
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def group_lrs(lr, n: int) -> list[float]:
    """The seed's rules: a number for every group; slice(b): b for the last group, b/div for the
    others; slice(a, b): geometric from a (first group) to b (last group)."""
    if isinstance(lr, LRFind):
        return [math.nan] * n
    if not isinstance(lr, LRSlice):
        return [float(lr)] * n
    if lr.low is None:
        return [lr.high / lr.div] * (n - 1) + [lr.high]
    if n == 1:
        return [lr.high]
    return [lr.low * (lr.high / lr.low) ** (k / (n - 1)) for k in range(n)]


def resolve(dim, sizes: dict[str, int]) -> int:
    """A size: `classes` becomes the number of target classes."""
    return sizes[CLASSES] if dim == CLASSES else dim


def module_params(spec: Spec, sizes: dict[str, int]) -> dict[str, int]:
    """Parameter count of each module the model will have, without building it."""
    counts = {}
    model = expand(spec.model, sizes)
    for node in model.nodes:
        op = node.op
        if isinstance(op, Embedding):
            counts[node.name] = sizes[op.column] * op.dim
        elif isinstance(op, Linear):
            n_in = resolve(model.node(node.inputs[0]).shape[0], sizes)
            counts[node.name] = (n_in + 1) * resolve(op.out, sizes)
        elif isinstance(op, BatchNorm):
            counts[node.name] = 2 * resolve(node.shape[0], sizes)
    return counts


def check_data_fits(spec: Spec, sizes: dict[str, int]) -> None:
    """What only the data can tell: a fixed output size must match the number of target classes."""
    target = spec.data.target
    if target.kind != CATEGORY:
        return
    out = spec.model.node(spec.model.output)
    width, classes = out.shape[0], sizes[CLASSES]
    if width != CLASSES and width != classes:
        raise SpecError([Diagnostic(
            "E303", f"the model's output 'out' has width {width}, but the target '{target.name}' has {classes} "
            "classes in the data", out.span, ("write linear(classes) to size it from the data",))])


def model_sizes(spec: Spec, prepared) -> dict[str, int]:
    """Vocabulary sizes of the input columns, and `classes`: the number of target classes."""
    sizes = {c: v.size for c, v in prepared.vocabs.items() if c != spec.data.target.name}
    for column in spec.data.indicator_columns():
        sizes[column] = 3  # unknown (never used), present, missing
    if spec.data.target.name in prepared.vocabs:
        sizes[CLASSES] = prepared.vocabs[spec.data.target.name].size
    return sizes


def make_plan(spec: Spec, prepared) -> TrainPlan:
    """The training plan for a spec and its prepared data (specc.data.prepare.Prepared)."""
    sizes = model_sizes(spec, prepared)
    check_data_fits(spec, sizes)
    n_train, n_valid = prepared.n_train, prepared.n_valid
    counts = module_params(spec, sizes)
    model = expand(spec.model, sizes)
    groups = []
    for name in spec.model.groups:
        modules = tuple(n.name for n in model.nodes if n.group == name and n.name in counts)
        groups.append(ParamGroup(name, modules, sum(counts[m] for m in modules)))
    stages = []
    for stage in spec.train.stages:
        lrs = group_lrs(stage.fit.lr, len(groups))
        stages.append(StagePlan(stage.name, stage.fit,
                                tuple(None if g.name in stage.frozen else lr for g, lr in zip(groups, lrs)),
                                stage.early_stop))
    # As fastai does, the last incomplete batch of an epoch is dropped: batchnorm cannot train on a
    # batch of one, and each epoch's new permutation still shows every row over the epochs.
    steps = max(1, n_train // spec.data.batch)
    return TrainPlan(tuple(groups), tuple(stages), spec.data.batch, n_train, n_valid, steps)


def describe_optimizer(opt) -> str:
    if isinstance(opt, Adam):
        return (f"AdamW (decoupled weight decay): betas=({opt.betas[0]:g}, {opt.betas[1]:g}) "
                f"eps={opt.eps:g} wd={opt.wd:g}")
    if isinstance(opt, RMSProp):
        return f"RMSProp: alpha={opt.alpha:g} eps={opt.eps:g} momentum={opt.momentum:g} wd={opt.wd:g} (decoupled)"
    assert isinstance(opt, SGD)
    return (f"SGD: momentum={opt.momentum:g} dampening={opt.dampening:g} nesterov={str(opt.nesterov).lower()} "
            f"wd={opt.wd:g} (decoupled)")


def _lr_text(lr) -> str:
    if isinstance(lr, LRFind):
        return "found by lr-find before the stage"
    if isinstance(lr, LRSlice):
        return f"slice({lr.high:g}, div={lr.div:g})" if lr.low is None else f"slice({lr.low:g}, {lr.high:g})"
    return f"{lr:g}"


def describe_schedule(fit, total_steps: int) -> list[str]:
    if isinstance(fit, Fit):
        return [f"fit: constant lr {_lr_text(fit.lr)} for {fit.epochs} epochs ({total_steps} steps)"]
    assert isinstance(fit, FitOneCycle)
    warm = int(fit.pct_start * total_steps)
    return [
        f"fit_one_cycle: {fit.epochs} epochs, {total_steps} steps (torch OneCycleLR, cosine), peak lr "
        f"{_lr_text(fit.lr)}",
        f"  lr   peak / {fit.div:g} -> peak over the first {warm} steps ({fit.pct_start:.0%}),"
        f" then -> peak / {fit.div * fit.final_div:g}",
        f"  momentum {fit.moms[0]:g} -> {fit.moms[1]:g} -> {fit.moms[2]:g} (Adam's beta1 / SGD's momentum)",
    ]


def describe(spec: Spec, plan: TrainPlan) -> str:
    lines = [
        f"data: {plan.n_train} training rows, {plan.n_valid} validation rows, batch {plan.batch}"
        f" -> {plan.steps_per_epoch} steps per epoch",
        f"loss: {spec.train.loss}{f' + {spec.train.l2:g} * sum(w^2)' if spec.train.l2 else ''}   "
        f"metrics: {', '.join(spec.train.metrics) or '-'}   seed: {spec.train.seed}",
        f"optimizer: {describe_optimizer(spec.train.optimizer)}",
        "parameter groups:",
    ]
    for g in plan.groups:
        shown = ", ".join(g.modules[:6]) + (f", ... {len(g.modules)} modules" if len(g.modules) > 6 else "")
        lines.append(f"  {g.name:<8} {g.params:>10,} params  ({shown})")
    for stage in plan.stages:
        trainable = sum(g.params for g, lr in zip(plan.groups, stage.lrs) if lr is not None)
        frozen = sum(g.params for g, lr in zip(plan.groups, stage.lrs) if lr is None)
        lines.append(f"stage {stage.name}: {trainable:,} trainable, {frozen:,} frozen parameters")
        for g, lr in zip(plan.groups, stage.lrs):
            shown = "frozen" if lr is None else ("lr-find" if lr != lr else f"lr {lr:.4g}")
            lines.append(f"  {g.name:<8} {shown}")
        lines.extend("  " + line for line in describe_schedule(stage.fit, plan.steps_per_epoch * stage.epochs))
        if stage.early_stop is not None:
            es = stage.early_stop
            lines.append(f"  early stop: {es.monitor}, patience {es.patience}"
                         f"{', keeping the best epoch' if es.keep_best else ''}")
    return "\n".join(lines)
