"""Predict's and evaluate's reader of Parquet: a Parquet file -> the model's input columns (and
target), read by the columns' names and typed by the file's schema (specc.data.parquet), then by
specc.inference.columns."""

from __future__ import annotations

from pathlib import Path

from specc.data.files import check_regular, shown_path
from specc.data.parquet import named_in_text, read_parquet
from specc.inference.columns import Ask
from specc.inference.read_fields import FieldInputs, asked_columns, table_inputs
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError
from specc.language.spec import ParquetSource


def read_parquet_rows(path: Path, session, ask: Ask) -> FieldInputs:
    """The model's input columns (and `ask.target`, and `ask.keep` where the file has it) from a
    Parquet file, by name; a column the file lacks, or holds values of a type the model's input
    cannot take (text for numbers), is an error naming it before a row is read."""
    check_regular(path)
    named_in_text([path])
    if ask.delimiter is not None:
        raise UsageError(f"--delimiter: {path} is a Parquet file, not a CSV")
    if ask.arrays:
        raise UsageError(f"--array names arrays of an .npz archive; {path} is a Parquet file (its schema names "
                         "the columns)")
    schema = _schema(path)
    types = {name: schema.field(name).type if schema.names.count(name) == 1 else None for name in schema.names}
    columns, kept = asked_columns(path, session, ask, types, "the file has")
    return table_inputs(path, session, ask, read_parquet(ParquetSource(path, None, None), tuple(columns + kept)),
                        kept)


def _schema(path: Path):
    """The file's Arrow schema, from its footer, or an error naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(shown_path(path), f"is not a readable Parquet file: {err}", code=codes.DAMAGED_FILE) from None
