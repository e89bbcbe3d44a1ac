"""Reading delimited text tables: the columns a spec names, with errors that say file, row and column.

Two readers, one result. pyarrow's CSV reader (multi-threaded C++) reads the file; a 25-million-row
ratings file loads in seconds, where Python's csv module takes minutes. When pyarrow rejects the
file, or a value does not convert, the file is read again with Python's csv module, which knows the
line of every row, to say exactly where and what is wrong."""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass

import numpy as np

from specc.diagnostics import DataError, Diagnostic, SpecError, suggest
from specc.spec import CATEGORY, Column, CsvSource


@dataclass(frozen=True, slots=True)
class Table:
    """Columns read from a file: float columns as float64 arrays (NaN where missing), category
    columns as int64 arrays when every value is a whole number, else as arrays of str."""

    path: str
    columns: dict
    rows: int
    source: CsvSource
    wanted: tuple

    def line(self, row: int) -> int:
        """The file's line number of a data row (0-based), for messages."""
        return _python_read(self.source, self.wanted, row_limit=row + 1).lines[row]


def missing_file(source) -> Exception:
    """A data file that is not there: reported at the spec line that names it, when there is one."""
    if source.span is None:
        return DataError(str(source.path), "file not found", code="D101")
    note = "a path in a spec is relative to the spec's folder; one given with --set, to the working folder"
    return SpecError([Diagnostic("E208", f"data file not found: {source.path}", source.span, (note,))])


def _open(source: CsvSource):
    path = source.path
    if not path.exists():
        raise missing_file(source)
    if path.is_dir():
        raise DataError(str(path), "is a folder, not a data file", code="D101")
    try:
        return open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(str(path), f"cannot be read: {err.strerror}", code="D101") from None


def read_table(source: CsvSource, wanted: tuple[Column, ...]) -> Table:
    """Read the `wanted` columns of a delimited file."""
    names = _header(source, wanted)
    try:
        columns, rows = _arrow_read(source, wanted, names)
    except _Fallback:
        result = _python_read(source, wanted)
        columns, rows = result.columns, result.rows
    if rows == 0:
        raise DataError(str(source.path), "the file has no data rows", code="D102")
    return Table(str(source.path), columns, rows, source, tuple(wanted))


class _Fallback(Exception):
    """pyarrow could not read it as asked: let the Python reader find and report the problem."""


def _header(source: CsvSource, wanted) -> list[str]:
    """The file's column names (its first line, or the spec's `columns`), checked against the spec."""
    with _open(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter)
        try:
            first = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(str(source.path), f"cannot be parsed: {err}", line=1, code="D102") from None
    if first is None:
        raise DataError(str(source.path), "the file is empty", code="D102")
    names = list(source.columns) if source.columns is not None else [n.strip() for n in first]
    _check_header(source, names, wanted)
    return names


