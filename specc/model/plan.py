"""Plan: checked spec + data sizes -> the training plan (optimizer, parameter groups, schedule).

Torch-free, so `specc show --stage plan` and `specc check` stay fast."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from specc.language import codes
from specc.language.diagnostics import Diagnostic, SpecError, first_line
from specc.language.spec import CATEGORY, CLASSES, FitOneCycle, LRFind, LRSlice, Spec
from specc.model import ops
from specc.model.memory import BUDGET_NOTE, OBJECT_BYTES, budget, physical_memory, shown_bytes
from specc.model.ops.base import numel
from specc.model.sized import SizedModel, Sizes, model_sizes, size_model
from specc.training import losses, optimizers


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
    fit: object  # specc.language.spec.Fit or FitOneCycle
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


# The scores one training step of a softmax over the catalogue (losses.CATALOGUE) may take: the batch's rows x
# the items, 256 MiB of float32 at the bound and as much again for their gradient, beside the values of each
# (user, item) pair the model scores (which the memory estimate counts, pairs_per_row). A catalogue of 10^5
# items fits batch 671, of 10^4 batch 6,710 (docs/language.md, "Recommenders")
CATALOGUE_CELLS = 1 << 26


def pairs_per_row(spec: Spec, sizes: Sizes) -> int:
    """The (user, item) pairs the model scores for each training row: implicit feedback's positive and
    its negatives, or every item but the unknown one for a loss over the catalogue; 1 for a row of
    another target."""
    feedback = spec.data.feedback
    if feedback is None:
        return 1
    compares = losses.loss(spec.train.loss).compares
    return {losses.PAIRS: 1 + feedback.negatives, losses.CATALOGUE: sizes.vocab[feedback.item] - 1,
            losses.SETS: 1}[compares]  # a user's row is its scores of every item already: the model's output


def catalogue_error(spec: Spec, rows: int, items: int) -> Diagnostic | None:
    """E305 for a softmax over a catalogue of `items` that a step of `rows` rows scores in more than
    CATALOGUE_CELLS scores, at the implicit(...) target."""
    if losses.loss(spec.train.loss).compares not in (losses.CATALOGUE, losses.SETS) or rows * items <= CATALOGUE_CELLS:
        return None
    sampled = " or ".join(n for n, d in losses.LOSSES.items() if d.negatives)
    other = "" if spec.data.feedback.per_user else f", or compare each row with sampled negatives (loss = {sampled})"
    return Diagnostic(
        codes.DATA_SIZE, f"loss '{spec.train.loss}' scores every training row against all {items:,} items: a step of "
        f"{rows:,} rows is {rows * items:,} scores, more than {CATALOGUE_CELLS:,} (2^{CATALOGUE_CELLS.bit_length() - 1})",
        spec.data.feedback.span, (f"set data.batch to {CATALOGUE_CELLS // items:,} or less{other}",))


def trainable_errors(spec: Spec, model: SizedModel, n_train: int, steps: int, n_valid: int = 0,
                     held: int = 0, pairs: int = 1) -> list[Diagnostic]:
    """What the data's size decides and torch would otherwise fail on part-way: batchnorm on
    one-row batches, a one-cycle warm-up torch cannot schedule, a softmax over too many items for
    the batch, a model too large for memory (`pairs`: the pairs scored a row, pairs_per_row)."""
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
    # its memory is beside the point; a user's row (view = users) scores the model's output's items
    per_user = spec.data.per_user
    too_many = catalogue_error(spec, rows, numel(model.node(model.output).shape) if per_user else pairs)
    need = memory_need(model, spec.train.optimizer, rows, n_valid, held, pairs)
    memory = too_many or training_memory_error(spec, model, need)
    if memory is not None:
        errors.append(memory)
    return errors


def init_errors(spec: Spec, model: SizedModel) -> list[Diagnostic]:
    """Each `init GROUP from "RUN"`: the run's model.safetensors is there, whole, and holds the
    group's weights in the shapes they have here. Reported at the init line (E207)."""
    from specc.training.weights_header import BadWeights, read_header

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
    return params * 4 * (2 + optimizer_state(optimizer))


def optimizer_state(optimizer) -> int:
    """float32 numbers the optimizer keeps per parameter (Adam's two moments, a momentum buffer), as declared."""
    return optimizers.get(optimizer.kind).state(optimizer)


machine_memory = physical_memory  # this machine's physical memory (None where the system does not say)

