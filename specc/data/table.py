"""Reading delimited text tables: the columns a spec names, with errors that say file, row and column."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from specc.diagnostics import DataError, Diagnostic, SpecError, suggest
from specc.spec import CATEGORY, Column, CsvSource


@dataclass(frozen=True, slots=True)
class Table:
    """Columns read from a file: category columns as lists of str, float columns as float64 arrays."""

    path: str
    columns: dict
    rows: int
    lines: list  # the file's line number of each row, for messages


def _open(source: CsvSource):
    path = source.path
    if not path.exists():
        raise DataError(str(path), "file not found", code="D101")
    if path.is_dir():
        raise DataError(str(path), "is a folder, not a data file", code="D101")
    try:
        return open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(str(path), f"cannot be read: {err.strerror}", code="D101") from None


def read_table(source: CsvSource, wanted: tuple[Column, ...]) -> Table:
    """Read the `wanted` columns of a delimited file (the whole file, one pass)."""
    shown = str(source.path)
    with _open(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter, strict=True)
        try:
            first = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=1, code="D102") from None
        if first is None:
            raise DataError(shown, "the file is empty", code="D102")
        if source.columns is not None:
            # Given names; with header=true the file's own header line is skipped.
            names = list(source.columns)
            pending = [] if source.header else [first]
        else:
            names = [n.strip() for n in first]
            pending = []
        _check_header(source, names, wanted)
        index = {col.name: names.index(col.name) for col in wanted}
        values: dict[str, list[str]] = {col.name: [] for col in wanted}
        width = len(names)
        cols = [(values[col.name].append, index[col.name]) for col in wanted]
        lines: list[int] = []
        mark = lines.append
        try:
            for row in _chain(pending, reader):
                if len(row) != width:
                    if not row or row == [""]:
                        continue  # blank line
                    raise DataError(shown, f"expected {width} fields, found {len(row)}", line=reader.line_num,
                                    code="D103")
                mark(reader.line_num)
                for append, k in cols:
                    append(row[k])
        except csv.Error as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=reader.line_num, code="D102") from None
        except UnicodeDecodeError:
            raise DataError(shown, "is not UTF-8 text", line=reader.line_num + 1, code="D102") from None
    rows = len(next(iter(values.values()))) if values else 0
    if rows == 0:
        raise DataError(shown, "the file has no data rows", code="D102")
    columns = {}
    for col in wanted:
        raw = values[col.name]
        columns[col.name] = raw if col.kind == CATEGORY else _floats(raw, shown, col.name, lines)
    return Table(shown, columns, rows, lines)


def _chain(first, rest):
    yield from first
    yield from rest


def _check_header(source: CsvSource, names: list[str], wanted: tuple[Column, ...]) -> None:
    """A spec column that the file lacks is reported at the spec's line, with the file's columns."""
    errors = []
    for col in wanted:
        if col.name not in names:
            notes = suggest(col.name, names) + (f"{source.path.name} has the columns: {', '.join(names)}",)
            errors.append(Diagnostic("E205", f"column '{col.name}' is not in {source.path.name}", col.span, notes))
    if errors:
        raise SpecError(errors)


def _floats(raw: list[str], path: str, column: str, lines: list[int]) -> np.ndarray:
    try:
        return np.array(raw, dtype=np.float64)
    except ValueError:
        pass
    for k, text in enumerate(raw):  # find the first bad value, to say where it is
        try:
            float(text)
        except ValueError:
            raise DataError(path, f"expected a number, found '{text}'", line=lines[k], column=column,
                            code="D104") from None
    raise AssertionError("unreachable")


def check_finite(table: Table, column: str) -> None:
    """NaN or inf where a number is needed: say which row."""
    values = table.columns[column]
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(table.path, f"expected a finite number, found {values[k]}", line=table.lines[k],
                        column=column, code="D105")


__all__ = ["Table", "read_table", "check_finite"]
