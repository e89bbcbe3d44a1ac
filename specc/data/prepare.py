"""Prepare: checked data spec -> train / valid arrays (category columns as vocabulary indices)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from specc.data.files import describe_array, first_not_text, load_npz, npz_array
from specc.data.images import list_folder, load_images
from specc.data.parquet import ParquetTable, read_parquet
from specc.data.table import Table, check_finite, read_table
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, printable, suggest
from specc.language.spec import (
    CATEGORY, DEFAULT_SPLIT, IMAGE_COLUMN, LABEL_COLUMN, DataSpec, ImagesSource, LastSplit, NpzSource, ParquetSource,
    RandomSplit, RowSplit,
)
from specc.model.memory import BUDGET_NOTE, budget, data_limit, shown_bytes, too_much_data


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _as_int(text: str) -> int | None:
    """A whole-number id that fits the model's int64 input, else None (the column is then text)."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if INT64_MIN <= value <= INT64_MAX else None


@dataclass(frozen=True, slots=True)
class Vocab:
    """The categories of one column seen in training. For an input, index k + 1 is values[k] and
    0 is the unknown category (every value never seen in training); a target's classes have no
    unknown: index k is values[k]."""

    column: str
    values: tuple[str, ...]
    counts: tuple[int, ...]  # training rows per category, for `specc inspect`
    integer: bool  # every value is a whole number: the ONNX input is int64, not a string
    unknown: bool = True

    @property
    def size(self) -> int:
        return len(self.values) + (1 if self.unknown else 0)

    @staticmethod
    def fit(column: str, raw, unknown: bool = True) -> Vocab:
        raw = np.asarray(raw)
        if raw.dtype.kind in "iu":  # integer arrays (npz): no text round trip
            uniques, counts = np.unique(raw, return_counts=True)
            return Vocab(column, tuple(str(int(v)) for v in uniques), tuple(int(c) for c in counts), True, unknown)
        uniques, counts = np.unique(raw.astype(object), return_counts=True)
        ints = [_as_int(str(v)) for v in uniques]
        if all(i is not None for i in ints):
            # Whole-number ids: one category per number ("07" and "7" are the same id), in numeric order.
            merged: dict[int, int] = {}
            for i, c in zip(ints, counts):
                merged[i] = merged.get(i, 0) + int(c)
            keys = sorted(merged)
            return Vocab(column, tuple(str(k) for k in keys), tuple(merged[k] for k in keys), True, unknown)
        return Vocab(column, tuple(str(v) for v in uniques), tuple(int(c) for c in counts), False, unknown)

    def lookup(self, raw) -> np.ndarray:
        """Indices of raw values (strings as read, or ints). Unseen values map to 0 for an input,
        to -1 for a target (which has no unknown class)."""
        first, missing = (1, 0) if self.unknown else (0, -1)
        raw = np.asarray(raw) if not isinstance(raw, np.ndarray) else raw
        if self.integer and raw.dtype.kind in "iu":
            # vectorised: 25 million ids in well under a second
            keys = np.array([int(v) for v in self.values], dtype=np.int64)
            pos = np.clip(np.searchsorted(keys, raw), 0, max(len(keys) - 1, 0))
            found = keys[pos] == raw if len(keys) else np.zeros(len(raw), bool)
            return np.where(found, pos + first, missing).astype(np.int64)
        # text: look each distinct value up once
        uniques, inverse = np.unique(raw.astype(object) if raw.dtype.kind != "O" else raw, return_inverse=True)
        if self.integer:
            table = {int(v): k + first for k, v in enumerate(self.values)}
            keys = [(_as_int(v) if isinstance(v, str) else int(v)) for v in uniques]
        else:
            table = {v: k + first for k, v in enumerate(self.values)}
            keys = [str(v) for v in uniques]
        codes = np.array([table.get(k, missing) for k in keys], dtype=np.int64)
        return codes[inverse.reshape(-1)] if len(raw) else np.zeros(0, dtype=np.int64)

    def to_json(self) -> dict:
        return {"column": self.column, "values": list(self.values), "counts": list(self.counts),
                "integer": self.integer, "unknown": self.unknown}

    @staticmethod
    def from_json(d: dict) -> Vocab:
        return Vocab(d["column"], tuple(d["values"]), tuple(d["counts"]), bool(d["integer"]),
                     bool(d.get("unknown", True)))


