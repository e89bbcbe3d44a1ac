"""What a source declaration is made of: its argument fields with their defaults and bounds, and the
hook each stage calls (no numpy, no torch: `specc check --no-data` imports it).

A `SourceDef` says everything the stages need to know about one kind of data source: the checker
binds a call against its fields and `make`s the checked source; prepare `read`s it; `specc show
--stage data` `preview`s it; export records how it was read (`reading`, the ONNX model's
specc.reading); predict and evaluate read new files with `reader`. The hooks that read files import
their readers when called, so that declaring a source costs `specc check` nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


# ---------------------------------------------------------------- argument fields


@dataclass(frozen=True, slots=True)
class FilePath:
    """The file or folder the source reads: a string, relative to the spec's folder (or, given with
    `--set`, to the working folder); an empty one or one holding a NUL is an error (E312)."""

    name: str = "path"
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Char:
    """One character, such as a delimiter (E312 for another length)."""

    name: str
    default: str
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Flag:
    """`true` or `false`. `default` None: `make` derives it from the other arguments."""

    name: str
    default: bool | None = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Names:
    """A list of column names, each once (`columns=[user, item]`); None when not given."""

    name: str
    doc: str = ""
    default: None = None

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Texts:
    """A string, or a list of strings (`missing=["?", ""]`)."""

    name: str
    default: tuple[str, ...] = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a few strings (`mode="gray"`). `choices`: each one and what it means; `aliases`: a
    word users may write for one of them (compared in lower case) -> (that choice, why)."""

    name: str
    choices: dict[str, str]
    default: str
    aliases: dict[str, tuple[str, str]]
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class ImageSize:
    """`(height, width)`, or one number for a square, each side in [1, high] pixels."""

    name: str
    high: int
    doc: str = ""

    @property
    def required(self) -> bool:
        return True


Field = Union[FilePath, Char, Flag, Names, Texts, Choice, ImageSize]


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a source's arguments cannot go together: a message and notes (E203 at the call)."""

    message: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Head:
    """The first rows of a table's columns, as text as the file has them: what `specc show --stage
    data` prints of a text file (a source's `preview` gives this, or its rows as read)."""

    rows: list[list[str]]


def no_problem(args: dict, given: set[str]) -> Problem | None:
    return None


def no_column_rules(source, inputs: tuple, target) -> tuple[list, None]:
    return [], None


# ---------------------------------------------------------------- the declaration


@dataclass(frozen=True, slots=True)
class SourceDef:
    """One kind of data source of the language, declared once.

    name, doc   what a spec calls it; one line for the docs (docs/language.md's table of sources)
    params      its arguments in order, `path` first, each with its default and bounds
    make        (path, {argument: value}, span) -> the checked source (specc.language.spec's
                dataclass), whose `kind` is the declaration every later stage looks up (a
                `tsv(...)` is a csv source)
    validate    ({argument: value}, names given) -> a Problem when the arguments cannot go together
    columns     (source, inputs, target) -> (diagnostics, the inputs as the model block is to see
                them, or None: as declared): what only this source rules out about the columns a
                spec declares (check)
    read        (DataSpec, wanted columns) -> (train arrays, valid arrays, path), the rows as read,
                checked and split: prepare encodes them (specc.data.prepare)
    preview     (Spec, columns, n) -> what `specc show --stage data` shows of the columns: their first
                n rows as the file has them (a Head), or (train arrays, valid arrays, path) as read,
                which specc.data.preview sums up column by column (and draws, for images)
    reading     (source) -> what an exported model records as specc.reading: {"format": its kind,
                and the options predict needs to read new files as the training data was read}
    reader      (path, Session, Ask) -> Inputs: how predict and evaluate read a file of this kind
    recognises  (path) -> whether a file given to predict or evaluate is of this kind by its name or
                first bytes, whatever the model was trained on (npz, Parquet). None: the source
                reads the files given to the models trained on it that no source recognises (a
                CSV model's text, an image model's images); every other model reads those as CSV
                with a header (TEXT in specc.data.sources)
    pixels      the input column whose values are uint8 pixels, which the model takes as they are
    table       its rows are records of the columns a spec names (implicit feedback reads its
                interactions from such a source; a folder of images is not one)
    """

    name: str
    doc: str
    params: tuple[Field, ...]
    make: Callable
    read: Callable
    preview: Callable
    reading: Callable
    reader: Callable
    validate: Callable = no_problem
    columns: Callable = no_column_rules
    recognises: Callable | None = None
    pixels: str | None = None
    table: bool = True
