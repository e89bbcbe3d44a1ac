"""What predict's readers of typed tables share (Parquet, JSON Lines): the columns a model asks for
by name, checked against the types the file gives its fields before its rows are read, and the
table's columns typed as the model's inputs (specc.inference.columns)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specc.data.files import shown_path
from specc.data.parquet import ParquetTable, misfit
from specc.data.table import shown_names
from specc.inference.columns import Ask, Inputs, fed, missing_text, read_as, row_shape
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Column


@dataclass
class FieldInputs(Inputs):
    """A typed table's inputs: a value is at its row of the file."""

    table: ParquetTable | None = None

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> DataError:
        if whole:
            return DataError(self.path, message, column=column, code=code)
        return self.table.error(index[0] if isinstance(index, tuple) else index, column, message, code)


def asked_columns(path: Path, session, ask: Ask, types: dict, has: str) -> tuple[list[Column], list[Column]]:
    """The columns to read (the model's inputs as it takes them, `ask.target`) and the one to keep
    as given (`ask.keep`, where the file has it); D107 for a field the file lacks, D104 for one
    whose type the model's input cannot take. `types`: each field's Arrow type (None: a field the
    file holds twice, which its reader reports); `has`: how the message names the file's fields."""
    target_kind = CATEGORY if session.metadata.get("specc.target_kind") == CATEGORY else FLOAT
    columns = [col for name in session.inputs for col in read_as(session, name, row_shape(session, name) or ())]
    if ask.target:
        columns.append(Column(ask.target, target_kind, None))
    columns += [c for c in ask.split_columns if all(c.name != other.name for other in columns)]  # evaluate's split
    absent = [c.name for c in columns if c.name not in types]
    if absent:
        what = "target" if absent == [ask.target] else "input"
        raise DataError(shown_path(path), f"{missing_text(absent, what)} ({has}: {shown_names(list(types))})",
                        code=codes.MISSING_INPUT)
    for col in columns:
        problem = misfit(col, types[col.name]) if types[col.name] is not None else None
        if problem is not None and not (col.kind == FLOAT and str(types[col.name]) == "null"):
            takes = "ids or text" if col.kind == CATEGORY else "lists of ids or text" if col.kind == CATEGORIES else \
                "numbers" if not col.shape else f"lists of {', '.join(map(str, col.shape))} numbers"
            raise DataError(shown_path(path), f"holds {problem[0]}; the model's column '{col.name}' takes {takes}",
                            column=col.name, code=codes.WRONG_TYPE)
    kept = [Column(ask.keep, target_kind, None)] if ask.keep and ask.keep in types and \
        all(c.name != ask.keep for c in columns) else []
    return columns, kept


def table_inputs(path: Path, session, ask: Ask, table: ParquetTable, kept: list[Column]) -> FieldInputs:
    """The table's columns as the model's feed (typed), the target's values and the kept column."""
    got = FieldInputs({}, table.rows, path=shown_path(path), table=table)
    for name in session.inputs:
        got.feed[name] = fed(session, name, table.columns, got)
    if ask.target:
        got.target = table.columns[ask.target]
    got.kept = {c.name: table.columns[c.name] for c in kept}
    got.split_values = {c.name: table.columns[c.name] for c in ask.split_columns}
    return got
