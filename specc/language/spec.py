"""The checked spec: normalised, typed, frozen; what every stage after `check` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Union

from specc.language.source import Source, Span

CATEGORY, FLOAT = "category", "float"
# The target of implicit feedback (`target = implicit(user, item)`): every row an interaction, a positive
# pair; the data gives no label, so the target column is made, never read.
IMPLICIT = "implicit"
POSITIVE = "positive"  # the name of that made column (1.0 on every row)
SAMPLINGS = ("uniform", "popularity")  # how the negatives of implicit feedback are drawn
# What one training example of implicit feedback is (`implicit(..., view=users)`): an interaction, whose
# (user, item) pair the model scores; or a user, for whom the model scores every item at once (its output
# one score per item, `linear(classes)`), the user's training items the target (multi-hot)
INTERACTIONS, USERS = "interactions", "users"
VIEWS = (INTERACTIONS, USERS)
# A set column derived from the training rows (`rated: history(user, item)`): for each row, the items
# its user has in the training rows (never a validation row's). Never read from the data: the model
# takes the key column and looks the set up in a table made at training, which the export carries.
HISTORY = "history"
# A set column read from the data (`tags: categories(sep="|")`): each row a set of ids (an id given twice
# in a row counts once), with a vocabulary of its own fitted on the training rows (index 0 the unknown id,
# and the padding of rows shorter than the longest). Its model input is [rows, longest set] of indices.
CATEGORIES = "categories"
SET_SEP = "|"  # the separator of a set's ids in a text field, unless the spec says otherwise
SET_MAX = 256  # the most distinct ids a row's set may hold, unless the spec says otherwise (`max_size=`)
SET_MAX_LIMIT = 1 << 16  # the largest max_size a spec may declare
SET_PAD_ID, SET_PAD_TEXT = -1, ""  # what pads a row's set in the exported model's (N, L) input
CLASSES = "classes"  # a symbolic size: the number of classes of a category target

Dim = Union[int, str]  # a size, or CLASSES until the data is read


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Column:
    """A column the spec reads: its name in the file and how its values are read.
    A float column may hold an array per row (`pixels: float(28, 28)`) and a scale (`/ 255`),
    which the model applies (so that the exported model takes the values as they are); its array may be
    read from several scalar columns of the file (`genres: float(columns=[action, drama])`)."""

    name: str
    kind: str  # CATEGORY, FLOAT, HISTORY or CATEGORIES
    span: Span = field(compare=False, repr=False)
    shape: tuple[int, ...] = ()  # per row; () is one number
    scale: float | None = None
    of: tuple[str, str] | None = None  # a HISTORY column's (key column, item column): see HISTORY
    table: str | None = None  # a side table's column (SideTable): looked up by the table's key, never read
    parts: tuple[str, ...] = ()  # a FLOAT column read from these scalar columns, one number each, in order
    sep: str | None = None  # a CATEGORIES column's separator of ids in a text field
    max_size: int | None = None  # a CATEGORIES column's most distinct ids a row

    @property
    def made(self) -> bool:
        """Made for each row, not read from the data: a history, or a side table's column."""
        return self.kind == HISTORY or self.table is not None


def file_columns(columns) -> tuple[Column, ...]:
    """The columns as a file holds them: a float column read from several (`parts`) as those scalar columns,
    each at the declaration's place in the spec; every other column as it is."""
    out = []
    for col in columns:
        out += [Column(part, FLOAT, col.span) for part in col.parts] if col.parts else [col]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CsvSource:
    """A delimited text file; `columns` names the fields when the file has no header. Values equal
    to one of `missing` (after stripping spaces, when `strip`) are missing."""

    kind: ClassVar[str] = "csv"  # its declaration in specc.data.sources (a tsv(...) is one too)
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

    kind: ClassVar[str] = "npz"
    path: Path
    span: Span = field(compare=False, repr=False)


IMAGE_MODES = {"gray": 1, "rgb": 3}  # images(mode=...) -> channels (Pillow's "L" and "RGB")
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # the two columns an images(...) source gives


@dataclass(frozen=True, slots=True)
class ImagesSource:
    """A folder of images, one subfolder per class (or `train/` and `valid/` folders that bring
    their own validation set, each so), every image decoded in `mode` and resized to `size`."""

    kind: ClassVar[str] = "images"
    path: Path
    size: tuple[int, int]  # (height, width)
    mode: str  # a key of IMAGE_MODES
    span: Span = field(compare=False, repr=False)
    skip_broken: bool = False  # an image that cannot be decoded is skipped (with a warning), not an error

    @property
    def row_shape(self) -> tuple[int, int, int]:
        """The shape of one image as the model gets it: (channels, height, width)."""
        return (IMAGE_MODES[self.mode], *self.size)


