"""The parquet(...) source: a Parquet file, or a folder of them read as one table, each column typed
by the files' schema (specc.data.parquet); `columns=[...]` selects what the spec may read."""

from __future__ import annotations

from specc.data.sources.base import FilePath, Names, SourceDef
from specc.data.sources.delimited import read_columns, selected
from specc.language.spec import ParquetSource


def _make(path, args: dict, span) -> ParquetSource:
    return ParquetSource(path, args["columns"], span)


def _columns(source: ParquetSource, inputs: tuple, target) -> tuple[list, None]:
    return (selected(source.columns, read_columns(inputs, target)) if source.columns is not None else []), None


def _read(data, wanted) -> tuple[dict, dict, str]:
    from specc.data.parquet import read_parquet
    from specc.data.split import table_rows

    return table_rows(data, wanted, read_parquet(data.source, wanted))


def _preview(spec, columns: tuple, n: int) -> tuple[dict, dict, str]:
    from specc.data.parquet import read_parquet
    from specc.data.split import split_table

    return split_table(read_parquet(spec.data.source, columns), columns, spec.data.valid)  # unchecked: as they are


def _reading(source: ParquetSource) -> dict:
    return {"format": "parquet"}


def _reader(path, session, ask):
    from specc.inference.read_parquet import read_parquet_rows

    return read_parquet_rows(path, session, ask)


def _recognises(path) -> bool:
    """A Parquet file by its name (.parquet, .parq, .pq) or its first bytes (PAR1)."""
    from specc.data.files import is_parquet

    return not path.is_dir() and is_parquet(path)


SOURCE = SourceDef("parquet", "a Parquet file, or a folder of them read as one table (columns typed by the schema)",
                   (FilePath(), Names("columns", "the columns the spec may read (default: all)")), make=_make,
                   columns=_columns, read=_read, preview=_preview, reading=_reading, reader=_reader,
                   recognises=_recognises)
