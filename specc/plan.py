"""Plan: checked spec + data sizes -> the training plan (optimizer, parameter groups, schedule).

Torch-free, so `specc show --stage plan` and `specc check` stay fast."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from specc.diagnostics import Diagnostic, SpecError
from specc.expand import expand
from specc.spec import (
    CATEGORY, CLASSES, SGD, Adam, BatchNorm, Embedding, Fit, FitOneCycle, Linear, LRFind, LRSlice, RMSProp, Spec,
    Tabular,
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


def one_step_warmup(fit, total_steps: int) -> bool:
    """Whether a one-cycle schedule warms up over exactly one step, which torch's OneCycleLR cannot
    schedule: it divides by (warm-up steps - 1)."""
    return isinstance(fit, FitOneCycle) and float(fit.pct_start * total_steps) - 1 == 0


def trainable_errors(spec: Spec, model, counts: dict[str, int], n_train: int, steps: int) -> list[Diagnostic]:
    """What the data's size decides and torch would otherwise fail on part-way: batchnorm on
    one-row batches, a one-cycle warm-up torch cannot schedule, a model too large for memory.
    `model`: the spec's model expanded into primitives."""
    errors = []
    rows = min(spec.data.batch, n_train)  # the last incomplete batch is dropped (see make_plan)
    if rows < 2:
        normed = [n for n in spec.model.nodes if isinstance(n.op, (BatchNorm, Tabular))]
        if normed and any(isinstance(n.op, BatchNorm) for n in model.nodes):
            errors.append(Diagnostic(
                "E305", f"'{normed[0].name}' normalises over each batch, but every training batch here has "
                f"one row ({n_train} training rows, batch {spec.data.batch})", normed[0].span,
                ("batchnorm needs at least 2 rows per batch: set data.batch to 2 or more, or use more "
                 "training rows",)))
    for stage in spec.train.stages:
        fit = stage.fit
        if one_step_warmup(fit, steps * fit.epochs):
            errors.append(Diagnostic(
                "E305", f"fit_one_cycle: pct_start={fit.pct_start:g} of {steps * fit.epochs} steps is a warm-up "
                "of exactly one step, which torch's OneCycleLR cannot schedule", fit.span,
                (f"{steps} steps per epoch ({n_train} training rows, batch {spec.data.batch}); choose another "
                 "pct_start or more epochs",)))
    memory = memory_error(spec.model, spec.train.optimizer, counts)
    if memory is not None:
        errors.append(memory)
    return errors


