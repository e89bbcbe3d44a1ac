"""The checked spec: normalised, typed, frozen; what every stage after `check` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from specc.source import Source, Span

CATEGORY, FLOAT = "category", "float"
CLASSES = "classes"  # a symbolic size: the number of classes of a category target

Dim = Union[int, str]  # a size, or CLASSES until the data is read


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Column:
    """A column the spec reads: its name in the file and how its values are read.
    A float column may hold an array per row (`pixels: float(28, 28)`) and a scale (`/ 255`),
    which the model applies (so that the exported model takes the values as they are)."""

    name: str
    kind: str  # CATEGORY or FLOAT
    span: Span = field(compare=False, repr=False)
    shape: tuple[int, ...] = ()  # per row; () is one number
    scale: float | None = None


@dataclass(frozen=True, slots=True)
class CsvSource:
    """A delimited text file; `columns` names the fields when the file has no header. Values equal
    to one of `missing` (after stripping spaces, when `strip`) are missing."""

    path: Path
    delimiter: str
    header: bool
    columns: tuple[str, ...] | None
    span: Span = field(compare=False, repr=False)
    missing: tuple[str, ...] = ()
    strip: bool = False


@dataclass(frozen=True, slots=True)
class NpzSource:
    """Named arrays in a numpy .npz file (read without pickle): one array per column, or
    `<column>_train` and `<column>_valid` arrays when the file brings its own validation set."""

    path: Path
    span: Span = field(compare=False, repr=False)


DataSource = Union[CsvSource, NpzSource]


@dataclass(frozen=True, slots=True)
class RandomSplit:
    """A random `fraction` of the rows is the validation set, drawn with `seed`."""

    fraction: float
    seed: int
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RowSplit:
    """Rows `start` to `end` (0-based, end excluded; None = to the end) are the validation set."""

    start: int
    end: int | None
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LastSplit:
    """The last `fraction` of the rows is the validation set (for data in time order)."""

    fraction: float
    span: Span | None = field(default=None, compare=False, repr=False)


Split = Union[RandomSplit, RowSplit, LastSplit]
DEFAULT_SPLIT = RandomSplit(0.2, 0)
PROCS = ("fill_missing", "categorify", "normalize")


@dataclass(frozen=True, slots=True)
class DataSpec:
    source: DataSource
    inputs: tuple[Column, ...]
    target: Column
    valid: Split | None  # None: the file's own validation arrays, else random(0.2, seed=0)
    batch: int
    procs: tuple[str, ...] = ()  # fitted on the training rows; applied inside the model
    keep_classes: tuple[str, ...] = ()  # only rows whose (category) target is one of these
    train_rows: int | None = None  # only the first N training rows (after keep_classes)

    def indicator_columns(self) -> tuple[str, ...]:
        """With fill_missing, each float input has a `<name>_na` category column: missing or not."""
        if "fill_missing" not in self.procs:
            return ()
        return tuple(f"{c.name}_na" for c in self.inputs if c.kind == FLOAT and not c.shape)


# ---------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Input:
    """A float input column: its scale, then (with those procs) missing values filled with the
    training median and the result normalised with the training mean and standard deviation."""

    column: str
    scale: float | None = None
    fill: bool = False
    normalize: bool = False
    scalar: bool = True  # one number per row: it arrives as (batch,) and becomes a (batch, 1) value


@dataclass(frozen=True, slots=True)
class MissingIndicator:
    """`<column>_na`: a category per row, index 1 where the value is there, 2 where it is missing."""

    column: str


@dataclass(frozen=True, slots=True)
class Tabular:
    """fastai's tabular model, expanded into primitives once the data is read (specc.expand):
    an embedding per category column (fastai's size rule unless given), embedding dropout,
    batchnorm over the float columns, then per layer linear, ReLU, batchnorm, dropout, and a
    final linear to `out` (classes, or 1)."""

    cats: tuple[str, ...]
    conts: tuple[str, ...]
    layers: tuple[int, ...]
    ps: tuple[float, ...]
    emb_drop: float
    emb_sizes: tuple[tuple[str, int], ...]
    out: Dim

@dataclass(frozen=True, slots=True)
class Embedding:
    """One learned row of `dim` numbers per category of `column` (index 0: unknown)."""

    column: str
    dim: int


@dataclass(frozen=True, slots=True)
class Dot:
    """Row-wise dot product of two values of equal width -> width 1."""


@dataclass(frozen=True, slots=True)
class Binary:
    """Element-wise `+ - * /`; a width-1 operand broadcasts. `constant` replaces one operand."""

    op: str
    constant: float | None = None
    constant_first: bool = False


@dataclass(frozen=True, slots=True)
class SigmoidRange:
    """`sigmoid(x) * (high - low) + low`: squashes into (low, high)."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Linear:
    """An affine layer `x @ W.T + b` to `out` features (the input width is inferred)."""

    out: Dim


@dataclass(frozen=True, slots=True)
class Activation:
    """An element-wise non-linearity, or softmax / log_softmax over the features."""

    kind: str  # relu, sigmoid, tanh, softmax, log_softmax


@dataclass(frozen=True, slots=True)
class Dropout:
    """Zeroes each feature with probability p while training (scaled by 1/(1-p)); identity in eval."""

    p: float


@dataclass(frozen=True, slots=True)
class BatchNorm:
    """Normalises each feature over the batch while training (running statistics in eval)."""


@dataclass(frozen=True, slots=True)
class Flatten:
    """All features of a row in one dimension."""


@dataclass(frozen=True, slots=True)
class Concat:
    """Features of several values side by side."""


Op = Union[Input, MissingIndicator, Embedding, Dot, Binary, SigmoidRange, Linear, Activation, Dropout, BatchNorm,
           Flatten, Concat, Tabular]


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the model: `name = op(inputs)`, a row of `shape` numbers per example."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[Dim, ...]
    span: Span = field(compare=False, repr=False)
    group: str = "model"  # the layer group whose learning rate and freezing its weights follow

    @property
    def width(self) -> Dim:
        """The size of a 1-D value (the feature count)."""
        return self.shape[0] if len(self.shape) == 1 else "x".join(map(str, self.shape))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    nodes: tuple[Node, ...]
    output: str
    inputs: tuple[str, ...]  # the input columns the model reads, in the data block's order
    groups: tuple[str, ...] = ("model",)  # layer groups, first to last

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


# ---------------------------------------------------------------- train


@dataclass(frozen=True, slots=True)
class Adam:
    """Adam with decoupled weight decay (AdamW, fastai's default); `adamw` is the same."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    wd: float = 0.0


@dataclass(frozen=True, slots=True)
class SGD:
    """SGD with torch's momentum form (v = m*v + (1 - dampening)*g, the first v = g; p -= lr*v)
    and decoupled weight decay. dampening = momentum is the seed's EWMA of gradients."""

    momentum: float = 0.0
    wd: float = 0.0
    nesterov: bool = False
    dampening: float = 0.0


@dataclass(frozen=True, slots=True)
class RMSProp:
    """RMSProp: s = alpha*s + (1-alpha)*g^2; p -= lr * g / (sqrt(s) + eps); decoupled weight decay."""

    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    wd: float = 0.0


Optimizer = Union[Adam, SGD, RMSProp]


@dataclass(frozen=True, slots=True)
class LRSlice:
    """Discriminative learning rates over the layer groups, as the seed's `slice`:
    slice(low, high) spreads them geometrically from the first group (low) to the last (high);
    slice(high) gives the last group `high` and every other group high / div."""

    low: float | None
    high: float
    div: float = 3.0


@dataclass(frozen=True, slots=True)
class LRFind:
    """`lr = find`: run the learning-rate finder before the stage and take its suggestion."""

    suggestion: str = "valley"


LR = Union[float, LRSlice, LRFind]


@dataclass(frozen=True, slots=True)
class Fit:
    """A constant learning rate for `epochs` epochs."""

    epochs: int
    lr: LR
    span: Span | None = field(default=None, compare=False, repr=False)  # the fit statement


@dataclass(frozen=True, slots=True)
class FitOneCycle:
    """Leslie Smith's one cycle, as torch's OneCycleLR: lr up then annealed, momentum opposite."""

    epochs: int
    lr: LR
    pct_start: float = 0.3
    div: float = 25.0
    final_div: float = 1e4
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
    span: Span | None = field(default=None, compare=False, repr=False)  # the fit statement


Schedule = Union[Fit, FitOneCycle]


@dataclass(frozen=True, slots=True)
class EarlyStop:
    """Stop the stage when `monitor` has not improved for `patience` epochs; with `keep_best`,
    end it with the best epoch's weights."""

    monitor: str
    patience: int
    keep_best: bool = True


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a training plan: which groups are frozen, how long and how fast to train."""

    name: str
    fit: Schedule
    frozen: tuple[str, ...] = ()
    early_stop: EarlyStop | None = None


@dataclass(frozen=True, slots=True)
class InitFrom:
    """`init GROUP from "RUN"`: the group's weights come from an earlier run's model.safetensors."""

    group: str
    run: Path
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TrainSpec:
    loss: str
    metrics: tuple[str, ...]
    optimizer: Optimizer
    stages: tuple[Stage, ...]
    seed: int
    l2: float = 0.0  # the seed's penalty: loss + l2 * sum(w^2) over every parameter
    stop_on_nan: bool = True

    @property
    def fit(self) -> Schedule:
        """The first stage's schedule (the only one of a plan without stages)."""
        return self.stages[0].fit


@dataclass(frozen=True, slots=True)
class Spec:
    """A spec that has passed `check`: every later stage reads only this."""

    name: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    source: Source = field(compare=False, repr=False)
    inits: tuple[InitFrom, ...] = ()
    params: tuple = ()  # specc.params.NamedValue: the params block's values, as trained