def vocabs_to_json(vocabs: dict[str, Vocab]) -> str:
    return json.dumps({k: v.to_json() for k, v in vocabs.items()})


def vocabs_from_json(text: str) -> dict[str, Vocab]:
    return {k: Vocab.from_json(v) for k, v in json.loads(text).items()}


@dataclass(frozen=True, slots=True)
class ColumnStats:
    """A float column's training statistics, for the procs: the median fills missing values,
    mean and std (computed after filling, as fastai does) normalise."""

    median: float
    mean: float
    std: float
    missing: int  # training rows without a value

    def to_json(self) -> dict:
        return {"median": self.median, "mean": self.mean, "std": self.std, "missing": self.missing}


def column_stats(values: np.ndarray) -> ColumnStats:
    present = values[~np.isnan(values)]
    median = float(np.median(present)) if len(present) else 0.0
    filled = np.where(np.isnan(values), median, values).astype(np.float64)
    std = float(filled.std(ddof=1)) if len(filled) > 1 else 0.0
    # a constant column would divide by zero: leave its scale alone
    return ColumnStats(median, float(filled.mean()), std if std > 0 else 1.0, int(len(values) - len(present)))


@dataclass(frozen=True, slots=True)
class Prepared:
    """Model-ready arrays: int64 indices for category columns (the target's are class indices),
    float32 for float columns, unscaled."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    vocabs: dict[str, Vocab]
    raw_valid: dict[str, np.ndarray]  # the validation rows as read, for export's parity check
    path: str
    stats: dict[str, ColumnStats] = None  # float input columns' training statistics

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_valid(self) -> int:
        return len(next(iter(self.valid.values())))


def split_rows(n: int, split, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid row indices (each sorted)."""
    if split is None:
        split = DEFAULT_SPLIT
    if isinstance(split, LastSplit):
        n_valid = int(round(n * split.fraction))
        if n_valid == 0 or n_valid == n:
            raise DataError(path, f"last({split.fraction:g}) of {n} rows leaves "
                            f"{'no validation' if n_valid == 0 else 'no training'} rows", code="D106")
        return np.arange(0, n - n_valid), np.arange(n - n_valid, n)
    if isinstance(split, RandomSplit):
        order = np.random.default_rng(split.seed).permutation(n)
        n_valid = int(round(n * split.fraction))
        if n_valid == 0 or n_valid == n:
            raise DataError(path, f"random({split.fraction:g}) of {n} rows leaves "
                            f"{'no validation' if n_valid == 0 else 'no training'} rows", code="D106")
        return np.sort(order[n_valid:]), np.sort(order[:n_valid])
    assert isinstance(split, RowSplit)
    end = n if split.end is None else min(split.end, n)
    if split.start >= n:
        raise DataError(path, f"rows({split.start}, ...): the file has only {n} rows", code="D106")
    valid = np.arange(split.start, end)
    train = np.concatenate([np.arange(0, split.start), np.arange(end, n)])
    if len(train) == 0:
        raise DataError(path, f"rows({split.start}, {end}) leaves no training rows", code="D106")
    return train, valid


def split_to_json(split) -> dict | None:
    """The validation split as JSON (an exported model records it for `evaluate --split`)."""
    if isinstance(split, RandomSplit):
        return {"kind": "random", "fraction": split.fraction, "seed": split.seed}
    if isinstance(split, RowSplit):
        return {"kind": "rows", "start": split.start, "end": split.end}
    if isinstance(split, LastSplit):
        return {"kind": "last", "fraction": split.fraction}
    return None