def weight_shapes(model, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every weight and bias the lowered model (`model` expanded) will have, by
    state-dict key."""
    width = {n.name: n.shape for n in model.nodes}
    shapes = {}
    for node in model.nodes:
        op = node.op
        if isinstance(op, Embedding):
            shapes[f"{node.name}.weight"] = (sizes[op.column], op.dim)
        elif isinstance(op, Linear):
            out = resolve(op.out, sizes)
            shapes[f"{node.name}.weight"] = (out, resolve(width[node.inputs[0]][0], sizes))
            shapes[f"{node.name}.bias"] = (out,)
        elif isinstance(op, BatchNorm):
            shapes[f"{node.name}.weight"] = shapes[f"{node.name}.bias"] = (resolve(node.shape[0], sizes),)
    return shapes


def init_errors(spec: Spec, model, sizes: dict[str, int]) -> list[Diagnostic]:
    """Each `init GROUP from "RUN"`: the run's model.safetensors is there, whole, and holds the
    group's weights in the shapes they have here. Reported at the init line (E207). `model`: the
    spec's model expanded into primitives."""
    from specc.weights_header import BadWeights, read_header

    errors = []
    shapes = weight_shapes(model, sizes) if spec.inits else {}
    for init in spec.inits:
        path = init.run / "model.safetensors"
        if not path.exists():
            where = "train that run first" if init.run.is_dir() else f"there is no folder {_shown(init.run)}: train " \
                "that run first"
            errors.append(Diagnostic("E207", f"no model.safetensors in {_shown(init.run)}", init.span,
                                     (f"{where}; its run folder holds the weights",)))
            continue
        try:
            saved = read_header(path)
        except BadWeights as err:
            errors.append(Diagnostic("E207", f"cannot read {_shown(path)}: {err}", init.span,
                                     ("train that run again, or init from another run",)))
            continue
        group = {n.name for n in model.nodes if n.group == init.group}
        problems = []
        for key, shape in shapes.items():
            if key.split(".")[0] not in group:
                continue
            if key not in saved:
                problems.append(f"the run has no '{key}'")
            elif saved[key][1] != shape:
                problems.append(f"'{key}' is {saved[key][1]} in the run but {shape} here")
        if problems:
            errors.append(Diagnostic("E207", f"cannot take group '{init.group}' from {_shown(init.run)}", init.span,
                                     tuple(problems[:5])))
    return errors


def _shown(path: Path) -> Path:
    """A path as a message shows it: relative to the working folder when it is under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def training_bytes(params: int, optimizer) -> int:
    """float32 weights, their gradients and the optimizer's state for each: what training holds."""
    if isinstance(optimizer, Adam):
        state = 2  # the two moments
    elif isinstance(optimizer, RMSProp):
        state = 1 + (optimizer.momentum > 0)
    else:
        state = int(optimizer.momentum > 0)
    return params * 4 * (2 + state)


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_error(model, optimizer, counts: dict[str, int], lower_bound: bool = False) -> Diagnostic | None:
    """A model (specc.spec.ModelSpec) whose training state cannot fit in this machine's memory,
    reported at its largest layer."""
    total = sum(counts.values())
    available = machine_memory()
    needed = training_bytes(total, optimizer)
    if available is None or needed <= available or not counts:
        return None
    largest = max(counts, key=counts.get)
    node = next((n for n in model.nodes if n.name == largest), None)
    span = node.span if node is not None else model.node(model.output).span
    at_least = "at least " if lower_bound else ""
    return Diagnostic(
        "E307", f"the model has {at_least}{total:,} parameters: training needs {at_least}{_bytes(needed)}, "
        f"more than this machine's {_bytes(available)} of memory", span,
        (f"'{largest}' alone has {counts[largest]:,} parameters",
         "the count is of float32 weights, their gradients and the optimizer's state"))


def _bytes(n: int) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:,} bytes"


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
    # As fastai does, the last incomplete batch of an epoch is dropped: batchnorm cannot train on a
    # batch of one, and each epoch's new permutation still shows every row over the epochs.
    steps = max(1, n_train // spec.data.batch)
    counts = module_params(spec, sizes)
    model = expand(spec.model, sizes)
    errors = trainable_errors(spec, model, counts, n_train, steps) + init_errors(spec, model, sizes)
    if errors:
        raise SpecError(sorted(errors, key=lambda d: (d.span is None, d.span is not None and d.span.source is not
                                                      spec.source, d.span.start if d.span else 0)))
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


def _fastai_defaults_note(spec: Spec, plan: TrainPlan) -> list[str]:
    """Which of fastai 1's defaults that fastai 2 changed this plan trains with, and how to get
    fastai 2's instead: a reader of the seed (fastai 1's era) may expect either."""
    cycles = [s.fit for s in plan.stages if isinstance(s.fit, FitOneCycle)]
    adam_eps = isinstance(spec.train.optimizer, Adam) and spec.train.optimizer.eps == 1e-8
    used, fastai2 = [], []
    if any(f.pct_start == 0.3 for f in cycles):
        used.append("pct_start=0.3")
        fastai2.append("pct_start=0.25")
    # fastai 2's div_final divides the peak; torch's final_div_factor (specc's final_div) divides
    # the starting lr, peak / div: fastai 2's end is final_div = 1e5 / div.
    late = [f for f in cycles if f.final_div == 1e4 and f.div * f.final_div != 1e5]
    if late:
        divs = {f.div for f in late}
        div = divs.pop() if len(divs) == 1 else None
        used.append(f"final_div=1e4 (the lr ends at peak / {f'{div * 1e4:g}' if div else '(div * 1e4)'})")
        fastai2.append(f"final_div={f'{1e5 / div:g}' if div else '1e5/div'}")
    if adam_eps:
        used.append("adam eps=1e-8")
    if not used:
        return []
    how = [f"fit_one_cycle(..., {', '.join(fastai2)}){' (the lr ends at peak / 1e5)' if late else ''}"] if fastai2 else []
    how += ["adam(eps=1e-5)"] if adam_eps else []
    return [f"defaults: fastai 1's, the seed's (torch's OneCycleLR and AdamW have the same): {', '.join(used)}",
            f"  for fastai 2's, write {' and '.join(how)}"]


def describe(spec: Spec, plan: TrainPlan) -> str:
    """The plan as text: data, loss, optimizer, groups, each stage's learning rates and schedule."""
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
    lines.extend(_fastai_defaults_note(spec, plan))
    return "\n".join(lines)