@dataclass(frozen=True, slots=True)
class ParquetSource:
    """A Parquet file, or a folder of them read as one table (files in order of their path), each
    column typed by the file's schema; `columns` is the selection the spec may read (None: all)."""

    kind: ClassVar[str] = "parquet"
    path: Path
    columns: tuple[str, ...] | None
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FrameSource:
    """A table a Python caller hands specc.train in place of the spec's own source (a pandas or
    polars DataFrame, a pyarrow Table, a dict of arrays), held as an Arrow table and read as a
    Parquet file's columns are; `path` names it in messages (`<pandas DataFrame>`), `span` is the
    spec's source it stands in for. No spec can name it."""

    kind: ClassVar[str] = "frame"
    path: Path
    table: object = field(compare=False, repr=False)  # a pyarrow.Table
    span: Span = field(compare=False, repr=False)
    columns: None = None  # every column of the frame may be read, as parquet(...) without columns=[...]


# A checked source: one of these, or another source's dataclass; each carries `kind` (the name of its
# declaration in specc.data.sources, which every stage calls), `path` and `span`.
DataSource = Union[CsvSource, NpzSource, ImagesSource, ParquetSource, FrameSource]


@dataclass(frozen=True, slots=True)
class RandomSplit:
    """A random `fraction` of the rows is the validation set, drawn with `seed`."""

    kind: ClassVar[str] = "random"  # its declaration in specc.data.splits, which every stage calls
    fraction: float
    seed: int
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RowSplit:
    """Rows `start` to `end` (0-based, end excluded; None = to the end) are the validation set."""

    kind: ClassVar[str] = "rows"
    start: int
    end: int | None
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LastSplit:
    """The last `fraction` of the rows is the validation set (for data in time order)."""

    kind: ClassVar[str] = "last"
    fraction: float
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PerUserSplit:
    """For each value of the category column `by` (each user), a random `fraction` of its rows is
    the validation set, drawn with `seed`: the count rounded half up, at least one row kept for training."""

    kind: ClassVar[str] = "per_user"
    fraction: float
    seed: int
    by: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LeaveLastSplit:
    """Each user's (a value of the category column `user`) last `n` rows in the order of the numeric
    column `by` (ties in file order) are the validation set, at least one row kept for training."""

    kind: ClassVar[str] = "leave_last"
    n: int
    by: str
    user: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FileSplit:
    """The rows of a second file, laid out as the source's and read as it reads its own, are the
    validation set; the source's file is the training set."""

    kind: ClassVar[str] = "file"
    path: Path
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class NoSplit:
    """No validation set: every row of the source is a training row (`valid = none`)."""

    kind: ClassVar[str] = "none"
    span: Span | None = field(default=None, compare=False, repr=False)


# A checked split: each carries `kind`, the name of its declaration in specc.data.splits.
Split = Union[RandomSplit, RowSplit, LastSplit, PerUserSplit, LeaveLastSplit, FileSplit, NoSplit]
DEFAULT_SPLIT = RandomSplit(0.2, 0)
PROCS = ("fill_missing", "categorify", "normalize")


@dataclass(frozen=True, slots=True)
class Augment:
    """Training-time changes to the image inputs, drawn anew for every batch on the device: a
    horizontal flip of half the images (`flip`), and a crop back to the image's size from the
    image padded with `crop` zeros on each side (0: none). Never at validation or in the export."""

    flip: bool = False
    crop: int = 0
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Implicit:
    """Implicit feedback: each row says user `user` interacted with item `item` (both category inputs).
    With `rating` and `threshold`, only rows whose rating is at least the threshold are interactions.
    Training draws `negatives` items per positive row (`sampling`: uniformly, or in proportion to
    their training interactions), never one of the user's own training items; the exported model
    returns each user's `top_k` items. With `view` USERS an example is a user, not an interaction: the
    model scores every item from the user alone, and nothing is drawn."""

    user: str
    item: str
    negatives: int
    sampling: str  # one of SAMPLINGS
    top_k: int
    span: Span = field(compare=False, repr=False)
    rating: str | None = None
    threshold: float | None = None
    view: str = INTERACTIONS  # one of VIEWS

    @property
    def per_user(self) -> bool:
        """An example is a user, whose every item the model scores at once (view = users)."""
        return self.view == USERS


