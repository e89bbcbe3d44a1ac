"""Splitting: rows as read -> the training and validation rows the spec's `valid` setting names (and
the split as an exported model records it, for `evaluate --split`)."""

from __future__ import annotations

import numpy as np

from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import CATEGORY, DEFAULT_SPLIT, DataSpec, LastSplit, RandomSplit, RowSplit


def split_rows(n: int, split, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid row indices (each sorted)."""
    if split is None:
        split = DEFAULT_SPLIT
    if isinstance(split, LastSplit):
        n_valid = int(round(n * split.fraction))
        if n_valid == 0 or n_valid == n:
            raise DataError(path, f"last({split.fraction:g}) of {n} rows leaves "
                            f"{'no validation' if n_valid == 0 else 'no training'} rows", code=codes.EMPTY_SPLIT)
        return np.arange(0, n - n_valid), np.arange(n - n_valid, n)
    if isinstance(split, RandomSplit):
        order = np.random.default_rng(split.seed).permutation(n)
        n_valid = int(round(n * split.fraction))
        if n_valid == 0 or n_valid == n:
            raise DataError(path, f"random({split.fraction:g}) of {n} rows leaves "
                            f"{'no validation' if n_valid == 0 else 'no training'} rows", code=codes.EMPTY_SPLIT)
        return np.sort(order[n_valid:]), np.sort(order[:n_valid])
    if not isinstance(split, RowSplit):
        raise TypeError(f"no such split: {split!r}")  # a bug: the checker makes only these
    end = n if split.end is None else min(split.end, n)
    if split.start >= n:
        raise DataError(path, f"rows({split.start}, ...): the file has only {n} rows", code=codes.EMPTY_SPLIT)
    valid = np.arange(split.start, end)
    train = np.concatenate([np.arange(0, split.start), np.arange(end, n)])
    if len(train) == 0:
        raise DataError(path, f"rows({split.start}, {end}) leaves no training rows", code=codes.EMPTY_SPLIT)
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


def split_table(table, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of a table's columns (a CSV's, a Parquet file's), category columns of
    text as object arrays."""
    train_idx, valid_idx = split_rows(table.rows, split, table.path)
    raw_train, raw_valid = {}, {}
    for col in wanted:
        values = table.columns[col.name]
        if col.kind == CATEGORY:
            values = values if values.dtype.kind in "iu" else np.asarray(values, dtype=object)
        raw_train[col.name], raw_valid[col.name] = values[train_idx], values[valid_idx]
    return raw_train, raw_valid, table.path


def table_rows(data: DataSpec, wanted, table) -> tuple[dict, dict, str]:
    """A table's columns checked finite where a number is needed (a missing value allowed where
    fill_missing fills it: float inputs), then split."""
    for col in wanted:
        if col.kind != CATEGORY:
            is_target = col is data.target
            table.check_finite(col.name, allow_nan=not is_target and "fill_missing" in data.procs, target=is_target)
    return split_table(table, wanted, data.valid)