def _arrow_read(source: CsvSource, wanted, names: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    skip = 1 if source.header else 0
    read = pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=source.delimiter, quote_char='"', ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(include_columns=[c.name for c in wanted],
                                   column_types={c.name: pa.string() for c in wanted},
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        table = pacsv.read_csv(source.path, read, parse, convert)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise _Fallback from None
    columns = {}
    for col in wanted:
        values = table.column(col.name)
        if source.strip:
            values = pc.utf8_trim_whitespace(values)
        if col.kind == CATEGORY:
            columns[col.name] = _category(values)
            continue
        if source.missing:
            values = pc.if_else(pc.is_in(values, value_set=pa.array(list(source.missing))), None, values)
        try:
            floats = pc.cast(values, pa.float64())
        except pa.ArrowInvalid:
            raise _Fallback from None
        columns[col.name] = floats.to_numpy(zero_copy_only=False)  # nulls become NaN
    return columns, table.num_rows


def _category(values) -> np.ndarray:
    """Whole-number ids as int64 (fast to count and look up); anything else as str."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.asarray(values.to_pylist(), dtype=object)


@dataclass
class _Rows:
    columns: dict
    rows: int
    lines: list


def _python_read(source: CsvSource, wanted, row_limit: int | None = None) -> _Rows:
    """The slow reader: every row's line number known, every problem reported where it is."""
    shown = str(source.path)
    with _open(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter, strict=True)
        try:
            first = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=1, code="D102") from None
        if first is None:
            raise DataError(shown, "the file is empty", code="D102")
        names = list(source.columns) if source.columns is not None else [n.strip() for n in first]
        pending = [first] if source.columns is not None and not source.header else []
        index = {col.name: names.index(col.name) for col in wanted}
        values: dict[str, list[str]] = {col.name: [] for col in wanted}
        width = len(names)
        cols = [(values[col.name].append, index[col.name]) for col in wanted]
        lines: list[int] = []
        mark = lines.append
        try:
            for row in itertools.chain(pending, reader):
                if len(row) != width:
                    if not row or row == [""]:
                        continue  # blank line
                    raise DataError(shown, f"expected {width} fields, found {len(row)}", line=reader.line_num,
                                    code="D103")
                mark(reader.line_num)
                for append, k in cols:
                    append(row[k])
                if row_limit is not None and len(lines) >= row_limit:
                    break
        except csv.Error as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=reader.line_num, code="D102") from None
        except UnicodeDecodeError:
            raise DataError(shown, "is not UTF-8 text", line=reader.line_num + 1, code="D102") from None
    columns = {}
    missing = set(source.missing)
    for col in wanted:
        raw = values[col.name]
        if source.strip:
            raw = [v.strip() for v in raw]
        if col.kind == CATEGORY:
            columns[col.name] = np.asarray(raw, dtype=object)
        else:
            columns[col.name] = _floats(raw, shown, col.name, lines, missing)
    return _Rows(columns, len(lines), lines)


def _check_header(source: CsvSource, names: list[str], wanted) -> None:
    """A spec column that the file lacks is reported at the spec's line, with the file's columns."""
    errors = []
    hint = ()
    if len(names) == 1:  # one column only: perhaps another delimiter
        for other in ("\t", ";", ",", "|"):
            if other != source.delimiter and other in names[0]:
                shown = "\\t" if other == "\t" else other
                hint = (f"the header looks '{shown}'-separated: csv(..., delimiter=\"{shown}\")",)
                break
    for col in wanted:
        if col.name not in names:
            notes = suggest(col.name, names) + hint + (f"{source.path.name} has the columns: {', '.join(names)}",)
            errors.append(Diagnostic("E205", f"column '{col.name}' is not in {source.path.name}", col.span, notes))
    if errors:
        raise SpecError(errors)


_MARKERS = {"?", "", "NA", "N/A", "na", "n/a", "null", "NULL", "None", "-", "--", "missing"}


def _floats(raw: list[str], path: str, column: str, lines: list[int], missing: set[str]) -> np.ndarray:
    out = np.empty(len(raw), dtype=np.float64)
    for k, text in enumerate(raw):
        if text in missing:
            out[k] = np.nan
            continue
        try:
            out[k] = float(text)
        except ValueError:
            marker = text.strip() in _MARKERS and not missing
            hint = f' (a missing-value marker? say csv(..., missing=["{text.strip()}"]))' if marker else ""
            raise DataError(path, f"expected a number, found '{text}'{hint}", line=lines[k], column=column,
                            code="D104") from None
    return out


def check_finite(table: Table, column: str, allow_nan: bool = False, target: bool = False) -> None:
    """NaN (a missing value) or inf where a number is needed: say which row."""
    values = table.columns[column]
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        k = int(np.argmax(bad))
        found = "a missing value (NaN)" if np.isnan(values[k]) else f"{values[k]}"
        hint = "; fill_missing in the data block's procs fills missing values" \
            if np.isnan(values[k]) and not target else ""
        raise DataError(table.path, f"expected a finite number, found {found}{hint}", line=table.line(k),
                        column=column, code="D105")
