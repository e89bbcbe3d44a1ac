"""Splitting: rows as read -> the training and validation rows the spec's `valid` setting names (and
the split as an exported model records it, for `evaluate --split`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specc.data.splits import split_def
from specc.language.spec import CATEGORY, DEFAULT_SPLIT, FLOAT, Column, DataSpec


def split_rows(n: int, split, path: str, columns: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid row indices (each sorted), as the split's declaration picks them from a file
    of n rows; `columns`: the values of the columns it reads (see split_columns), by name."""
    if split is None:
        split = DEFAULT_SPLIT
    return split_def(split.kind).pick(split, n, columns or {}, path)


def split_columns(split, wanted) -> tuple[Column, ...]:
    """The columns the split reads (per_user's `by`, ...) that are not among the wanted ones: read
    beside them, for the split alone."""
    names = {col.name for col in wanted}
    return () if split is None else tuple(c for c in split_def(split.kind).columns(split) if c.name not in names)


def valid_file(split) -> Path | None:
    """The file the split's validation rows come from (`file(path)`), or None: the source's own."""
    return None if split is None else split_def(split.kind).valid_file(split)


def split_to_json(split) -> dict | None:
    """The validation split as JSON (an exported model records it for `evaluate --split`)."""
    return None if split is None else split_def(split.kind).to_json(split)


def split_from_json(d: dict | None):
    """The split that split_to_json wrote (UndeclaredSplit, a KeyError, for a kind not declared)."""
    return None if d is None else split_def(d["kind"]).from_json(d)


def split_table(table, wanted, split) -> tuple[dict, dict, str]:
    """Train and valid arrays of a table's columns (a CSV's, a Parquet file's), category columns of
    text as object arrays."""
    train_idx, valid_idx = split_rows(table.rows, split, table.path, table.columns)
    raw_train, raw_valid = {}, {}
    for col in wanted:
        values = table.columns[col.name]
        if col.kind == CATEGORY:
            values = values if values.dtype.kind in "iu" else np.asarray(values, dtype=object)
        raw_train[col.name], raw_valid[col.name] = values[train_idx], values[valid_idx]
    return raw_train, raw_valid, table.path


def table_rows(data: DataSpec, wanted, table) -> tuple[dict, dict, str]:
    """A table's columns checked finite where a number is needed (a missing value allowed where
    fill_missing fills it: float inputs; never in a column read for the split alone), then split."""
    for_split = {col.name for col in split_columns(data.valid, data.inputs)}
    fillable = {col.name for col in data.inputs if col.kind == FLOAT and not col.shape}  # never a vector's number
    for col in wanted:
        if col.kind == FLOAT:  # ids and sets of ids are any text
            is_target = col is data.target
            filled = not is_target and col.name not in for_split and "fill_missing" in data.procs and \
                col.name in fillable
            table.check_finite(col.name, allow_nan=filled, target=is_target)
    return split_table(table, wanted, data.valid)
