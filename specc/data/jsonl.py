"""Reading JSON Lines: a jsonl(...) source (one JSON object a row, compressed or not) -> the columns
the spec names as arrays, typed by the values in the file's first block (numbers, strings, lists),
as the Parquet reader types a column by its schema (E205, E210 at the spec's line); read through
pyarrow's JSON reader a block at a time, within the data limit (D113)."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from specc.data.files import compression, open_binary, shown_path
from specc.data.parquet import ParquetTable, column_values, misfit
from specc.data.table import shown_names
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, suggest
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Column
from specc.model.memory import OBJECT_BYTES, data_limit, shown_bytes, too_much_data

BLOCK = 1 << 24  # bytes of text pyarrow parses at a time: a row (one line) must fit in one


class _Utf8:
    """The file's (decompressed) bytes as pyarrow reads them, checked to be UTF-8 on the way:
    pyarrow's JSON reader puts U+FFFD in place of a byte that is not, without a word."""

    def __init__(self, stream, path: Path):
        self.stream, self.path = stream, path
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.lines = 1  # the line the next byte is on
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            line = self.lines + data.count(b"\n", 0, err.start)
            raise DataError(shown_path(self.path), f"byte 0x{data[err.start]:02x} is not UTF-8 text", line=line,
                            code=codes.NOT_UTF8) from None
        self.lines += data.count(b"\n")
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stream(path: Path, span=None):
    """The file's text, decompressed where its name says so (.gz, .zst, .bz2, .lz4), checked UTF-8."""
    import pyarrow as pa

    raw = open_binary(path, span)
    return _Utf8(pa.input_stream(raw, compression=compression(path)), path)


def first_block_types(path: Path, span=None) -> dict:
    """Each field's Arrow type as pyarrow infers it from the file's first block of rows."""
    import pyarrow as pa
    import pyarrow.json as pj

    with _stream(path, span) as text:
        try:
            reader = pj.open_json(text, read_options=pj.ReadOptions(block_size=BLOCK, use_threads=False))
        except pa.ArrowInvalid as err:
            raise _located(path, err, 0) from None
        except OSError as err:  # a damaged or cut compressed stream
            raise _damaged(path, err) from None
        return {f.name: f.type for f in reader.schema}


def _read_type(col: Column, found):
    """The type the column is read as: float64 (a list of them for float(N)) whatever numbers the
    first block held; a category column's ids or text as inferred (text where it held only nulls)."""
    import pyarrow as pa

    if col.kind == FLOAT:
        return pa.list_(pa.float64()) if col.shape else pa.float64()
    if col.kind == CATEGORIES:  # a list of ids as inferred; only nulls: lists of text
        return pa.list_(pa.string()) if pa.types.is_null(found) else found
    if col.kind != CATEGORY:
        raise KeyError(f"no reading of a {col.kind} column from JSON Lines")  # a bug: a kind the reader lacks
    return pa.string() if pa.types.is_null(found) else found


def check_fields(path: Path, wanted, types: dict) -> None:
    """Every wanted column is a field of the first block's rows, of a type that fits its
    declaration; else each one that is not, at its line in the spec (SpecError)."""
    errors, present = [], list(types)
    for col in wanted:
        if col.name not in types:
            errors.append(Diagnostic(codes.NOT_IN_DATA, f"column '{col.name}' is not in {path.name}", col.span,
                                     suggest(col.name, present) +
                                     (f"the first rows of {path.name} have the fields: {shown_names(present)}",)))
            continue
        problem = misfit(col, types[col.name])
        if problem is not None and not (col.kind in (FLOAT, CATEGORIES) and _is_null(types[col.name])):
            found, hint = problem
            errors.append(Diagnostic(codes.COLUMN_TYPE, f"column '{col.name}' is declared {col.kind}"
                                     f"{'(' + ', '.join(map(str, col.shape)) + ')' if col.shape else ''}, but "
                                     f"{path.name} holds {found}", col.span,
                                     (f"{shown_path(path)}: pyarrow reads field '{col.name}' as {types[col.name]}",
                                      hint)))
    if errors:
        raise SpecError(errors)


def _is_null(t) -> bool:
    import pyarrow as pa

    return pa.types.is_null(t)


def read_jsonl(path: Path, wanted: tuple[Column, ...], span=None) -> ParquetTable:
    """The `wanted` columns of a JSON Lines file: typed from its first block, then read a block at
    a time with those types (a later row with another kind of value is an error at its row)."""
    import pyarrow as pa
    import pyarrow.json as pj

    types = first_block_types(path, span)
    check_fields(path, wanted, types)
    names = list(dict.fromkeys(c.name for c in wanted))
    by_name = {c.name: c for c in wanted}
    schema = pa.schema([pa.field(n, _read_type(by_name[n], types[n])) for n in names])
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    limit, chunks, rows, held = data_limit(), {n: [] for n in names}, 0, 0
    with _stream(path, span) as text:
        try:
            for batch in pj.open_json(text, read_options=pj.ReadOptions(block_size=BLOCK, use_threads=False),
                                      parse_options=parse):
                for name in names:
                    chunks[name].append(batch.column(name))
                rows += batch.num_rows
                held += sum(batch.column(n).nbytes for n in names) + OBJECT_BYTES * batch.num_rows * sum(
                    by_name[n].kind in (CATEGORY, CATEGORIES) for n in names)
                if held > limit.bytes:
                    raise too_much_data(shown_path(path), f"reading stopped at row {rows:,}: the columns the spec "
                                        f"reads already take {shown_bytes(held)}", limit)
        except pa.ArrowInvalid as err:
            raise _located(path, err, rows) from None
        except OSError as err:
            raise _damaged(path, err) from None
    table = ParquetTable(shown_path(path), {}, rows, (shown_path(path),), (rows,))
    for col in wanted:
        table.columns[col.name] = column_values(pa.chunked_array(chunks[col.name], schema.field(col.name).type),
                                                col, table)
    return table


def _damaged(path: Path, err: OSError) -> DataError:
    codec = compression(path)
    return DataError(shown_path(path), f"cannot be read{f' as {codec}' if codec else ''}, it is damaged or cut short: "
                     f"{err}", code=codes.DAMAGED_FILE)


_ROW = re.compile(r"\s*in row (\d+)$")


def _located(path: Path, err, before: int) -> DataError:
    """pyarrow's JSON error as a data error at its row (`before` rows came in earlier blocks)."""
    text = str(err).removeprefix("JSON parse error: ")
    found = _ROW.search(text)
    row = before + int(found.group(1)) + 1 if found else None
    text = _ROW.sub("", text).rstrip(". ")
    where = f"row {row}: " if row is not None else ""
    if text == "Empty JSON stream":
        return DataError(shown_path(path), "has no rows", code=codes.NO_ROWS)
    if "straddle" in text:  # pyarrow says no more: the long row is after those of the blocks read
        after = f" after row {before:,}" if before else ""
        return DataError(shown_path(path), f"a row{after} is longer than {shown_bytes(BLOCK)}, the longest specc "
                         "reads", code=codes.TOO_MUCH_DATA)
    changed = re.fullmatch(r"Column\(/([^)]+)\) changed from (\w+) to (\w+)", text)
    if changed:  # a field of another kind than the first rows gave it
        column, was, now = changed.groups()
        return DataError(shown_path(path), f"{where}found {_a(now)} where the column's first rows hold {_a(was)}: a "
                         "column holds one kind of value in every row", column=column, code=codes.WRONG_TYPE)
    return DataError(shown_path(path), f"{where}not a JSON object on one line ({text})", code=codes.MALFORMED_JSON)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