def split_from_json(d: dict | None):
    """The split that split_to_json wrote."""
    if d is None:
        return None
    if d["kind"] == "random":
        return RandomSplit(d["fraction"], d["seed"])
    if d["kind"] == "rows":
        return RowSplit(d["start"], d["end"])
    return LastSplit(d["fraction"])


def prepare(data: DataSpec, columns=None) -> Prepared:
    """Read, split and encode the data a spec names. `columns`: the input columns to keep."""
    inputs = tuple(c for c in data.inputs if columns is None or c.name in columns)
    wanted = (*inputs, data.target)
    if isinstance(data.source, NpzSource):
        raw_train, raw_valid_cols, path = read_npz(data.source, wanted, data.valid)
    elif isinstance(data.source, ImagesSource):
        raw_train, raw_valid_cols, path = read_images(data.source, wanted, data.valid)
    else:
        parquet = isinstance(data.source, ParquetSource)
        table = read_parquet(data.source, wanted) if parquet else read_table(data.source, wanted)
        for col in wanted:
            if col.kind != CATEGORY:
                # a missing value is allowed where fill_missing will fill it (float inputs)
                is_target = col is data.target
                allow_nan = not is_target and "fill_missing" in data.procs
                if parquet:
                    table.check_finite(col.name, allow_nan=allow_nan, target=is_target)
                else:
                    check_finite(table, col.name, allow_nan=allow_nan, target=is_target)
        raw_train, raw_valid_cols, path = _split_table(table, wanted, data.valid)
    if data.keep_classes:  # only rows of these classes, in both splits
        for part in (raw_train, raw_valid_cols):
            labels = part[data.target.name]
            texts = labels.astype(str) if labels.dtype.kind != "O" else np.array([str(v) for v in labels])
            keep = np.isin(texts, np.array(data.keep_classes))
            for name in list(part):
                part[name] = part[name][keep]
        if not len(raw_train[data.target.name]) or not len(raw_valid_cols[data.target.name]):
            raise DataError(path, f"no rows of the classes {', '.join(data.keep_classes)} in "
                            f"{'the training' if not len(raw_train[data.target.name]) else 'the validation'} rows",
                            code="D106")
    if data.train_rows is not None:  # only the first N training rows
        raw_train = {name: values[:data.train_rows] for name, values in raw_train.items()}
    vocabs: dict[str, Vocab] = {}
    train: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    for col in wanted:
        if col.kind == CATEGORY:
            is_target = col is data.target
            vocab = Vocab.fit(col.name, raw_train[col.name], unknown=not is_target)
            vocabs[col.name] = vocab
            train[col.name] = vocab.lookup(raw_train[col.name])
            valid[col.name] = vocab.lookup(raw_valid_cols[col.name])
            if is_target and (valid[col.name] < 0).any():
                k = int(np.argmax(valid[col.name] < 0))
                raise DataError(path, f"validation row {k + 1}: class '{raw_valid_cols[col.name][k]}' never "
                                f"appears in the training rows (classes: {', '.join(vocab.values[:20])})",
                                column=col.name, code="D109")
        else:
            train[col.name] = np.ascontiguousarray(raw_train[col.name], dtype=np.float32)
            valid[col.name] = np.ascontiguousarray(raw_valid_cols[col.name], dtype=np.float32)
    raw_valid = raw_valid_cols  # arrays: parity takes a few rows of them
    stats = {c.name: column_stats(train[c.name]) for c in inputs if c.kind != CATEGORY and not c.shape}
    return Prepared(train, valid, vocabs, raw_valid, path, stats)


