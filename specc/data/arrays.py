"""Reading arrays: an npz(...) source -> the arrays of the columns a spec names (never unpickled),
each checked against its column's declaration, split into training and validation rows."""

from __future__ import annotations

import math

import numpy as np

from specc.data.files import describe_array, first_not_text, load_npz, npz_array
from specc.data.split import split_rows
from specc.language import codes
from specc.language.diagnostics import DataError, Diagnostic, SpecError, printable, suggest
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, SET_PAD_ID, NpzSource
from specc.model.memory import data_limit, shown_bytes, too_much_data

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


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
        train_idx, valid_idx = split_rows(n, split, path, whole)
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
            raise DataError(path, f"array '{name}' cannot be read ({err})", code=codes.DAMAGED_FILE) from None
        if not dtype.hasobject and claimed > holds:
            raise DataError(path, f"array '{name}' is damaged: its header says shape {tuple(shape)} of {dtype} "
                            f"({shown_bytes(claimed)}), but it holds {shown_bytes(max(holds, 0))}",
                            code=codes.DAMAGED_FILE)
        total += claimed
    if total > limit.bytes:
        raise too_much_data(path, f"its arrays the spec reads hold {shown_bytes(total)}", limit)


def _check_array(arr: np.ndarray, col, path: str, name: str) -> np.ndarray:
    """An array's rows must have the column's declared shape; floats must be finite; ids must fit
    int64 (larger ones are read as text, as a CSV's would be)."""
    if arr.ndim == 0:
        raise DataError(path, f"array '{name}' is a single value ({describe_array(arr)}); the column "
                        f"'{col.name}' needs one row per example", code=codes.DATA_SHAPE)
    if col.kind == CATEGORIES:
        return _sets(arr, col, path, name)
    if col.kind not in (FLOAT, CATEGORY):
        raise KeyError(f"no reading of a {col.kind} column from .npz")  # a bug: a kind the reader lacks
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
                            "or strings", code=codes.WRONG_TYPE)
        if arr.dtype.kind == "S":
            return _decoded(arr, path, name)
        if arr.dtype.kind == "U":
            if (k := first_not_text(arr)) is not None:  # a class or id the exported model could not hold
                raise DataError(path, f"array '{name}' holds a string that is not UTF-8 text at index {k} "
                                f"('{printable(str(arr[k]))}')", code=codes.NOT_UTF8)
            return arr.astype(str)
        if arr.dtype.kind == "u" and len(arr) and int(arr.max()) > INT64_MAX:
            return arr.astype(str)  # ids past int64: text, like a CSV's
        return arr
    if arr.dtype.kind not in "iuf":
        raise DataError(path, f"array '{name}' holds {describe_array(arr)}; a float column wants numbers",
                        code=codes.WRONG_TYPE)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(path, f"array '{name}' holds {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}",
                        code=codes.BAD_NUMBER)
    return arr


def _sets(arr: np.ndarray, col, path: str, name: str) -> np.ndarray:
    """A set column's array: 2-D, a row of ids a row (integers, or strings), padded at its end or anywhere with
    -1 (integers) or "" (strings): each row's set is its other values."""
    from specc.data.sets import check_sizes, from_padded

    if arr.ndim != 2 or arr.dtype.kind not in "iuUS":
        raise SpecError([Diagnostic(codes.ARRAY_SHAPE, f"array '{name}' holds {describe_array(arr)}, but a "
                                    "categories column reads a 2-D array of integer or string ids, a row of ids a row "
                                    f"padded with {SET_PAD_ID} or \"\"", col.span,
                                    ("e.g. np.array([[3, 7, -1], [2, -1, -1]]) for the sets {3, 7} and {2}",))])
    if arr.dtype.kind == "S":
        arr = _decoded(arr.reshape(-1), path, name).reshape(arr.shape)
    elif arr.dtype.kind == "U" and (k := first_not_text(arr.reshape(-1))) is not None:
        raise DataError(path, f"array '{name}' holds a string that is not UTF-8 text at row {k // arr.shape[1]}",
                        code=codes.NOT_UTF8)
    sets = from_padded(arr)
    check_sizes(sets, col, lambda k, message, code: DataError(path, f"array '{name}' row {k}: {message}",
                                                               column=col.name, code=code))
    return sets


def _decoded(arr: np.ndarray, path: str, name: str) -> np.ndarray:
    """Byte strings as text: UTF-8, or an error at the first that is not."""
    out = np.empty(arr.shape, dtype=object)
    for k, raw in enumerate(arr):
        try:
            out[k] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(path, f"array '{name}' holds bytes that are not UTF-8 text at index {k}",
                            code=codes.NOT_UTF8) from None
    return out.astype(str)


def _same_rows(arrays: dict, path: str, part: str) -> None:
    """The arrays of one part (`_train`, `_valid`, or the whole file's) have one number of rows, and
    the file's own training or validation arrays not none: training could take no step without
    rows, and validation give no loss."""
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}{part}: {n}" for k, n in counts.items())
        raise DataError(path, f"the arrays have different numbers of rows ({listed})", code=codes.DATA_SHAPE)
    if part and not next(iter(counts.values())):  # (the whole file's arrays: the split says what it leaves)
        names = ", ".join(f"'{k}{part}'" for k in counts)
        rows = "training rows" if part == "_train" else "validation rows"
        raise DataError(path, f"array{'s' * (len(counts) > 1)} {names} {'have' if len(counts) > 1 else 'has'} no "
                        f"rows, so there are no {rows}", code=codes.EMPTY_SPLIT)
