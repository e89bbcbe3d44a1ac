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

from specc.data.arrow import as_numpy
from specc.data.files import bad_byte, compression, has_surrogates, not_utf8, open_text
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, suggest
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Column, CsvSource
from specc.model.memory import OBJECT_BYTES, data_limit, shown_bytes, too_much_data


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
        """The file's line number of a data row (0-based), for messages: the rows counted as the
        Python reader counts them, none of them kept (the row may be the 20 millionth)."""
        with open_source(self.source) as f:
            reader = csv.reader(_Lines(f, self.path), delimiter=self.source.delimiter, strict=True)
            first = next(reader, None)
            width = len(self.source.columns) if self.source.columns is not None else len(first or ())
            pending = [first] if self.source.columns is not None and not self.source.header else []
            count = 0
            for fields in itertools.chain(pending, reader):
                if len(fields) != width and (not fields or fields == [""]):
                    continue  # a blank line
                if count == row:
                    return reader.line_num
                count += 1
        raise ValueError(f"{self.path} has no data row {row}")  # the table was read from it: a bug

    def check_finite(self, column: str, allow_nan: bool = False, target: bool = False) -> None:
        """NaN (a missing value) or inf where a number is needed: say which row (see check_finite)."""
        check_finite(self, column, allow_nan, target)


def open_source(source: CsvSource):
    """The file as text: a regular file only (else E208 at the spec's path, or D101), UTF-8 with a
    byte-order mark skipped; bytes that are not UTF-8 read as lone surrogates (see files.open_text),
    which the readers report at their line and column."""
    return open_text(source.path, source.span)


def read_table(source: CsvSource, wanted: tuple[Column, ...]) -> Table:
    """Read the `wanted` columns of a delimited file."""
    names = checked_names(source, wanted)
    try:
        columns, rows = _arrow_read(source, wanted, names)
    except _Fallback:
        result = _python_read(source, wanted)
        columns, rows = result.columns, result.rows
    if rows == 0:
        raise DataError(str(source.path), "the file has no data rows", code=codes.NO_ROWS)
    table = Table(str(source.path), columns, rows, source, tuple(wanted))
    for col in wanted:
        if col.kind == CATEGORIES:  # read as text; each field's ids split here, every row's line known
            table.columns[col.name] = _sets(table, col)
    return table


def _sets(table: Table, col: Column):
    """A set column's text fields as tuples of ids, each row's set within the column's max_size."""
    from specc.data.sets import check_sizes, split_texts

    def at(row: int, message: str, code: codes.Code) -> DataError:
        try:
            return DataError(table.path, message, line=table.line(row), column=col.name, code=code)
        except csv.Error:  # a field past the csv module's limit, which pyarrow read: the row, not its line
            return DataError(table.path, f"data row {row + 1:,}: {message}", column=col.name, code=code)

    sets = split_texts(table.columns[col.name], col.sep, table.source.strip)
    check_sizes(sets, col, at)
    return sets


def head(source: CsvSource, columns, n: int) -> list[list[str]]:
    """The first n rows of the spec's columns, as they are in the file (`specc show --stage data`)."""
    names = checked_names(source, columns)  # the file's or the spec's column names, checked against the spec
    index = [names.index(c.name) for c in columns]
    with open_source(source) as f:
        reader = csv.reader(f, delimiter=source.delimiter)
        first = next(reader, None)
        rows = [] if source.header or source.columns is None else [first]
        if rows and any(has_surrogates(first[k]) for k in index if k < len(first)):
            raise not_utf8(str(source.path), 1, byte=bad_byte("".join(first[k] for k in index if k < len(first))))
        for row in reader:
            if len(rows) >= n:
                break
            if len(row) == len(names):
                if any(has_surrogates(row[k]) for k in index):  # bytes that are not UTF-8
                    raise not_utf8(str(source.path), reader.line_num, byte=bad_byte("".join(row[k] for k in index)))
                rows.append(row)
        return [[row[k] for k in index] for row in rows[:n]]


class _Fallback(Exception):
    """pyarrow could not read it as asked: let the Python reader find and report the problem."""


def checked_names(source: CsvSource, wanted) -> list[str]:
    """The file's column names (its first line, or the spec's `columns`), each wanted column among
    them (else E205 at the column's line in the spec)."""
    names = file_names(source)
    _check_header(source, names, wanted)
    return names


def file_names(source: CsvSource) -> list[str]:
    """The column names: the spec's `columns`, else the file's first line split at the delimiter."""
    with open_source(source) as f:
        reader = csv.reader(_Lines(f, str(source.path)), delimiter=source.delimiter)
        try:
            first = next(reader, None)
        except csv.Error as err:
            raise DataError(str(source.path), f"cannot be parsed: {err}", line=1, code=codes.MALFORMED_CSV) from None
    if first is None:
        raise DataError(str(source.path), "the file is empty", code=codes.NO_ROWS)
    if source.columns is not None:
        return list(source.columns)
    if any(has_surrogates(name) for name in first):
        raise not_utf8(str(source.path), 1, byte=bad_byte("".join(first)))
    return [n.strip() for n in first]


