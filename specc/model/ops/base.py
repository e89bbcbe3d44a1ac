"""What an op declaration is made of: its argument fields, its shape rule, its weights (no torch).

An `OpDef` says everything the torch-free stages need to know about one op: the checker binds a
call against its fields (with their bounds), `infer` gives the output row shape, `weights` the
shapes of its learned tensors once every size is known, and `describe` the line `specc check`
prints. specc.model.lower and specc.export each hold one table entry per op for the torch side."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from specc.language.spec import CLASSES, Dim, Node, Op

Shape = tuple[Dim, ...]


# ---------------------------------------------------------------- argument fields


@dataclass(frozen=True, slots=True)
class Tensor:
    """A model value. `flat`: it must be one row of features (batch, n), not an image.
    `many`: the op takes every positional argument as a value, at least one."""

    name: str
    flat: bool = False
    many: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Real:
    """A constant number within bounds (None: no bound; `*_open`: the bound itself is excluded).
    `what` names it in messages; `default` None makes it required."""

    name: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    default: float | None = None
    what: str | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    def bounds_text(self) -> str:
        """The allowed range as the docs and messages write it: [0, 1), above 0, ..."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        if self.high is not None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        return "a finite number"


@dataclass(frozen=True, slots=True)
class Int:
    """A constant whole number in [low, high], or one of the bare `names` (conv2d's `same`).
    `default` None makes it required; `optional` makes it optional with no value (None)."""

    name: str
    low: int = 1
    high: int = 2**24
    what: str | None = None
    default: int | str | None = None
    names: tuple[str, ...] = ()
    optional: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional


@dataclass(frozen=True, slots=True)
class Dims:
    """A tuple of whole numbers, each in [1, high]: a shape such as (1, 28, 28)."""

    name: str
    high: int = 2**24
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Bool:
    """A constant `true` or `false`."""

    name: str
    default: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Reals:
    """A tuple of as many constant numbers as `default` holds, each within [low, high] (`high_open`:
    below high), such as Adam's betas; `example` is what the note of a wrong one shows (default: `default`)."""

    name: str
    default: tuple[float, ...]
    low: float = 0.0
    high: float = 1.0
    high_open: bool = True
    example: tuple[float, ...] = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Size:
    """A layer size: a whole number, or `classes` (the number of target classes)."""

    name: str
    what: str | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class CategoryColumn:
    """The name of a category input column (an embedding's rows are its categories)."""

    name: str
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class SetColumn:
    """The name of a set column: a categories column (`tags: categories(sep="|")`), whose sets of ids an
    embedding_bag reads as they are, or a history column (`rated: history(user, item)`), whose sets of items it
    reads through the rows' key column."""

    name: str
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Named:
    """One of a few bare names (embedding_bag's `mode=sqrtn`), `default` when not given."""

    name: str
    choices: tuple[str, ...]
    default: str
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Given:
    """An argument a block checks itself (blocks such as tabular take lists and pairs)."""

    name: str
    required: bool = False
    doc: str = ""


Field = Union[Tensor, Real, Int, Dims, Bool, Reals, Size, CategoryColumn, SetColumn, Named, Given]


