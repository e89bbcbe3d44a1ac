"""Prepare: checked data spec -> train / valid arrays (category columns as vocabulary indices).

The source's declaration (specc.data.sources) reads and splits the rows; here they are filtered
(keep_classes, train_rows) and encoded: vocabularies and statistics fitted on the training rows."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from specc.data.arrays import INT64_MAX, INT64_MIN
from specc.data.read import read_rows
from specc.data.splits import validates
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import (
    CATEGORIES, CATEGORY, FLOAT, HISTORY, IMPLICIT, SET_PAD_ID, Column, DataSpec, Implicit,
)

RAW_HEAD = 4096  # training rows kept as read where there are no validation rows, for export's parity check


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
    """Model-ready arrays: int64 indices for category columns (the target's are class indices), int64
    [rows, longest set] indices for set columns (0: unknown or padding), float32 for float columns, unscaled."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    vocabs: dict[str, Vocab]
    raw_valid: dict[str, np.ndarray]  # the validation rows as read, for export's parity check
    path: str
    stats: dict[str, ColumnStats] = None  # float input columns' training statistics
    raw_head: dict[str, np.ndarray] | None = None  # valid = none: the first training rows as read
    tables: dict[str, np.ndarray] | None = None  # each history column's table: its key's index -> the items' indices

    @property
    def raw_rows(self) -> dict[str, np.ndarray]:
        """The rows as read that export's parity check takes: the validation rows, or where there are
        none (valid = none) the first training rows."""
        return self.raw_valid if self.raw_head is None else self.raw_head

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_valid(self) -> int:
        return len(next(iter(self.valid.values())))


def prepare(data: DataSpec, columns=None) -> Prepared:
    """Read, split and encode the data a spec names. `columns`: the input columns to keep."""
    inputs = _with_history_columns(data, tuple(c for c in data.inputs if columns is None or c.name in columns))
    raw_train, raw_valid, path = read_rows(data, data.read_columns(inputs))
    wanted = (*inputs, data.target)
    if data.feedback is not None:  # every row an interaction (or those rated at least the threshold)
        raw_train, raw_valid = (interactions(data.feedback, part) for part in (raw_train, raw_valid))
    if data.keep_classes:  # only rows of these classes, in both splits
        _keep_classes(data, raw_train, raw_valid, path)
    if data.train_rows is not None:  # only the first N training rows
        raw_train = {name: values[:data.train_rows] for name, values in raw_train.items()}
    _some_rows(data, raw_train, raw_valid, path)
    vocabs: dict[str, Vocab] = {}
    train: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    for col in wanted:
        if col.kind == HISTORY:  # made from the training rows once they are encoded: history_table
            continue
        if col.kind == IMPLICIT:
            train[col.name], valid[col.name] = (np.ones(len(raw[data.feedback.user]), np.float32)
                                                for raw in (raw_train, raw_valid))
        elif col.kind == CATEGORY:
            is_target = col is data.target
            vocab = Vocab.fit(col.name, raw_train[col.name], unknown=not is_target)
            vocabs[col.name] = vocab
            train[col.name] = vocab.lookup(raw_train[col.name])
            valid[col.name] = vocab.lookup(raw_valid[col.name])
            if is_target and (valid[col.name] < 0).any():
                k = int(np.argmax(valid[col.name] < 0))
                raise DataError(path, f"validation row {k + 1}: class '{raw_valid[col.name][k]}' never "
                                f"appears in the training rows (classes: {', '.join(vocab.values[:20])})",
                                column=col.name, code=codes.UNKNOWN_CLASS)
        elif col.kind == CATEGORIES:  # a vocabulary of the ids of the training rows' sets; rows padded with 0
            from specc.data.sets import encode_sets

            vocabs[col.name] = vocab = fit_set_vocab(col.name, raw_train[col.name], path)
            train[col.name] = encode_sets(vocab, raw_train[col.name])
            valid[col.name] = encode_sets(vocab, raw_valid[col.name])
        elif col.kind == FLOAT:
            train[col.name] = np.ascontiguousarray(raw_train[col.name], dtype=np.float32)
            valid[col.name] = np.ascontiguousarray(raw_valid[col.name], dtype=np.float32)
        else:
            raise KeyError(f"no preparing of a {col.kind} column")  # a bug: a kind prepare lacks
    stats = {c.name: column_stats(train[c.name]) for c in inputs if c.kind == FLOAT and not c.shape}
    tables = {c.name: history_table(train[c.of[0]], train[c.of[1]], vocabs[c.of[0]].size)
              for c in data.inputs if c.kind == HISTORY}
    # export's parity check takes a few raw rows: the validation rows', else (valid = none) the first training rows
    head = None if validates(data.valid) else {name: values[:RAW_HEAD].copy() for name, values in raw_train.items()}
    return Prepared(train, valid, vocabs, raw_valid, path, stats, head, tables)


def fit_set_vocab(column: str, sets: np.ndarray, path: str) -> Vocab:
    """The vocabulary of a set column's training rows (each id's count: the rows holding it); -1 is no id of
    it, since -1 pads the exported model's input."""
    from specc.data.sets import flat_distinct

    ids, _ = flat_distinct(sets)
    vocab = Vocab.fit(column, ids)
    if vocab.integer and str(SET_PAD_ID) in vocab.values:
        raise DataError(path, f"the id {SET_PAD_ID} in a set: {SET_PAD_ID} pads the sets of the exported model's "
                        "input, so it is no id of a categories column", column=column, code=codes.BAD_NUMBER)
    return vocab


def _with_history_columns(data: DataSpec, inputs: tuple[Column, ...]) -> tuple[Column, ...]:
    """The inputs, and the key and item columns of every history column (its table is made of them)."""
    named = {c.name for c in inputs}
    needed = {name for c in data.inputs if c.kind == HISTORY for name in c.of}
    return (*inputs, *(c for c in data.inputs if c.name in needed - named))


def history_table(keys: np.ndarray, items: np.ndarray, n_keys: int) -> np.ndarray:
    """Each key's distinct items in the training rows (`keys`, `items`: vocabulary indices), a row per key
    index (the unknown key's empty), in item order, padded with 0 (no item) to the longest: int64
    [n_keys, at least 1]."""
    width = int(items.max(initial=0)) + 1
    pairs = np.unique(keys.astype(np.int64) * width + items)  # distinct pairs, sorted by key then item
    keys, items = pairs // width, pairs % width
    counts = np.bincount(keys, minlength=n_keys)
    table = np.zeros((n_keys, max(1, int(counts.max(initial=0)))), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    table[keys, np.arange(len(keys)) - starts[keys]] = items
    return table


def interactions(feedback: Implicit, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows that are interactions: all of them, or those whose rating is at least the threshold
    (without the rating column, which the model never reads)."""
    if feedback.rating is None:
        return raw
    keep = raw[feedback.rating] >= feedback.threshold
    return {name: values[keep] for name, values in raw.items() if name != feedback.rating}


def _keep_classes(data: DataSpec, raw_train: dict, raw_valid: dict, path: str) -> None:
    """Only the rows whose target is one of keep_classes, in both splits (in place)."""
    for part in (raw_train, raw_valid):
        labels = part[data.target.name]
        texts = labels.astype(str) if labels.dtype.kind != "O" else np.array([str(v) for v in labels])
        keep = np.isin(texts, np.array(data.keep_classes))
        for name in list(part):
            part[name] = part[name][keep]
    if not len(raw_train[data.target.name]) or (validates(data.valid) and not len(raw_valid[data.target.name])):
        raise DataError(path, f"no rows of the classes {', '.join(data.keep_classes)} in "
                        f"{'the training' if not len(raw_train[data.target.name]) else 'the validation'} rows",
                        code=codes.EMPTY_SPLIT)


def _some_rows(data: DataSpec, raw_train: dict, raw_valid: dict, path: str) -> None:
    """Training rows and validation rows, whatever the source: without the first training could take
    no step (its loss would be the mean of nothing), without the second give no validation loss.
    Each source says where its rows went missing where it can (an .npz's empty x_train array);
    this holds for every source, the next one too. `valid = none` keeps no validation rows."""
    counted = data.target.name if data.feedback is None else data.feedback.user
    for part, what in ((raw_train, "training"), *(((raw_valid, "validation"),) if validates(data.valid) else ())):
        if not len(part[counted]):
            rated = "" if data.feedback is None or data.feedback.rating is None else \
                f" rated {data.feedback.threshold:g} or more"
            raise DataError(path, f"the data leaves no {what} rows{rated}", code=codes.EMPTY_SPLIT)
