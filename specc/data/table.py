"""Reading delimited text tables: the columns a spec names, with errors that say file, row and column.

Two readers, one result. pyarrow's CSV reader (multi-threaded C++) reads the file; a 25-million-row
ratings file loads in seconds, where Python's csv module takes minutes. When pyarrow rejects the
file, or a value does not convert, the file is read again with Python's csv module, which knows the
line of every row, to say exactly where and what is wrong."""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass

import numpy as np

from specc import codes
from specc.data.files import bad_byte, has_surrogates, not_utf8, open_text
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


def _open(source: CsvSource):
    """The file as text: a regular file only (else E208 at the spec's path, or D101), UTF-8 with a
    byte-order mark skipped; bytes that are not UTF-8 read as lone surrogates (see files.open_text),
    which the readers report at their line and column."""
    return open_text(source.path, source.span)


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
    names = file_names(source)
    _check_header(source, names, wanted)
    return names


def file_names(source: CsvSource) -> list[str]:
    """The column names: the spec's `columns`, else the file's first line split at the delimiter."""
    with _open(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter)
        try:
            first = next(reader, None)
        except csv.Error as err:
            raise DataError(str(source.path), f"cannot be parsed: {err}", line=1, code="D102") from None
    if first is None:
        raise DataError(str(source.path), "the file is empty", code="D102")
    if source.columns is not None:
        return list(source.columns)
    if any(has_surrogates(name) for name in first):
        raise not_utf8(str(source.path), 1, byte=bad_byte("".join(first)))
    return [n.strip() for n in first]


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
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError):  # OSError: a damaged .gz or .zst, said where by the other
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
        except csv.Error as err:
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
    columns = {}
    missing = set(source.missing)
    for col in wanted:
        raw = values[col.name]
        _check_utf8(raw, shown, col.name, lines)
        if source.strip:
            raw = [v.strip() for v in raw]
        if col.kind == CATEGORY:
            columns[col.name] = np.asarray(raw, dtype=object)
        else:
            columns[col.name] = _floats(raw, shown, col.name, lines, missing)
    return _Rows(columns, len(lines), lines)


def _check_utf8(raw: list[str], path: str, column: str, lines: list[int]) -> None:
    """A value with bytes that are not UTF-8 (read as lone surrogates): say where it is."""
    if not has_surrogates("\x00".join(raw)):
        return
    k = next(k for k, v in enumerate(raw) if has_surrogates(v))
    raise not_utf8(path, lines[k], column, bad_byte(raw[k]))


def _check_header(source: CsvSource, names: list[str], wanted) -> None:
    """A spec column that the file lacks is reported at the spec's line, with the file's columns."""
    errors = []
    hint = ()
    parsed = names
    if len(names) == 1:  # one column only: perhaps another delimiter
        for other in ("\t", ";", ",", "|"):
            if other != source.delimiter and other in names[0]:
                shown = "\\t" if other == "\t" else other
                hint = (f"the header looks '{shown}'-separated: csv(..., delimiter=\"{shown}\")",)
                parsed = [n.strip() for n in next(csv.reader([names[0]], delimiter=other))]
                break
    header = source.columns is None
    listed = (header_note(source.path.name, parsed, header=header),)
    close = parsed if not header or not header_problem(parsed) else []  # never a line that is no header
    for col in wanted:
        if col.name not in names:
            notes = suggest(col.name, close) + hint + listed
            errors.append(Diagnostic(codes.NOT_IN_DATA, f"column '{col.name}' is not in {source.path.name}", col.span,
                                     notes))
    if errors:
        raise SpecError(errors)


_NAME = re.compile(r"[A-Za-z_][\w.\-]{0,39}")  # one column's name: no spaces, no punctuation
_SHOWN_NAMES = 20
_NAME_WIDTH = 40


def header_note(file: str, names: list[str], header: bool = True) -> str:
    """What the file's columns are, for a note: the names as parsed, never the raw first line of
    whatever file a spec names (it may be data, or not a table at all)."""
    if not header:
        return f"the spec names the columns of {file}: {', '.join(names)}"
    problem = header_problem(names)
    if problem == _NUMBERS:
        return (f"the first line of {file} {problem}: for a file without a header say "
                "csv(..., header=false, columns=[...])")
    if problem:
        return f"the first line of {file} {problem}"
    return f"{file} has the columns: {shown_names(names)}"


_NUMBERS = "holds numbers, not column names"


def header_problem(names: list[str]) -> str | None:
    """Why a first line split into `names` is no header (numbers; one field that is no name), or None."""
    if names and all(_is_number(n) for n in names):
        return _NUMBERS
    if len(names) == 1 and not _NAME.fullmatch(names[0]):
        return "is not a header of column names"
    return None


def shown_names(names: list[str]) -> str:
    """Column names for a message: each cut to 40 characters, at most 20 of them."""
    cut = [n if len(n) <= _NAME_WIDTH else n[:_NAME_WIDTH] + "..." for n in names[:_SHOWN_NAMES]]
    cut = [n or "''" for n in cut]  # an empty name is seen
    more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    return ", ".join(cut) + more


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