# ---------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Arg:
    """A value an op reads, as its shape rule sees it: the node, the text the user wrote, its shape."""

    node: str
    text: str
    shape: Shape


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a call cannot be: a message and notes, reported at the call (or at `params`' arguments)."""

    message: str
    notes: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # the arguments to point at; () is the whole call


def same_shape(op: Op, args: tuple[Arg, ...]) -> Shape | Problem:
    """Element-wise ops: the row shape of their (first) value."""
    return args[0].shape


def no_weights(op: Op, inputs: tuple[tuple[int, ...], ...], shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {}


def no_multiply_adds(op: Op, inputs: tuple[tuple[int, ...], ...], shape: tuple[int, ...]) -> int:
    return 0


def shown(value) -> str:
    """An argument as `specc check` shows it: numbers with %g, names as written."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def call_text(op: Op, node: Node, defn: OpDef) -> str:
    """`name(inputs, constant arguments)`, as the summary shows a call; long lists shortened."""
    inputs = list(node.inputs)
    if len(inputs) > 4:
        return f"{op.name}({', '.join(inputs[:3])}, ... {len(inputs)} values)"
    consts = [shown(getattr(op, f.name)) for f in defn.params if not isinstance(f, (Tensor, Given))]
    return f"{op.name}({', '.join(inputs + consts)})"


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@dataclass(frozen=True, slots=True)
class OpDef:
    """One op of the language, declared once.

    name, doc        what a spec calls it; one line for the docs
    params           its arguments in order (a call binds them by position or keyword)
    infer            (op, args) -> the output row shape, or a Problem (E303 at the call)
    weights          (op, input shapes, output shape) -> {state-dict suffix: shape} once every
                     size is a number; the op "has weights" exactly when this is not empty
    multiply_adds    (same arguments) -> per row of the batch, for the thread heuristics
    describe         (op, node) -> the summary's text; default: the call as written
    validate         (constant arguments) -> a Problem across them (E311 at the arguments it names)
    sized            (op, Sizes) -> the op with what only the data tells (an embedding's rows)
    expand           a block's expansion into primitives, once the data is read
    callable         False for ops made by the syntax (`a + b`) or by the checker (input columns)
    example          one model-block line using it (the coverage test builds a spec of them)
    batch_statistics it normalises over the batch while training, keeping running statistics (its
                     module's floating-point buffers) for evaluation: a one-row batch cannot train
                     it, and data-parallel training averages those buffers over the processes
    random_per_row   it draws random numbers for each row of the batch while training (dropout), each
                     row's output from its own row and numbers: data-parallel training runs it over
                     the whole batch's shape on every process, each keeping its rows, so N processes
                     draw what one does (specc.training.distributed.RowSlices)
    lookup           its output rows are rows of its weight table (`weight`, rows x width) picked by
                     a category column's indices (embedding): training may gather the rows itself
                     (specc.training.fastpath), a sparse optimizer updates only the rows looked up,
                     export may index the table by the raw id (specc.export.ids)
    grid             each row of its output reads that row of its values alone, over the last axis (or
                     element-wise), and values of different leading shapes broadcast: on a [users,
                     items, ...] grid it gives each (user, item) pair what the pair alone gives, so a
                     recommender's value of both a user and an item may be one (specc.model.grid)
    unsized_params   (op) -> the summary's parameter count before the data is read
    kept             float32-sized numbers a training step holds per number of its output, until
                     the backward pass has used them: 1, its output (kept by the op or the next);
                     0 for a view of its input (flatten, reshape); more where the op keeps indices
                     or masks besides (max_pool's int64 indices: 3); specc.model.plan's memory estimate
    """

    name: str
    doc: str
    params: tuple[Field, ...]
    infer: Callable = same_shape
    weights: Callable = no_weights
    multiply_adds: Callable = no_multiply_adds
    describe: Callable | None = None
    validate: Callable | None = None
    sized: Callable | None = None
    expand: Callable | None = None  # blocks: (node, sizes, taken names, row shapes) -> primitive nodes
    callable: bool = True  # False: made by the syntax (a + b) or by the checker (input columns)
    example: str = ""  # a model-block line using it, for the docs and the coverage test
    batch_statistics: bool = False
    random_per_row: bool = False
    lookup: bool = False
    grid: bool = False
    unsized_params: Callable | None = None  # op -> text, e.g. "(n_user + 1) x 40"
    kept: float = 1.0  # numbers held for the backward pass per number of its output (see above)

    def text(self, node: Node) -> str:
        """How `specc check` describes one node of this op."""
        return self.describe(node.op, node) if self.describe else call_text(node.op, node, self)


def resolve(dim: Dim, classes: int | None) -> Dim:
    """A size with `classes` replaced by the number of target classes (when known)."""
    return classes if dim == CLASSES and classes is not None else dim
