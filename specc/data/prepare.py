"""Prepare: checked data spec -> train / valid arrays (category columns as vocabulary indices)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from specc.data.table import Table, check_finite, read_table
from specc.diagnostics import DataError
from specc.spec import CATEGORY, DataSpec, RandomSplit, RowSplit


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Vocab:
    """The categories of one column seen in training: index k + 1 for values[k]; 0 is unknown."""

    column: str
    values: tuple[str, ...]
    counts: tuple[int, ...]  # training rows per category, for `specc inspect`
    integer: bool  # every value is a whole number: the ONNX input is int64, not a string

    @property
    def size(self) -> int:
        return len(self.values) + 1

    @staticmethod
    def fit(column: str, raw: list[str]) -> Vocab:
        uniques, counts = np.unique(np.asarray(raw, dtype=object), return_counts=True)
        ints = [_as_int(v) for v in uniques]
        if all(i is not None for i in ints):
            # Whole-number ids: one category per number ("07" and "7" are the same id), in numeric order.
            merged: dict[int, int] = {}
            for i, c in zip(ints, counts):
                merged[i] = merged.get(i, 0) + int(c)
            keys = sorted(merged)
            return Vocab(column, tuple(str(k) for k in keys), tuple(merged[k] for k in keys), True)
        return Vocab(column, tuple(str(v) for v in uniques), tuple(int(c) for c in counts), False)

    def lookup(self, raw) -> np.ndarray:
        """Indices of raw values (strings as read, or ints); unseen values map to 0."""
        if self.integer:
            table = {int(v): k + 1 for k, v in enumerate(self.values)}
            keys = [(_as_int(v) if isinstance(v, str) else int(v)) for v in raw]
        else:
            table = {v: k + 1 for k, v in enumerate(self.values)}
            keys = [str(v) for v in raw]
        get = table.get
        return np.fromiter((get(k, 0) for k in keys), dtype=np.int64, count=len(keys))

    def to_json(self) -> dict:
        return {"column": self.column, "values": list(self.values), "counts": list(self.counts),
                "integer": self.integer}

    @staticmethod
    def from_json(d: dict) -> Vocab:
        return Vocab(d["column"], tuple(d["values"]), tuple(d["counts"]), bool(d["integer"]))


def vocabs_to_json(vocabs: dict[str, Vocab]) -> str:
    return json.dumps({k: v.to_json() for k, v in vocabs.items()})


def vocabs_from_json(text: str) -> dict[str, Vocab]:
    return {k: Vocab.from_json(v) for k, v in json.loads(text).items()}


@dataclass(frozen=True, slots=True)
class Prepared:
    """Model-ready arrays: int64 indices for category inputs, float32 for floats and the target."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    vocabs: dict[str, Vocab]
    raw_valid: dict[str, list]  # the validation rows as read, for export's parity check
    path: str

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_valid(self) -> int:
        return len(next(iter(self.valid.values())))


def split_rows(n: int, split, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid row indices (each sorted)."""
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


def prepare(data: DataSpec, columns=None) -> Prepared:
    """Read, split and encode the data a spec names. `columns`: the input columns to keep."""
    inputs = tuple(c for c in data.inputs if columns is None or c.name in columns)
    table: Table = read_table(data.source, (*inputs, data.target))
    if data.target.kind != CATEGORY:
        check_finite(table, data.target.name)
    for col in inputs:
        if col.kind != CATEGORY:
            check_finite(table, col.name)
    train_idx, valid_idx = split_rows(table.rows, data.valid, table.path)
    vocabs: dict[str, Vocab] = {}
    train: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    raw_valid: dict[str, list] = {}
    for col in (*inputs, data.target):
        values = table.columns[col.name]
        if col.kind == CATEGORY:
            raw = np.asarray(values, dtype=object)
            vocab = Vocab.fit(col.name, list(raw[train_idx]))
            vocabs[col.name] = vocab
            codes = vocab.lookup(values)
            train[col.name], valid[col.name] = codes[train_idx], codes[valid_idx]
            raw_valid[col.name] = list(raw[valid_idx])
        else:
            arr = values.astype(np.float32)
            train[col.name], valid[col.name] = arr[train_idx], arr[valid_idx]
            raw_valid[col.name] = list(values[valid_idx])
    return Prepared(train, valid, vocabs, raw_valid, table.path)