def _arrow_read(source: CsvSource, wanted, names: list[str]):
    """pyarrow's reader, BLOCK bytes of text at a time (decompressed as it goes): each block's
    columns converted as they come, and the reading stopped (D113) once they take more than the
    data limit, so that neither a large file nor a compression bomb is held whole in memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    skip = 1 if source.header else 0
    # one thread: with threads, pyarrow reads blocks ahead of the loop below, as many as a slow loop
    # lets it (a 200 MB gzip bomb peaked at 1 GB on a busy machine, 0.5 GB on an idle one); alone,
    # memory is bounded by the block whatever the load, and a 10M-row file reads as fast on 2 cores
    read = pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=BLOCK, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=source.delimiter, quote_char='"', ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(include_columns=[c.name for c in wanted],
                                   column_types={c.name: pa.string() for c in wanted},
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    limit = data_limit()
    gathered = {col.name: _Gathered(col, source) for col in wanted}
    rows = 0
    try:
        with pacsv.open_csv(source.path, read, parse, convert) as reader:
            for batch in reader:
                for name, column in gathered.items():
                    column.add(batch.column(name))
                rows += batch.num_rows
                held = sum(c.bytes for c in gathered.values())
                if held > limit.bytes:
                    raise too_much_data(str(source.path), f"reading stopped at row {rows:,}: the {len(wanted)} "
                                        f"column{'s' * (len(wanted) > 1)} the spec reads already take "
                                        f"{shown_bytes(held)}{_decompressed(source)}", limit)
    except (pa.ArrowInvalid, UnicodeError, OSError):  # OSError: a damaged .gz or .zst, said where by the other;
        # UnicodeEncodeError: a name of bytes that are not UTF-8, which pyarrow cannot open and Python can
        raise _Fallback from None
    return {name: column.finish() for name, column in gathered.items()}, rows


BLOCK = 1 << 24  # bytes of text pyarrow parses at a time: a row must fit in one
LINE_LIMIT = BLOCK  # the longest line either reader takes, in characters


def _decompressed(source: CsvSource) -> str:
    codec = compression(source.path)
    return f" (decompressed from {codec})" if codec else ""


class _Gathered:
    """One column's values as pyarrow's blocks come: a float column's as float64 arrays (NaN where
    missing); a category column's as pyarrow's text, and as int64 arrays while every value is a
    whole number in int64's range, which it stays when every value is (else str values); a set
    column's as text (read_table splits its fields)."""

    def __init__(self, col: Column, source: CsvSource):
        if col.kind not in (FLOAT, CATEGORY, CATEGORIES):
            raise KeyError(f"no reading of a {col.kind} column from text")  # a bug: a kind the reader lacks
        self.col, self.source = col, source
        self.chunks: list = []  # numpy arrays: floats, or int64 ids
        self.text: list = []  # a category column's pyarrow arrays, as read
        self.ints = col.kind == CATEGORY  # every value so far a whole number in int64's range
        self.rows = 0
        self.text_bytes = 0
        self.bytes = 0  # what it holds, and will hold once finished (a text value as OBJECT_BYTES)

    def add(self, values) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.source.strip:
            values = pc.utf8_trim_whitespace(values)
        self.rows += len(values)
        if self.col.kind == FLOAT:
            if self.source.missing:
                values = pc.if_else(pc.is_in(values, value_set=pa.array(list(self.source.missing))), None, values)
            try:
                floats = pc.cast(values, pa.float64())
            except pa.ArrowInvalid:
                raise _Fallback from None
            self.chunks.append(as_numpy(floats))  # nulls become NaN
            self.bytes += 8 * len(values)
            return
        self.text.append(values)
        self.text_bytes += values.nbytes
        if self.ints:
            try:
                self.chunks.append(as_numpy(pc.cast(values, pa.int64())))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                self.ints, self.chunks = False, []
        self.bytes = self.text_bytes + (8 if self.ints else OBJECT_BYTES) * self.rows

    def finish(self) -> np.ndarray:
        """The whole column: float64 numbers, int64 ids, or str values in an object array."""
        if self.col.kind == FLOAT or self.ints:
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int64 if self.ints else np.float64)
        return np.asarray([v for t in self.text for v in t.to_pylist()], dtype=object)


@dataclass
class _Rows:
    columns: dict
    rows: int
    lines: list