# The memory estimate (docs/language.md, "Memory"), each part in bytes:
VALID_ROWS = 8192  # rows a validation pass takes at once on the CPU (specc.training.metrics.VALID_BATCH)
SAVED_COPIES = 3  # float32 copies of the weights that saving holds: the checkpoint's serialized
#                   weights and optimizer state, or export's ONNX initialisers, bytes and onnxruntime's
RUNTIME = 512 << 20  # torch, onnxruntime and Python themselves (350 MB measured on the CPU)


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """What training holds at its peak, by part (bytes): the state, always; the larger of a step's
    values (or a validation pass's) and saving's copies, which never meet; the data; the runtime."""

    params: int
    state: int  # weights, gradients and the optimizer's state (training_bytes)
    saving: int  # the checkpoint and the exported model, between the steps
    values: int  # the larger of a training step's and a validation pass's values
    data: int  # the data as prepared, held through training
    runtime: int  # torch and Python, not yet loaded (0 once they are: they count in what specc holds)
    batch: int  # rows a step takes
    rows: int  # rows the largest values are counted at: the batch, or a validation pass's chunk
    largest: str  # the node that holds the most of `values`
    largest_bytes: int
    pairs: int = 1  # the (user, item) pairs a step scores for each row (pairs_per_row): its values are per pair

    @property
    def total(self) -> int:
        return self.state + max(self.saving, self.values) + self.data + self.runtime


def memory_need(model: SizedModel, optimizer, batch: int, n_valid: int, held: int, pairs: int = 1) -> MemoryNeed:
    """The memory estimate of training `model` (see MemoryNeed): a training step at `batch` rows
    (the model run on `pairs` (user, item) pairs a row, for implicit feedback) keeps what each op
    declares it keeps (OpDef.kept) until the backward pass, whose gradients take twice the widest
    value besides; a validation pass (no gradients) holds three values at a time of VALID_ROWS rows,
    and every prediction. `held`: the data's bytes (data_bytes)."""
    params = sum(model.params().values())
    kept = model.kept_numbers()
    learned, widest = model.widest(learned=True), model.widest()
    step = 4 * batch * pairs * (sum(kept.values()) + 2 * (numel(learned.shape) if learned else 0))
    chunk = min(n_valid, VALID_ROWS)
    out = numel(model.node(model.output).shape)
    # three values at a time; the predictions as float32, joined into one, and as float64 for the metrics
    valid = 4 * chunk * 3 * (numel(widest.shape) if widest else 0) + 16 * n_valid * out
    rows = batch if step >= valid else chunk
    largest = max(kept, key=kept.get) if step >= valid else widest.name
    largest_bytes = int(4 * rows * (pairs * kept[largest] if step >= valid else numel(widest.shape)))
    runtime = 0 if "torch" in sys.modules else RUNTIME
    return MemoryNeed(params, training_bytes(params, optimizer), params * 4 * SAVED_COPIES, int(max(step, valid)),
                      held, runtime, batch, rows, largest, largest_bytes, pairs)


def data_bytes(prepared) -> int:
    """The bytes of the prepared data (specc.data.prepare.Prepared), held through training: the
    encoded splits and the rows as read that export's parity check takes (a text value counted as OBJECT_BYTES),
    the history tables, the side tables' columns by key, and a model of users' training interactions."""
    total = 0
    parts = (prepared.train, prepared.valid, prepared.raw_rows, prepared.tables or {}, prepared.pairs or {},
             {name: side.values for name, side in (prepared.sides or {}).items()})
    for part in parts:
        for values in part.values():
            total += values.nbytes + (OBJECT_BYTES * values.size if values.dtype.kind == "O" else 0)
    return total


def memory_error(model, optimizer, counts: dict[str, int], lower_bound: bool = False) -> Diagnostic | None:
    """A model (specc.language.spec.ModelSpec) whose training state alone cannot fit in the memory
    available, reported at its largest layer: before the data is read, `counts` being the layers
    whose sizes are known (`lower_bound`)."""
    total = sum(counts.values())
    available = budget()
    needed = training_bytes(total, optimizer)
    if needed <= available.bytes or not counts:
        return None
    largest = max(counts, key=counts.get)
    node = next((n for n in model.nodes if n.name == largest), None)
    span = node.span if node is not None else model.node(model.output).span
    at_least = "at least " if lower_bound else ""
    return Diagnostic(
        codes.TOO_LARGE, f"the model has {at_least}{total:,} parameters: training needs {at_least}"
        f"{shown_bytes(needed)}, more than {available}", span,
        (f"'{largest}' alone has {counts[largest]:,} parameters",
         "the count is of float32 weights, their gradients and the optimizer's state", BUDGET_NOTE))


def training_memory_error(spec: Spec, model: SizedModel, need: MemoryNeed) -> Diagnostic | None:
    """E307 when the estimate of training (MemoryNeed) is more than the memory available: at the
    line of its largest part (the largest layer, the largest value, or the data source)."""
    available = budget()
    if need.total <= available.bytes:
        return None
    span, what, fix = culprit(spec, model, need)
    return Diagnostic(codes.TOO_LARGE, f"the model has {need.params:,} parameters{what}: training needs "
                      f"{shown_bytes(need.total)}, more than {available}", span, (fix, _parts(need), BUDGET_NOTE))


