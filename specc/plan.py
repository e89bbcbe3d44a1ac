"""Plan: checked spec + data sizes -> the training plan (optimizer, parameter groups, schedule).

Torch-free, so `specc show --stage plan` and `specc check` stay fast."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from specc import codes
from specc import ops
from specc.diagnostics import Diagnostic, SpecError
from specc.sized import SizedModel, Sizes, model_sizes, size_model
from specc.spec import CATEGORY, CLASSES, Adam, FitOneCycle, LRFind, LRSlice, RMSProp, SparseAdam, Spec


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


def check_data_fits(spec: Spec, sizes: Sizes) -> None:
    """What only the data can tell: a fixed output size must match the number of target classes."""
    target = spec.data.target
    if target.kind != CATEGORY:
        return
    out = spec.model.node(spec.model.output)
    width, classes = out.shape[0], sizes.classes
    if width != CLASSES and width != classes:
        raise SpecError([Diagnostic(
            codes.OUTPUT_MISMATCH, f"the model's output 'out' has width {width}, but the target '{target.name}' has "
            f"{classes} classes in the data", out.span, ("write linear(classes) to size it from the data",))])


def one_step_warmup(fit, total_steps: int) -> bool:
    """Whether a one-cycle schedule warms up over exactly one step, which torch's OneCycleLR cannot
    schedule: it divides by (warm-up steps - 1)."""
    return isinstance(fit, FitOneCycle) and float(fit.pct_start * total_steps) - 1 == 0


def trainable_errors(spec: Spec, model: SizedModel, n_train: int, steps: int) -> list[Diagnostic]:
    """What the data's size decides and torch would otherwise fail on part-way: batchnorm on
    one-row batches, a one-cycle warm-up torch cannot schedule, a model too large for memory."""
    errors = []
    rows = min(spec.data.batch, n_train)  # the last incomplete batch is dropped (see make_plan)
    if rows < 2:
        # reported at the line that asked for it: the batchnorm, or the block that expands into one
        normed = [n for n in spec.model.nodes if any(model.origin.get(m.name, m.name) == n.name
                                                     for m in model.nodes if ops.get(m.op.name).batch_statistics)]
        if normed:
            errors.append(Diagnostic(
                codes.DATA_SIZE, f"'{normed[0].name}' normalises over each batch, but every training batch here has "
                f"one row ({n_train} training rows, batch {spec.data.batch})", normed[0].span,
                ("batchnorm needs at least 2 rows per batch: set data.batch to 2 or more, or use more "
                 "training rows",)))
    for stage in spec.train.stages:
        fit = stage.fit
        if one_step_warmup(fit, steps * fit.epochs):
            errors.append(Diagnostic(
                codes.DATA_SIZE, f"fit_one_cycle: pct_start={fit.pct_start:g} of {steps * fit.epochs} steps is a "
                "warm-up of exactly one step, which torch's OneCycleLR cannot schedule", fit.span,
                (f"{steps} steps per epoch ({n_train} training rows, batch {spec.data.batch}); choose another "
                 "pct_start or more epochs",)))
    memory = memory_error(spec.model, spec.train.optimizer, model.params())
    if memory is not None:
        errors.append(memory)
    return errors


def init_errors(spec: Spec, model: SizedModel) -> list[Diagnostic]:
    """Each `init GROUP from "RUN"`: the run's model.safetensors is there, whole, and holds the
    group's weights in the shapes they have here. Reported at the init line (E207)."""
    from specc.weights_header import BadWeights, read_header

    errors = []
    shapes = model.weight_shapes()
    for init in spec.inits:
        path = init.run / "model.safetensors"
        if not path.exists():
            where = "train that run first" if init.run.is_dir() else f"there is no folder {_shown(init.run)}: train " \
                "that run first"
            errors.append(Diagnostic(codes.BAD_INIT_RUN, f"no model.safetensors in {_shown(init.run)}", init.span,
                                     (f"{where}; its run folder holds the weights",)))
            continue
        try:
            saved = read_header(path)
        except BadWeights as err:
            errors.append(Diagnostic(codes.BAD_INIT_RUN, f"cannot read {_shown(path)}: {err}", init.span,
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
            errors.append(Diagnostic(codes.BAD_INIT_RUN, f"cannot take group '{init.group}' from {_shown(init.run)}",
                                     init.span, tuple(problems[:5])))
    return errors


def _shown(path: Path) -> Path:
    """A path as a message shows it: relative to the working folder when it is under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def training_bytes(params: int, optimizer) -> int:
    """float32 weights, their gradients and the optimizer's state for each: what training holds."""
    if isinstance(optimizer, (Adam, SparseAdam)):
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
        codes.TOO_LARGE, f"the model has {at_least}{total:,} parameters: training needs {at_least}{_bytes(needed)}, "
        f"more than this machine's {_bytes(available)} of memory", span,
        (f"'{largest}' alone has {counts[largest]:,} parameters",
         "the count is of float32 weights, their gradients and the optimizer's state"))


def _bytes(n: int) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:,} bytes"


def make_plan(spec: Spec, prepared) -> TrainPlan:
    """The training plan for a spec and its prepared data (specc.data.prepare.Prepared)."""
    sizes = model_sizes(spec, prepared)
    check_data_fits(spec, sizes)
    n_train, n_valid = prepared.n_train, prepared.n_valid
    # As fastai does, the last incomplete batch of an epoch is dropped: batchnorm cannot train on a
    # batch of one, and each epoch's new permutation still shows every row over the epochs.
    steps = max(1, n_train // spec.data.batch)
    model = size_model(spec.model, sizes)
    counts = model.params()
    errors = trainable_errors(spec, model, n_train, steps) + init_errors(spec, model)
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
