"""The checked spec: normalised, typed, frozen; what every stage after `check` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from specc.source import Source, Span

CATEGORY, FLOAT = "category", "float"


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Column:
    """A column the spec reads: its name in the file and how its values are read."""

    name: str
    kind: str  # CATEGORY or FLOAT
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CsvSource:
    """A delimited text file; `columns` names the fields when the file has no header."""

    path: Path
    delimiter: str
    header: bool
    columns: tuple[str, ...] | None
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RandomSplit:
    """A random `fraction` of the rows is the validation set, drawn with `seed`."""

    fraction: float
    seed: int


@dataclass(frozen=True, slots=True)
class RowSplit:
    """Rows `start` to `end` (0-based, end excluded; None = to the end) are the validation set."""

    start: int
    end: int | None


Split = Union[RandomSplit, RowSplit]


@dataclass(frozen=True, slots=True)
class DataSpec:
    source: CsvSource
    inputs: tuple[Column, ...]
    target: Column
    valid: Split
    batch: int


# ---------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Input:
    """A float input column, one number per row (width 1)."""

    column: str


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


Op = Union[Input, Embedding, Dot, Binary, SigmoidRange]


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the model: `name = op(inputs)`, `width` numbers per row."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    width: int
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    nodes: tuple[Node, ...]
    output: str
    inputs: tuple[str, ...]  # the input columns the model reads, in the data block's order

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
    """SGD with torch's momentum form (v = m*v + g; p -= lr*v) and decoupled weight decay."""

    momentum: float = 0.0
    wd: float = 0.0
    nesterov: bool = False


Optimizer = Union[Adam, SGD]


@dataclass(frozen=True, slots=True)
class Fit:
    """A constant learning rate for `epochs` epochs."""

    epochs: int
    lr: float


@dataclass(frozen=True, slots=True)
class FitOneCycle:
    """Leslie Smith's one cycle, as torch's OneCycleLR: lr up then annealed, momentum opposite."""

    epochs: int
    lr: float
    pct_start: float = 0.3
    div: float = 25.0
    final_div: float = 1e4
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)


Schedule = Union[Fit, FitOneCycle]


@dataclass(frozen=True, slots=True)
class TrainSpec:
    loss: str
    metrics: tuple[str, ...]
    optimizer: Optimizer
    fit: Schedule
    seed: int


@dataclass(frozen=True, slots=True)
class Spec:
    """A spec that has passed `check`: every later stage reads only this."""

    name: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    source: Source = field(compare=False, repr=False)