def _python_read(source: CsvSource, wanted, row_limit: int | None = None) -> _Rows:
    """The slow reader: every row's line number known, every problem reported where it is."""
    shown = str(source.path)
    with open_source(source) as f:
        text = _Lines(f, shown)
        reader = csv.reader(text, delimiter=source.delimiter, strict=True)
        try:
            first = next(reader, None)
        except csv.Error as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=1, code=codes.MALFORMED_CSV) from None
        if first is None:
            raise DataError(shown, "the file is empty", code=codes.NO_ROWS)
        names = list(source.columns) if source.columns is not None else [n.strip() for n in first]
        pending = [first] if source.columns is not None and not source.header else []
        index = {col.name: names.index(col.name) for col in wanted}
        values: dict[str, list[str]] = {col.name: [] for col in wanted}
        width = len(names)
        cols = [(values[col.name].append, index[col.name]) for col in wanted]
        lines: list[int] = []
        mark = lines.append
        held = _Held(shown, values, text)
        try:
            for row in itertools.chain(pending, reader):
                if len(row) != width:
                    if not row or row == [""]:
                        continue  # blank line
                    raise DataError(shown, f"expected {width} fields, found {len(row)}"
                                    f"{_other_delimiter(row, width, source.delimiter)}", line=reader.line_num,
                                    code=codes.DATA_SHAPE)
                mark(reader.line_num)
                for append, k in cols:
                    append(row[k])
                if row_limit is not None and len(lines) >= row_limit:
                    break
                if text.chars + len(lines) * held.per_row > held.due:  # a bound on what is held: look closer
                    held.check(len(lines), reader.line_num)
        except csv.Error as err:
            raise DataError(shown, f"cannot be parsed: {err}", line=reader.line_num, code=codes.MALFORMED_CSV) from None
    columns = {}
    missing = set(source.missing)
    for col in wanted:
        raw = values[col.name]
        _check_utf8(raw, shown, col.name, lines)
        if source.strip:
            raw = [v.strip() for v in raw]
        if col.kind in (CATEGORY, CATEGORIES):  # a set column's fields split by read_table
            columns[col.name] = np.asarray(raw, dtype=object)
        elif col.kind == FLOAT:
            columns[col.name] = _floats(raw, shown, col.name, lines, missing)
        else:
            raise KeyError(f"no reading of a {col.kind} column from text")  # a bug: a kind the reader lacks
    return _Rows(columns, len(lines), lines)


class _Lines:
    """A text file's lines, for the csv module: each of at most LINE_LIMIT characters, a longer one
    being an error at its line (D113) before it is held whole."""

    def __init__(self, f, path: str):
        self.f, self.path, self.number, self.chars = f, path, 0, 0

    def __iter__(self):
        readline = self.f.readline
        while True:
            text = readline(LINE_LIMIT + 1)
            if not text:
                return
            self.number += 1
            if len(text) > LINE_LIMIT and text[-1] not in "\r\n":
                raise DataError(self.path, f"the line is longer than {shown_bytes(LINE_LIMIT)}, the longest specc "
                                "reads (a row must fit in the block of text pyarrow parses at once)", line=self.number,
                                code=codes.TOO_MUCH_DATA)
            self.chars += len(text)
            yield text


class _Held:
    """What the Python reader holds of the columns as text, checked against the data limit (D113)
    each time a bound on it (the characters read, OBJECT_BYTES a value) has grown by EVERY bytes."""

    EVERY = 1 << 20

    def __init__(self, path: str, values: dict[str, list[str]], text: _Lines):
        self.path, self.values, self.text, self.limit = path, values, text, data_limit()
        self.per_row = len(values) * OBJECT_BYTES + 8  # and its line number
        self.chars, self.counted, self.due = 0, 0, self.EVERY

    def check(self, rows: int, line: int) -> None:
        for column in self.values.values():
            self.chars += sum(map(len, column[self.counted:]))
        self.counted, self.due = rows, self.text.chars + rows * self.per_row + self.EVERY
        held = self.chars + rows * len(self.values) * OBJECT_BYTES
        if held > self.limit.bytes:
            raise too_much_data(self.path, f"reading stopped at row {rows:,}: the {len(self.values)} column"
                                f"{'s' * (len(self.values) > 1)} the spec reads already take {shown_bytes(held)} as "
                                "Python text (reading line by line, to find where pyarrow could not read it)",
                                self.limit, line=line)


def _other_delimiter(row: list[str], width: int, delimiter: str) -> str:
    """For a line read as one field where `width` were expected: a hint naming the delimiter that
    splits it into `width` (a tab-separated file read as csv(...) without a header), else ''."""
    if len(row) != 1 or width < 2:
        return ""
    for other in ("\t", ";", ",", "|"):
        if other != delimiter and len(next(csv.reader([row[0]], delimiter=other))) == width:
            shown = "\\t" if other == "\t" else other
            also = " or tsv(...)" if other == "\t" else ""
            return f"; the line looks '{shown}'-separated: csv(..., delimiter=\"{shown}\"){also}"
    return ""


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
                            code=codes.WRONG_TYPE) from None
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
                        column=column, code=codes.BAD_NUMBER)