@dataclass(frozen=True, slots=True)
class SideTable:
    """`table NAME { source = ..., key = ..., columns = [...] }` in the data block: a file with one row per
    value of `key` (a category input of the data), whose `columns` every row of the data takes from the
    table's row of its key: they are inputs the model may read wherever it reads the key. A key missing
    from the table takes `fill` (by column; else 0 for a float, the unknown category for a category).
    The exported model holds the table and takes only the key."""

    name: str
    source: DataSource
    key: str
    columns: tuple[Column, ...]  # each with `table` = name
    span: Span = field(compare=False, repr=False)
    fill: tuple[tuple[str, float | str], ...] = ()  # (column, value) where declared

    def fill_of(self, column: str) -> float | str | None:
        """The declared fill of a column (None: the default, 0 or the unknown category)."""
        return dict(self.fill).get(column)


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
    augment: Augment | None = None  # of the image inputs, while training
    feedback: Implicit | None = None  # the target is implicit feedback (then target.kind is IMPLICIT)
    tables: tuple[SideTable, ...] = ()  # side tables; their columns are among `inputs`, made (Column.made)

    @property
    def per_user(self) -> bool:
        """An example is a user (implicit feedback, view = users), not a row of the data."""
        return self.feedback is not None and self.feedback.per_user

    def read_columns(self, inputs: tuple[Column, ...] | None = None) -> tuple[Column, ...]:
        """The columns read from the data: the inputs (or those given) and the target; for implicit
        feedback the target is made, not read, and its rating column is read in its place."""
        inputs = tuple(c for c in (self.inputs if inputs is None else inputs) if not c.made)  # made, not read
        if self.feedback is None:
            return (*inputs, self.target)
        rating = self.feedback.rating
        return inputs if rating is None else (*inputs, Column(rating, FLOAT, self.feedback.span))

    def table(self, name: str) -> SideTable:
        """The side table of that name."""
        return next(t for t in self.tables if t.name == name)

    def indicator_columns(self) -> tuple[str, ...]:
        """With fill_missing, each float input has a `<name>_na` category column: missing or not."""
        if "fill_missing" not in self.procs:
            return ()
        return tuple(f"{c.name}_na" for c in self.inputs if c.kind == FLOAT and not c.shape)


# ---------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Op:
    """One use of an op declared in specc.model.ops: its name and its checked constant arguments, read
    as attributes (`op.out`, `op.p`). Values are rows; the op's declaration says what it does."""

    name: str
    args: tuple[tuple[str, object], ...] = ()  # (name, value), sorted by name: equal ops compare equal

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(sorted(self.args, key=lambda item: item[0])))

    def __getattr__(self, key: str):
        for name, value in object.__getattribute__(self, "args"):
            if name == key:
                return value
        raise AttributeError(f"op '{object.__getattribute__(self, 'name')}' has no argument '{key}'")

    def with_args(self, **changes) -> "Op":
        """The same op with some arguments given or replaced."""
        kept = tuple((k, v) for k, v in self.args if k not in changes)
        return Op(self.name, kept + tuple(changes.items()))


def op(name: str, **args) -> Op:
    """An op with its arguments by name: op("linear", out=10)."""
    return Op(name, tuple(args.items()))


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the model: `name = op(inputs)`, a row of `shape` numbers per example."""

    name: str
    op: Op  # specc.model.ops names it
    inputs: tuple[str, ...]
    shape: tuple[Dim, ...]
    span: Span = field(compare=False, repr=False)
    group: str = "model"  # the layer group whose learning rate and freezing its weights follow


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
class Optimizer:
    """The spec's optimizer: its kind (a name declared in specc.training.optimizers, which says what
    it does) and every one of its arguments, defaults filled in, read as attributes (`opt.wd`)."""

    kind: str
    args: tuple[tuple[str, object], ...] = ()  # (name, value), sorted by name: equal optimizers compare equal

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(sorted(self.args, key=lambda item: item[0])))

    def __getattr__(self, key: str):
        for name, value in object.__getattribute__(self, "args"):
            if name == key:
                return value
        raise AttributeError(f"optimizer '{object.__getattribute__(self, 'kind')}' has no argument '{key}'")


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
    precision: str = "fp32"  # or "bf16": the training forward pass under bfloat16 autocast

    @property
    def fit(self) -> Schedule:
        """The first stage's schedule (the only one of a plan without stages)."""
        return self.stages[0].fit


@dataclass(frozen=True, slots=True)
class SearchRange:
    """One line of a `search { }` block, for `specc tune`: a `--set` key and the values to try.
    kind: int (low..high, every `step`), float (uniform), log (log-uniform) or choice (`choices`, as
    written in the spec)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple[str, ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)

    def text(self) -> str:
        """The range as a spec writes it: `int(10, 100)`, `choice(32, 64)`."""
        if self.kind == "choice":
            return f"choice({', '.join(self.choices)})"
        step = f", step={self.step}" if self.step is not None else ""
        return f"{self.kind}({self.low:g}, {self.high:g}{step})"


@dataclass(frozen=True, slots=True)
class Spec:
    """A spec that has passed `check`: every later stage reads only this."""

    name: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    source: Source = field(compare=False, repr=False)
    inits: tuple[InitFrom, ...] = ()
    params: tuple = ()  # specc.language.params.NamedValue: the params block's values, as trained
    search: tuple[SearchRange, ...] = ()  # the search block (specc tune); training ignores it

    def graph_inputs(self) -> tuple[str, ...]:
        """The exported model's inputs: the columns the model reads, each side table column replaced by its
        table's key (once), which the graph looks the column up by."""
        names: list[str] = []
        made = {c.name: c.table for c in self.data.inputs if c.table is not None}
        for name in self.model.inputs:
            taken = self.data.table(made[name]).key if name in made else name
            if taken not in names:
                names.append(taken)
        return tuple(names)