def _split_table(table: Table | ParquetTable, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of a table's columns (category columns of text as object arrays)."""
    train_idx, valid_idx = split_rows(table.rows, split, table.path)
    raw_train, raw_valid = {}, {}
    for col in wanted:
        values = table.columns[col.name]
        if col.kind == CATEGORY:
            values = values if values.dtype.kind in "iu" else np.asarray(values, dtype=object)
        raw_train[col.name], raw_valid[col.name] = values[train_idx], values[valid_idx]
    return raw_train, raw_valid, table.path


def read_parquet_split(source: ParquetSource, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of the wanted columns of a Parquet source, as read (specc show)."""
    return _split_table(read_parquet(source, wanted), wanted, split)


def read_npz(source: NpzSource, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of the wanted columns from an .npz file (never unpickling).
    The file either holds `<column>_train` and `<column>_valid` arrays, or one array per column
    that the spec's `valid` split divides."""
    path = str(source.path)
    archive = load_npz(source.path, source.span)
    with archive:
        names = set(archive.files)
        paired = all(f"{c.name}_train" in names and f"{c.name}_valid" in names for c in wanted)
        errors = []
        for col in wanted:
            if not paired and col.name not in names:
                listed = ", ".join(sorted(names))
                errors.append(Diagnostic(codes.NOT_IN_DATA, f"array '{col.name}' is not in {source.path.name}",
                                         col.span, suggest(col.name, {n.rsplit("_", 1)[0] for n in names}) +
                                         (f"{source.path.name} holds: {listed}; a column reads the array of its "
                                          "name, or <name>_train and <name>_valid",)))
        if errors:
            raise SpecError(errors)
        if paired and split is not None:
            raise SpecError([Diagnostic(codes.SPLIT_IN_DATA, f"{source.path.name} has its own validation arrays",
                                        split.span,
                                        ("remove `valid = ...`: the *_valid arrays are the validation set",))])

        _npz_fits(archive, [f"{c.name}{part}" for c in wanted for part in (("_train", "_valid") if paired else ("",))],
                  path)

        def load(name: str, col) -> np.ndarray:
            return _check_array(npz_array(archive, name, path), col, path, name)

        if paired:
            train = {c.name: load(f"{c.name}_train", c) for c in wanted}
            valid = {c.name: load(f"{c.name}_valid", c) for c in wanted}
            for part, arrays in (("_train", train), ("_valid", valid)):
                _same_rows(arrays, path, part)
            return train, valid, path
        whole = {c.name: load(c.name, c) for c in wanted}
        _same_rows(whole, path, "")
        n = len(next(iter(whole.values())))
        train_idx, valid_idx = split_rows(n, split, path)
        return ({k: v[train_idx] for k, v in whole.items()}, {k: v[valid_idx] for k, v in whole.items()}, path)


def _npz_fits(archive, names: list[str], path: str) -> None:
    """Before an array is read: what each header says it holds, against what its member of the
    archive holds (D102 for a header that claims more) and, all together, the data limit (D113)."""
    import zipfile

    total, limit = 0, data_limit()
    for name in names:
        try:
            member = archive.zip.getinfo(f"{name}.npy")
            with archive.zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:  # a version numpy reads itself (3.0: field names in UTF-8)
                    continue
                shape, _, dtype = read_header(f)
                claimed, holds = math.prod(shape) * dtype.itemsize, member.file_size - f.tell()
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(path, f"array '{name}' cannot be read ({err})", code="D102") from None
        if not dtype.hasobject and claimed > holds:
            raise DataError(path, f"array '{name}' is damaged: its header says shape {tuple(shape)} of {dtype} "
                            f"({shown_bytes(claimed)}), but it holds {shown_bytes(max(holds, 0))}", code="D102")
        total += claimed
    if total > limit.bytes:
        raise too_much_data(path, f"its arrays the spec reads hold {shown_bytes(total)}", limit)


def read_images(source: ImagesSource, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of an image folder: `image` (uint8 pixels, as npz arrays are read) and
    `label` (class folder names), divided by its train/ and valid/ folders or by the spec's split."""
    _images_fit(source)
    folder = load_images(source, split)
    columns = {IMAGE_COLUMN: folder.pixels, LABEL_COLUMN: folder.labels}
    if folder.valid is not None:
        train_idx, valid_idx = np.flatnonzero(~folder.valid), np.flatnonzero(folder.valid)
    else:
        train_idx, valid_idx = split_rows(len(folder.labels), split, folder.path)
    return ({c.name: columns[c.name][train_idx] for c in wanted},
            {c.name: columns[c.name][valid_idx] for c in wanted}, folder.path)


# bytes a pixel takes while the data is prepared: decoded (uint8), split into the training and
# validation rows (a copy), and as the model's float32 input
PIXEL_BYTES = 1 + 1 + 4


def _images_fit(source: ImagesSource) -> None:
    """Before an image is decoded: the folder's images at the spec's size must fit in memory, as
    prepared (PIXEL_BYTES a number), else E307 at the source."""
    count = len(list_folder(source).files)
    per = math.prod(source.row_shape)
    need, available = count * per * PIXEL_BYTES, budget()
    if need <= available.bytes:
        return
    height, width = source.size
    raise SpecError([Diagnostic(
        codes.TOO_LARGE, f"the {count:,} images of {source.path.name}/ at {height}x{width} ({source.mode}) take "
        f"{shown_bytes(need)} once decoded, more than {available}", source.span,
        (f"{count:,} images of {per:,} numbers, {PIXEL_BYTES} bytes each: decoded (uint8), split into training "
         "and validation rows, and as float32 for the model", "choose a smaller size=(height, width)",
         BUDGET_NOTE))])


def _check_array(arr: np.ndarray, col, path: str, name: str) -> np.ndarray:
    """An array's rows must have the column's declared shape; floats must be finite; ids must fit
    int64 (larger ones are read as text, as a CSV's would be)."""
    if arr.ndim == 0:
        raise DataError(path, f"array '{name}' is a single value ({describe_array(arr)}); the column "
                        f"'{col.name}' needs one row per example", code="D103")
    rows = arr.shape[1:]
    want = tuple(col.shape)
    if rows != want and not (want == () and rows == (1,)):
        shown = "one value" if want == () else f"shape {want}"
        raise SpecError([Diagnostic(codes.ARRAY_SHAPE, f"array '{name}' has rows of shape {rows}, but the spec "
                                    f"declares {shown}", col.span, (f"e.g. {col.name}: float{rows}" if rows else
                                                                    f"e.g. {col.name}: {col.kind}",))])
    if want == () and rows == (1,):
        arr = arr[:, 0]
    if col.kind == CATEGORY:
        if arr.dtype.kind not in "iuUS":
            raise DataError(path, f"array '{name}' holds {describe_array(arr)}; a category column wants integers "
                            "or strings", code="D104")
        if arr.dtype.kind == "S":
            return _decoded(arr, path, name)
        if arr.dtype.kind == "U":
            if (k := first_not_text(arr)) is not None:  # a class or id the exported model could not hold
                raise DataError(path, f"array '{name}' holds a string that is not UTF-8 text at index {k} "
                                f"('{printable(str(arr[k]))}')", code="D102")
            return arr.astype(str)
        if arr.dtype.kind == "u" and len(arr) and int(arr.max()) > INT64_MAX:
            return arr.astype(str)  # ids past int64: text, like a CSV's
        return arr
    if arr.dtype.kind not in "iuf":
        raise DataError(path, f"array '{name}' holds {describe_array(arr)}; a float column wants numbers", code="D104")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(path, f"array '{name}' holds {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}",
                        code="D105")
    return arr


def _decoded(arr: np.ndarray, path: str, name: str) -> np.ndarray:
    """Byte strings as text: UTF-8, or an error at the first that is not."""
    out = np.empty(arr.shape, dtype=object)
    for k, raw in enumerate(arr):
        try:
            out[k] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(path, f"array '{name}' holds bytes that are not UTF-8 text at index {k}",
                            code="D102") from None
    return out.astype(str)


def _same_rows(arrays: dict, path: str, part: str) -> None:
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}{part}: {n}" for k, n in counts.items())
        raise DataError(path, f"the arrays have different numbers of rows ({listed})", code="D103")
