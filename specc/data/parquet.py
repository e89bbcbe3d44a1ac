"""Reading Parquet: a parquet(...) source (a file, or a folder of files read as one table) -> the
columns the spec names as arrays, typed by the files' schema, which is checked against the spec's
declarations (E205, E210 at the spec's line) before a row is read."""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc.data.arrow import as_numpy
from specc.data.files import PARQUET_ENDINGS, check_regular, shown_path
from specc.data.table import shown_names
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, os_text, suggest
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Column, FrameSource, ParquetSource
from specc.model.memory import OBJECT_BYTES, data_limit, shown_bytes, too_much_data

INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class ParquetTable:
    """Columns read from Parquet, as specc.data.table.Table's are: float columns as float64 arrays
    (NaN where null), shaped ones (N, *shape); category columns as int64 arrays of whole-number ids,
    else arrays of str (a null is the category '', as an empty CSV field is)."""

    path: str
    columns: dict
    rows: int
    files: tuple[str, ...]  # as messages show them, in the order their rows were read
    ends: tuple[int, ...]  # the table's row count at the end of each file

    def where(self, row: int) -> tuple[str, int]:
        """The file that holds a row of the table (0-based), and the row's number in it (1-based)."""
        k = bisect.bisect_right(self.ends, row)
        return self.files[k], row - (self.ends[k - 1] if k else 0) + 1

    def error(self, row: int, column: str, message: str, code: codes.Code) -> DataError:
        file, at = self.where(row)
        return DataError(file, f"row {at}: {message}", column=column, code=code)

    def check_finite(self, column: str, allow_nan: bool = False, target: bool = False) -> None:
        """NaN (a null) or inf where a number is needed: say which file and row, as CSV's check does."""
        values = self.columns[column]
        per = math.prod(values.shape[1:])
        allow_nan = allow_nan and values.ndim == 1  # fill_missing fills one number a row, never a list
        bad = (np.isinf(values) if allow_nan else ~np.isfinite(values)).reshape(-1)
        if not bad.any():
            return
        k = int(np.argmax(bad))
        value = values.reshape(-1)[k]
        found = "a missing value (a null or NaN)" if np.isnan(value) else f"{value}"
        hint = "; fill_missing in the data block's procs fills missing values" \
            if np.isnan(value) and not target and values.ndim == 1 else ""
        at = f" (value {k % per + 1} of {per})" if values.ndim > 1 else ""
        raise self.error(k // per, column, f"expected a finite number{at}, found {found}{hint}", codes.BAD_NUMBER)


def parquet_files(source: ParquetSource) -> list[Path]:
    """The source's file, or its folder's Parquet files (and those in folders below) in order of
    their path; hidden files and those starting with '_' (Spark's _SUCCESS, _metadata) left out."""
    path = source.path
    if not path.is_dir():
        check_regular(path, source.span)  # not there, a FIFO, a device: E208 at the spec's path
        return named_in_text([path])
    found = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [s for s in subfolders if not s.startswith((".", "_"))]
        found += [Path(folder) / n for n in names
                  if n.lower().endswith(PARQUET_ENDINGS) and not n.startswith((".", "_"))]
    if not found:
        raise DataError(shown_path(path), f"holds no Parquet files: parquet(...) of a folder reads the files in it "
                        f"whose names end {', '.join(PARQUET_ENDINGS)}", code=codes.BAD_PARQUET_FOLDER)
    return named_in_text(sorted(found, key=lambda f: f.relative_to(path).as_posix()))


def named_in_text(files: list[Path]) -> list[Path]:
    """The files, each of whose paths is UTF-8 text: pyarrow opens a Parquet file by its name, which it takes
    only as text (a name of other bytes is an error naming it, not pyarrow's UnicodeEncodeError)."""
    for file in files:
        if os_text(str(file)) != str(file):
            raise DataError(shown_path(file), "a Parquet file's path must be UTF-8 text, which pyarrow opens it by; "
                            "this one holds other bytes: rename it", code=codes.UNREADABLE_PATH)
    return files


def _metadata(file: Path):
    """A file's footer (schema and row count), or an error naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_regular(file)
    try:
        return pq.read_metadata(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(shown_path(file), f"is not a readable Parquet file: {err}", code=codes.DAMAGED_FILE) from None


def read_parquet(source: ParquetSource, wanted: tuple[Column, ...]) -> ParquetTable:
    """Read the `wanted` columns of a Parquet file or folder (through pyarrow.dataset)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = parquet_files(source)
    footers = [_metadata(f) for f in files]
    schemas = [m.schema.to_arrow_schema() for m in footers]
    types = check_schema(source, wanted, files, schemas)
    names = list(dict.fromkeys(c.name for c in wanted))
    schema = pa.schema([pa.field(n, types[n]) for n in names])
    ends = tuple(int(n) for n in np.cumsum([m.num_rows for m in footers]))
    result = ParquetTable(str(source.path), {}, ends[-1], tuple(shown_path(f) for f in files), ends)
    if ends[-1] == 0:
        raise DataError(shown_path(source.path), "has no data rows", code=codes.NO_ROWS)
    limit = data_limit()
    _fits(source, wanted, types, files, footers, limit)  # before an array the footers size is made
    try:  # the fragments keep the order of the files, and to_batches (ordered) the order of the fragments
        batches = ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_batches(columns=names)
        at = _gather(source, wanted, types, batches, result, limit)
    except (pa.ArrowException, OSError) as err:
        _name_damaged(files, names)
        raise DataError(shown_path(source.path), f"cannot be read as Parquet: {err}", code=codes.DAMAGED_FILE) from None
    if at != ends[-1]:  # the footers count other rows than the pages hold
        _name_damaged(files, names)
        raise DataError(shown_path(source.path), f"its footers count {ends[-1]} rows but the pages hold another "
                        "number: a file is damaged", code=codes.DAMAGED_FILE)
    return result


def read_arrow(source: FrameSource, wanted: tuple[Column, ...]) -> ParquetTable:
    """Read the `wanted` columns of a table in memory (a frame given to specc.train) with the checks
    a Parquet file's schema and values get: a column the frame lacks or of a type that does not fit
    is a SpecError at the spec's line, naming the frame."""
    table = source.table
    name = Path(source.path)
    types = check_schema(source, wanted, [name], [table.schema], "Arrow")
    names = list(dict.fromkeys(c.name for c in wanted))
    result = ParquetTable(str(name), {}, table.num_rows, (str(name),), (table.num_rows,))
    if table.num_rows == 0:
        raise DataError(str(name), "has no data rows", code=codes.NO_ROWS)
    at = _gather(source, wanted, types, table.select(names).to_batches(), result, data_limit())
    if at != table.num_rows:  # a bug: a table in memory holds the rows it counts
        raise RuntimeError(f"{name}: gathered {at} of {table.num_rows} rows")
    return result


def _gather(source, wanted, types: dict, batches, result: ParquetTable, limit) -> int:
    """The wanted columns of the batches gathered into `result`, within the data limit (D113); the
    rows gathered (-1 when the batches hold more than the table counts)."""
    gathered = {c.name: _Gather(c, types[c.name], result.rows) for c in wanted}
    at = 0
    for batch in batches:
        if at + batch.num_rows > result.rows:
            return -1
        for name, column in gathered.items():
            column.add(batch.column(name), at)
        at += batch.num_rows
        held = sum(c.bytes for c in gathered.values())
        if held > limit.bytes:  # values that decode to more than the footers said (long repeated texts)
            raise too_much_data(shown_path(source.path), f"reading stopped at row {at:,}: the columns the spec "
                                f"reads already take {shown_bytes(held)}", limit)
    if at == result.rows:
        result.columns.update({c.name: gathered[c.name].finish(result) for c in wanted})
    return at


def _numbers(col: Column, t) -> bool:
    """Whether a column of Arrow type `t` is read straight into a numpy array of 8-byte numbers (a
    float, an id), rather than kept as Arrow chunks and converted at the end (text, lists, uint64)."""
    import pyarrow as pa

    if col.kind == CATEGORIES:  # tuples of ids, made at the end
        return False
    if col.kind not in (FLOAT, CATEGORY):
        raise KeyError(f"no reading of a {col.kind} column from Parquet")  # a bug: a kind the reader lacks
    number = col.kind == FLOAT or (_scalar(t) in ("int", "bool") and not pa.types.is_uint64(
        t.value_type if pa.types.is_dictionary(t) else t))
    return number and not col.shape


def _fits(source: ParquetSource, wanted, types: dict, files: list[Path], footers, limit) -> None:
    """What the columns will take once read, from the footers (8 bytes a number; for text and
    lists, their pages' uncompressed size and what they become), within the data limit (D113)."""
    rows = sum(m.num_rows for m in footers)
    kept = {c.name for c in wanted if not _numbers(c, types[c.name])}
    need = 0
    for col in wanted:
        per = 8 if _numbers(col, types[col.name]) else 8 * math.prod(col.shape) if col.shape else OBJECT_BYTES
        need += rows * per
    for m in footers:
        for g in range(m.num_row_groups):
            group = m.row_group(g)
            need += sum(group.column(k).total_uncompressed_size for k in range(group.num_columns)
                        if group.column(k).path_in_schema.split(".")[0] in kept)
    if need > limit.bytes:
        counts = "its footers count" if len(footers) > 1 else "its footer counts"
        size = sum(f.stat().st_size for f in files)
        raise too_much_data(shown_path(source.path), f"{counts} {rows:,} rows: the {len(wanted)} column"
                            f"{'s' * (len(wanted) > 1)} the spec reads would take {shown_bytes(need)} (where "
                            f"the {shown_bytes(size)} of Parquet hold fewer rows, a footer is damaged)", limit)


class _Gather:
    """One column's values as the batches come: a number column (an id, a float) straight into its
    numpy array, so that the table is never held in Arrow's memory as well; any other (text, lists,
    uint64 ids) kept as Arrow chunks and converted at the end (see _values)."""

    def __init__(self, col: Column, t, rows: int):
        self.col, self.type = col, t
        self.out = np.empty(rows, np.float64 if col.kind != CATEGORY else np.int64) if _numbers(col, t) else None
        self.nulls: np.ndarray | None = None  # an id column's null rows, once it has one
        self.chunks: list = []
        self.bytes = self.out.nbytes if self.out is not None else 0  # held, and to be held once converted

    def add(self, values, at: int) -> None:
        import pyarrow as pa

        if self.out is None:
            self.chunks.append(values)
            per = 8 * math.prod(self.col.shape) if self.col.shape else OBJECT_BYTES
            self.bytes += values.nbytes + per * len(values)
            return
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        end = at + len(values)
        if self.col.kind == FLOAT:
            self.out[at:end] = as_numpy(values.cast(pa.float64()))  # nulls become NaN
            return
        values = values.cast(pa.int64())
        if values.null_count:
            if self.nulls is None:
                self.nulls = np.zeros(len(self.out), bool)
            self.nulls[at:end] = values.is_null().to_numpy(zero_copy_only=False)
            values = values.fill_null(0)
        self.out[at:end] = as_numpy(values)

    def finish(self, table: ParquetTable) -> np.ndarray:
        import pyarrow as pa

        if self.out is None:
            return column_values(pa.chunked_array(self.chunks, type=self.type), self.col, table)
        if self.nulls is None:
            return self.out
        # ids with a null among them: text, the null the category '', as a CSV's empty field is
        text = self.out.astype(str).astype(object)
        text[self.nulls] = ""
        return text


def _name_damaged(files: list[Path], names: list[str]) -> None:
    """pyarrow.dataset could not read the files: read each alone, to name the one that is damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        try:
            pq.read_table(file, columns=names)
        except (pa.ArrowException, OSError) as err:
            raise DataError(shown_path(file), f"cannot be read as Parquet, it is damaged: {err}",
                            code=codes.DAMAGED_FILE) from None


# ---------------------------------------------------------------- the schema against the spec


def check_schema(source: ParquetSource | FrameSource, wanted, files: list[Path], schemas, typed: str = "Parquet") -> dict:
    """Each wanted column's Arrow type, the same in every file and fitting the spec's declaration;
    else every column that is not there or does not fit, at its line in the spec (SpecError).
    `typed`: whose types the notes name (a file's Parquet type, a frame's Arrow type)."""
    name = files[0].name if len(files) == 1 else f"{source.path.name}/"
    for col in wanted:
        _agree(source, col.name, files, schemas)
    errors, types = [], {}
    present = schemas[0].names
    for selected in source.columns or ():  # pyarrow's and pandas' columns=[...] refuse a name not in the file
        if selected not in present:
            errors.append(Diagnostic(codes.NOT_IN_DATA, f"columns=[...] names '{selected}', which is not in {name}",
                                     source.span, suggest(selected, present) +
                                     (f"{name} has the columns: {shown_names(present)}",)))
    for col in wanted:
        if col.name not in present:
            errors.append(Diagnostic(codes.NOT_IN_DATA, f"column '{col.name}' is not in {name}", col.span,
                                     suggest(col.name, present) + (f"{name} has the columns: {shown_names(present)}",)))
            continue
        types[col.name] = schemas[0].field(col.name).type
        problem = misfit(col, types[col.name])
        if problem is not None:
            found, hint = problem
            errors.append(Diagnostic(codes.COLUMN_TYPE, f"column '{col.name}' is declared {_declared(col)}, but {name} "
                                     f"holds {found}", col.span,
                                     (f"{shown_path(files[0])}: column '{col.name}' has the {typed} type "
                                      f"{types[col.name]}", hint)))
    if errors:
        raise SpecError(errors)
    return types


def _agree(source: ParquetSource, column: str, files: list[Path], schemas) -> None:
    """A column of a folder's files is in all of them or in none, with one type (D112)."""
    if len(files) == 1:
        if schemas[0].names.count(column) > 1:
            raise DataError(shown_path(files[0]), f"has {schemas[0].names.count(column)} columns named '{column}'",
                            code=codes.DUPLICATE_COLUMN)
        return
    have = [k for k, s in enumerate(schemas) if column in s.names]
    if not have:
        return  # in none: the spec's mistake, reported at its line
    first = have[0]
    for k, schema in enumerate(schemas):
        if column not in schema.names:
            raise DataError(shown_path(source.path), f"the files disagree: {files[k].name} has no column '{column}', "
                            f"which {files[first].name} has; a folder's Parquet files are read as one table, so "
                            "every file must have the columns the spec reads, with the same types",
                            code=codes.BAD_PARQUET_FOLDER)
        if schema.names.count(column) > 1:
            raise DataError(shown_path(files[k]), f"has {schema.names.count(column)} columns named '{column}'",
                            code=codes.DUPLICATE_COLUMN)
        if schema.field(column).type != schemas[first].field(column).type:
            raise DataError(shown_path(source.path), f"the files disagree: column '{column}' is "
                            f"{schemas[first].field(column).type} in {files[first].name} but "
                            f"{schema.field(column).type} in {files[k].name}; a folder's Parquet files are read "
                            "as one table, so each column must have one type in every file",
                            code=codes.BAD_PARQUET_FOLDER)


_CATEGORY_HINT = "a category column reads integers, strings or booleans (dictionary-encoded too)"
_FLOAT_HINT = "a float column reads integers, floating-point numbers, decimals or booleans"


def _scalar(t) -> str | None:
    """What one value of an Arrow type is, for the declarations: int, float, decimal, string, bool."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    for test, kind in ((pa.types.is_integer, "int"), (pa.types.is_floating, "float"), (pa.types.is_decimal, "decimal"),
                       (pa.types.is_boolean, "bool"), (pa.types.is_string, "string"),
                       (pa.types.is_large_string, "string"), (_is_string_view, "string")):
        if test(t):
            return kind
    return None


def _is_string_view(t) -> bool:
    import pyarrow as pa

    return hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)


def _lists(t) -> tuple[list[int | None], object]:
    """A list type's levels (each its fixed size, or None) and the type of its values."""
    import pyarrow as pa

    sizes = []
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        sizes.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    return sizes, t


def _declared(col: Column) -> str:
    return col.kind + (f"({', '.join(str(d) for d in col.shape)})" if col.shape else "")


def misfit(col: Column, t) -> tuple[str, str] | None:
    """None when a column of Arrow type `t` can be read as the spec declares it; else what the file
    holds, in words, and a note on what would fit."""
    import pyarrow as pa

    sizes, leaf = _lists(t)
    kind = _scalar(leaf)
    if col.kind == CATEGORIES:
        return _set_misfit(col, t, sizes, kind)
    if sizes:
        if not col.shape:
            return (f"a list of values in each row ({t})", "declare it float(N), N the number of values in a row"
                    if kind in ("int", "float") else "a list column is read as float(...) of numbers")
        if kind not in ("int", "float") or pa.types.is_dictionary(leaf):
            return f"lists of {leaf}", "float(...) reads lists of integers or floating-point numbers"
        want = list(col.shape) if len(sizes) == len(col.shape) else [math.prod(col.shape)] if len(sizes) == 1 else None
        if want is None:
            return (f"lists nested {len(sizes)} deep", f"{_declared(col)} reads a list of {math.prod(col.shape)} "
                    f"numbers a row, or lists nested {len(col.shape)} deep")
        for size, need in zip(sizes, want):
            if size is not None and size != need:
                return f"lists of {size} values", f"{_declared(col)} needs {need} values there"
        return None
    if col.shape:
        return (f"one value in each row ({t})", "float(...) reads a list column (list, large_list or "
                "fixed_size_list of numbers), each row a list of the declared number of values")
    if col.kind == CATEGORY:
        if kind in ("int", "string", "bool"):
            return None
        return _words(kind, t), f"{_CATEGORY_HINT}: declare it `{col.name}: float`, or cast it to int64 or string"
    if kind in ("int", "float", "decimal", "bool"):
        return None
    fix = (f": declare it `{col.name}: category`" if kind == "string" else
           ": write the times as numbers (e.g. int64 seconds since 1970)" if pa.types.is_temporal(t) else "")
    return _words(kind, t), _FLOAT_HINT + fix


_SET_HINT = "a categories column reads a list of integer or string ids a row, or a string of ids split at its sep"


def _set_misfit(col: Column, t, sizes: list, kind: str | None) -> tuple[str, str] | None:
    """None when a column of Arrow type `t` can be read as a set column: lists of integers or strings (ids), or
    strings to split; else what it holds and what would fit."""
    if len(sizes) > 1:
        return f"lists nested {len(sizes)} deep ({t})", _SET_HINT
    if sizes and kind in ("int", "string"):
        return None
    if not sizes and kind == "string":
        return None
    one = "id" if kind == "int" else "value"
    held = f"lists of {_words(kind, _lists(t)[1])}" if sizes else f"one {one} a row ({t})"
    return held, _SET_HINT + ("; one id a row is `category`" if not sizes and kind == "int" else "")


def _words(kind: str | None, t) -> str:
    return {"float": "floating-point numbers", "decimal": "decimals", "string": "strings"}.get(kind, f"{t} values")


# ---------------------------------------------------------------- values


def column_values(values, col: Column, table: ParquetTable) -> np.ndarray:
    """One column of Arrow values (an array or chunked array) as the CSV reader gives it (see
    ParquetTable): the Parquet reader's and the JSON Lines reader's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if col.kind == CATEGORIES:
        return _sets(values, col, table)
    if col.shape:
        return _shaped(values, col, table)
    if col.kind == FLOAT:
        return values.cast(pa.float64()).to_numpy()  # nulls become NaN
    if col.kind != CATEGORY:
        raise KeyError(f"no reading of a {col.kind} column from Arrow values")  # a bug: a kind the reader lacks
    if pa.types.is_boolean(values.type):
        values = values.cast(pa.int64())
    if pa.types.is_integer(values.type):
        too_large = pa.types.is_uint64(values.type) and (pc.max(values).as_py() or 0) > INT64_MAX
        if values.null_count == 0 and not too_large:
            return values.cast(pa.int64()).to_numpy()
        values = values.cast(pa.string())  # ids past int64, or a null among them: text, as a CSV's would be
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.large_string())  # a string_view, which fill_null has no kernel for
    return values.fill_null("").to_numpy()


def _shaped(values, col: Column, table: ParquetTable) -> np.ndarray:
    """A list column as (rows, *shape) float64: every row a list of the declared size (a flat one,
    or one nested as deep as the shape), else an error at the row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values.combine_chunks()
    depth = len(_lists(arr.type)[0])
    want = list(col.shape) if depth == len(col.shape) else [math.prod(col.shape)]
    declared = _declared(col)
    rows, per = len(arr), 1
    for level, size in enumerate(want):
        if arr.null_count:
            k = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise table.error(k // per, col.name, f"a missing list (null) where the spec declares {declared}",
                              codes.BAD_NUMBER)
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            k = int(bad[0])
            inner = f" at depth {level + 1}" if len(want) > 1 else ""
            raise table.error(k // per, col.name, f"a list of {lengths[k]} values{inner}, but the spec declares "
                              f"{declared}", codes.DATA_SHAPE)
        arr = arr.flatten()
        per *= size
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).reshape(rows, *col.shape)


def _sets(values, col: Column, table: ParquetTable) -> np.ndarray:
    """A set column as one tuple of ids a row: a list a row (a null list is the empty set, as an empty CSV field
    is; a null id in a list is an error at its row), or a string a row split at the column's sep."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from specc.data.sets import check_sizes, sets_array, split_texts

    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not _lists(arr.type)[0]:  # text: split as a CSV field is
        sets = split_texts(arr.cast(pa.large_string()).fill_null("").to_numpy(zero_copy_only=False), col.sep)
    else:
        inner = pc.list_flatten(arr)
        if inner.null_count:
            lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
            k = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(inner.is_null().to_numpy(zero_copy_only=False))),
                                    side="right"))
            raise table.error(k, col.name, "a null id in a list; expected integer or string ids", codes.WRONG_TYPE)
        if pa.types.is_dictionary(inner.type):
            arr = arr.cast(pa.list_(inner.type.value_type))
        sets = sets_array([items or () for items in arr.to_pylist()])
    check_sizes(sets, col, lambda k, message, code: table.error(k, col.name, message, code))
    return sets