def culprit(spec: Spec, model: SizedModel, need: MemoryNeed) -> tuple:
    """The largest part of the estimate: its line in the spec, a clause on it for the message
    (after "the model has N parameters"), and what to change."""
    weights = need.state + (need.saving if need.saving >= need.values else 0)
    values = need.values if need.values > need.saving else 0
    counts = model.params()
    if weights >= max(values, need.data) and counts:
        largest = max(counts, key=counts.get)
        return model.node(largest).span, "", f"'{largest}' alone has {counts[largest]:,} parameters: make it smaller"
    if values >= need.data:
        node = model.node(need.largest)
        step = need.rows == need.batch
        where = f"a training step at {_step(need)}" if step else f"validation, {need.rows:,} rows at a time,"
        shape = " x ".join(str(d) for d in node.shape)
        each = "a (user, item) pair" if step and need.pairs > 1 else "a row"
        return (node.span, f", and {where} holds {shown_bytes(need.values)} of values, '{node.name}' ({shape} numbers "
                f"{each}) {shown_bytes(need.largest_bytes)} of them",
                f"lower data.batch, or make '{node.name}' smaller" if step else f"make '{node.name}' smaller")
    return (spec.data.source.span, f", and its data takes {shown_bytes(need.data)} in memory",
            "train on a smaller file, or on a machine with more memory")


def _parts(need: MemoryNeed) -> str:
    """The estimate's parts, for a note."""
    values = _step(need) if need.rows == need.batch else f"validation's {need.rows:,} rows"
    runtime = f", torch and Python {shown_bytes(need.runtime)}" if need.runtime else ""
    return (f"the estimate: weights, gradients and the optimizer's state {shown_bytes(need.state)} "
            f"({need.params:,} parameters); values at {values} {shown_bytes(need.values)} (or saving the model, "
            f"between steps, {shown_bytes(need.saving)}); the data {shown_bytes(need.data)}{runtime}")


def _step(need: MemoryNeed) -> str:
    """A training step's size, for a message: `batch 64`, or `batch 64 x 9 (user, item) pairs a row`."""
    return f"batch {need.batch}" + (f" x {need.pairs:,} (user, item) pairs a row" if need.pairs > 1 else "")


def memory_estimate(spec: Spec, prepared) -> tuple[SizedModel, MemoryNeed]:
    """The sized model, and the memory estimate of training it on its prepared data."""
    sizes = model_sizes(spec, prepared)
    model = size_model(spec.model, sizes)
    return model, memory_need(model, spec.train.optimizer, min(spec.data.batch, prepared.n_train), prepared.n_valid,
                              data_bytes(prepared), pairs_per_row(spec, sizes))


_LOCATED = re.compile(r"(.+):(\d+):(\d+): computing '([^']*)': ")  # specc.model.lower.at_spec_line's prefix


def allocation_report(spec: Spec, prepared, err: BaseException) -> str:
    """The one line for an allocation that failed while training (E307, see memory.allocation_failed):
    at the spec line of the value being computed, where specc.model.lower.at_spec_line found it, else at
    the largest part of the memory estimate (or the data source, before the data is prepared);
    torch's (or numpy's) words; what to change."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    words = _allocator_words(first_line(chain[-1]))
    found = next((m for m in (_LOCATED.match(str(e)) for e in chain) if m), None)
    if found is not None:
        path, line, column, name = found.groups()
        return (f"{path}:{line}:{column}: error[{codes.TOO_LARGE}]: out of memory computing '{name}' at batch "
                f"{spec.data.batch} ({words}): lower data.batch, or make '{name}' smaller")
    if prepared is None:
        span, what = spec.data.source.span, f"out of memory reading the data ({words})"
    else:
        model, need = memory_estimate(spec, prepared)
        span, clause, fix = culprit(spec, model, need)
        what = f"out of memory while training ({words}); the model has {need.params:,} parameters{clause}: {fix}"
    return f"{span.source.path}:{span.line}:{span.column}: error[{codes.TOO_LARGE}]: {what}"


def _allocator_words(text: str) -> str:
    """torch's allocator's message, shorter: the CPU's without its source location and with the
    bytes in words, CUDA's without its notes on fragmentation."""
    text = text.split(" Of the allocated memory")[0]

    def in_words(found) -> str:
        n = int(found.group(1))
        return f"allocate {n:,} bytes ({shown_bytes(n)})"

    return re.sub(r"allocate (\d+) bytes", in_words, re.sub(r"^\[enforce fail at [^\]]*\] err == 0\. ", "", text))


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
    errors = trainable_errors(spec, model, n_train, steps, n_valid, data_bytes(prepared), pairs_per_row(spec, sizes)) \
        + init_errors(spec, model)
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
