"""Predict's and evaluate's reader of Parquet: a Parquet file -> the model's input columns (and
target), read by the columns' names and typed by the file's schema (specc.data.parquet), then by
specc.inference.columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specc.data.files import check_regular, shown_path
from specc.data.parquet import ParquetTable, misfit, read_parquet
from specc.data.table import shown_names
from specc.inference.columns import Ask, Inputs, column_kind, missing_text, row_shape, typed
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError
from specc.language.spec import CATEGORY, FLOAT, Column, ParquetSource


@dataclass
class ParquetInputs(Inputs):
    """A Parquet file's inputs: a value is at its row of the file."""

    table: ParquetTable | None = None

    def at(self, index, column: str, message: str, code: codes.Code, whole: bool) -> DataError:
        if whole:
            return DataError(self.path, message, column=column, code=code)
        return self.table.error(index[0] if isinstance(index, tuple) else index, column, message, code)


def read_parquet_rows(path: Path, session, ask: Ask) -> ParquetInputs:
    """The model's input columns (and `ask.target`, and `ask.keep` where the file has it) from a
    Parquet file, by name; a column the file lacks, or holds values of a type the model's input
    cannot take (text for numbers), is an error naming it before a row is read."""
    check_regular(path)
    if ask.delimiter is not None:
        raise UsageError(f"--delimiter: {path} is a Parquet file, not a CSV")
    if ask.arrays:
        raise UsageError(f"--array names arrays of an .npz archive; {path} is a Parquet file (its schema names "
                         "the columns)")
    target_kind = CATEGORY if session.metadata.get("specc.target_kind") == CATEGORY else FLOAT
    columns = [Column(name, column_kind(session, name), None, row_shape(session, name) or ())
               for name in session.inputs]
    if ask.target:
        columns.append(Column(ask.target, target_kind, None))
    schema = _schema(path)
    names = schema.names
    absent = [c.name for c in columns if c.name not in names]
    if absent:
        what = "target" if absent == [ask.target] else "input"
        raise DataError(shown_path(path), f"{missing_text(absent, what)} (the file has: {shown_names(names)})",
                        code=codes.MISSING_INPUT)
    _fits(path, schema, columns)
    kept = [Column(ask.keep, target_kind, None)] if ask.keep and ask.keep in names and \
        all(c.name != ask.keep for c in columns) else []
    table = read_parquet(ParquetSource(path, None, None), tuple(columns + kept))
    got = ParquetInputs({}, table.rows, path=shown_path(path), table=table)
    for name in session.inputs:
        got.feed[name] = typed(session, name, table.columns[name], got)
    if ask.target:
        got.target = table.columns[ask.target]
    got.kept = {c.name: table.columns[c.name] for c in kept}
    return got


def _schema(path: Path):
    """The file's Arrow schema, from its footer, or an error naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(shown_path(path), f"is not a readable Parquet file: {err}", code=codes.DAMAGED_FILE) from None


def _fits(path: Path, schema, columns: list[Column]) -> None:
    """Each column's type is one the model's input can take (D104 naming the column and its type; a
    column named twice, read_parquet reports)."""
    for col in columns:
        if schema.names.count(col.name) > 1:
            continue
        problem = misfit(col, schema.field(col.name).type)
        if problem is not None:
            takes = "ids or text" if col.kind == CATEGORY else \
                "numbers" if not col.shape else f"lists of {', '.join(map(str, col.shape))} numbers"
            raise DataError(shown_path(path), f"holds {problem[0]}; the model's column '{col.name}' takes {takes}",
                            column=col.name, code=codes.WRONG_TYPE)
