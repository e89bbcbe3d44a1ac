"""What a split declaration is made of: its argument fields and the hooks each stage calls (no numpy,
no torch: `specc check --no-data` imports it).

A `SplitDef` says everything the stages need to know about one kind of validation split: the
checker binds a `valid = ...` call against its fields and `make`s the checked split; reading adds
the `columns` it reads to what the source reads, and reads its `valid_file` too where it has one;
`pick` chooses the rows; export records it as JSON and `specc evaluate --split` reads it back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from specc.language.spec import CATEGORY, FLOAT, Column
from specc.model.ops.base import Int, Real

NUMBER = "number"  # a DataColumn's kind: one number a row, a float input or a column of the file


@dataclass(frozen=True, slots=True)
class DataColumn:
    """A column of the data the split reads, named bare or as a string (`by=user`), `default` when
    not given. `kind` CATEGORY: a category input, which groups the rows; NUMBER: a float input of
    one value a row, or a column the inputs do not declare, read from the file as numbers for the
    split alone, which orders the rows."""

    name: str
    default: str
    kind: str  # CATEGORY or NUMBER
    doc: str = ""

    @property
    def required(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class FileName:
    """A data file: a string, relative to the spec's folder (one given with `--set`, to the working
    folder), as the source's path is."""

    name: str = "path"
    doc: str = ""
    default: None = None

    @property
    def required(self) -> bool:
        return True


Field = Union[Real, Int, DataColumn, FileName]


def no_problem(args: dict) -> str | None:
    """Arguments that always go together."""
    return None


def no_file(split) -> None:
    """The validation rows come from the source's own file."""
    return None


@dataclass(frozen=True, slots=True)
class SplitDef:
    """One kind of validation split of the language, declared once.

    name, doc   what a spec calls it; one line for docs/language.md's table of splits
    example     a use of it, as the docs' table writes it: `per_user(0.2, seed=1)`
    params      its arguments in call order, each with its bounds and default: Real and Int
                (specc.model.ops.base), DataColumn (a column it reads), FileName
    make        ({argument: value}, span) -> the checked split (specc.language.spec's dataclass),
                whose `kind` is the declaration every later stage looks up
    pick        (split, rows, {column: values}, path) -> (training rows, validation rows), each
                sorted: which rows of a file of `rows` rows it puts where, from the values of the
                columns it reads (its DataColumns); a DataError (D106) when one side is empty
    validate    ({argument: value}) -> why the arguments cannot go together (E311 at the call)
    valid_file  (split) -> the file its validation rows come from, read as the source reads its
                own (then `pick` gives every row of the source's file to training), or None
    validates   False for a split that keeps no validation rows (`none`): `pick` gives every row
                to training; the checker refuses early stopping, training computes no validation
                loss or metrics, export's parity check takes training rows, `evaluate --split
                valid` has no rows to take
    """

    name: str
    doc: str
    example: str
    params: tuple[Field, ...]
    make: Callable
    pick: Callable
    validate: Callable = no_problem
    valid_file: Callable = no_file
    validates: bool = True

    def columns(self, split) -> tuple[Column, ...]:
        """The columns of the data the split reads, as they are read: a category, or numbers."""
        return tuple(Column(getattr(split, f.name), CATEGORY if f.kind == CATEGORY else FLOAT, split.span)
                     for f in self.params if isinstance(f, DataColumn))

    def to_json(self, split) -> dict:
        """The split as an exported model records it: its kind and its arguments (a path as text)."""
        return {"kind": self.name, **{f.name: _json_value(getattr(split, f.name)) for f in self.params}}

    def from_json(self, d: dict):
        """The split that to_json wrote."""
        return self.make({f.name: Path(d[f.name]) if isinstance(f, FileName) else d[f.name] for f in self.params},
                         None)


def _json_value(value):
    return str(value) if isinstance(value, Path) else value
