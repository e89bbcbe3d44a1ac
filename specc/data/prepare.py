"""Prepare: checked data spec -> train / valid arrays (category columns as vocabulary indices).

The source's declaration (specc.data.sources) reads and splits the rows; here they are filtered
(keep_classes, train_rows) and encoded: vocabularies and statistics fitted on the training rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from specc.data.read import read_rows
from specc.data.side import SideColumn, encoded, side_columns
from specc.data.splits import validates
from specc.data.vocab import Vocab, vocabs_from_json, vocabs_to_json  # noqa: F401 (where the stages import them)
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import (
    CATEGORIES, CATEGORY, FLOAT, HISTORY, IMPLICIT, SET_PAD_ID, Column, DataSpec, Implicit,
)

RAW_HEAD = 4096  # training rows kept as read where there are no validation rows, for export's parity check


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
    # implicit feedback of users (view = users): the training interactions, whose users are the training rows
    pairs: dict[str, np.ndarray] | None = None
    sides: dict[str, SideColumn] | None = None  # each side table column's value by key (specc.data.side)

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
    inputs = _with_made_from(data, tuple(c for c in data.inputs if columns is None or c.name in columns))
    raw_train, raw_valid, path = read_rows(data, data.read_columns(inputs))
    # the columns read first: a side table's column takes its key's row of the table (its key's vocabulary known)
    wanted = (*(c for c in inputs if not c.made), *(c for c in inputs if c.made), data.target)
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
    sides: dict[str, SideColumn] = {}
    for col in wanted:
        if col.kind == HISTORY:  # made from the training rows once they are encoded: history_table
            continue
        if col.table is not None:  # a side table's: each row its key's value in the table
            sides = sides or side_columns(data, wanted, vocabs)
            sides[col.name] = _side_column(col, sides[col.name], raw_train, raw_valid, vocabs)
            side = sides[col.name]
            train[col.name], valid[col.name] = (np.ascontiguousarray(side.of(raw[side.key]), dtype=side.values.dtype)
                                                for raw in (raw_train, raw_valid))
        else:
            train[col.name], valid[col.name] = _encoded(data, col, raw_train, raw_valid, vocabs, path)
    stats = {c.name: column_stats(train[c.name]) for c in inputs if c.kind == FLOAT and not c.shape}
    tables = {c.name: history_table(train[c.of[0]], train[c.of[1]], vocabs[c.of[0]].size)
              for c in data.inputs if c.kind == HISTORY}
    # export's parity check takes a few raw rows: the validation rows', else (valid = none) the first training rows
    head = None if validates(data.valid) else {name: values[:RAW_HEAD].copy() for name, values in raw_train.items()}
    pairs = None
    if data.per_user:  # an example is a user: its items are the target
        pairs, train = train, user_rows(data, train)
    return Prepared(train, valid, vocabs, raw_valid, path, stats, head, tables, pairs, sides)


def _encoded(data: DataSpec, col: Column, raw_train: dict, raw_valid: dict, vocabs: dict,
             path: str) -> tuple[np.ndarray, np.ndarray]:
    """A column's training and validation arrays as the model takes them (a category's vocabulary, fitted on
    the training rows, put in `vocabs`)."""
    if col.kind == IMPLICIT:
        return tuple(np.ones(len(raw[data.feedback.user]), np.float32) for raw in (raw_train, raw_valid))
    if col.kind == CATEGORY:
        is_target = col is data.target
        vocabs[col.name] = vocab = Vocab.fit(col.name, raw_train[col.name], unknown=not is_target)
        train, valid = vocab.lookup(raw_train[col.name]), vocab.lookup(raw_valid[col.name])
        if is_target and (valid < 0).any():
            k = int(np.argmax(valid < 0))
            raise DataError(path, f"validation row {k + 1}: class '{raw_valid[col.name][k]}' never "
                            f"appears in the training rows (classes: {', '.join(vocab.values[:20])})",
                            column=col.name, code=codes.UNKNOWN_CLASS)
        return train, valid
    if col.kind == CATEGORIES:  # a vocabulary of the ids of the training rows' sets; rows padded with 0
        from specc.data.sets import encode_sets

        vocabs[col.name] = vocab = fit_set_vocab(col.name, raw_train[col.name], path)
        return encode_sets(vocab, raw_train[col.name]), encode_sets(vocab, raw_valid[col.name])
    if col.kind == FLOAT:
        return tuple(np.ascontiguousarray(raw[col.name], dtype=np.float32) for raw in (raw_train, raw_valid))
    raise KeyError(f"no preparing of a {col.kind} column")  # a bug: a kind prepare lacks


def _side_column(col: Column, side: SideColumn, raw_train: dict, raw_valid: dict, vocabs: dict) -> SideColumn:
    """A side table's column as the model takes it: a category's values its vocabulary indices, the vocabulary
    fitted on the training rows' values (a key the table lacks, with no fill, the unknown category); a set's the
    indices of its ids known to the training rows' sets, padded with 0 (as a categories input's are)."""
    if col.kind == CATEGORIES:
        from specc.data.sets import encode_sets

        vocabs[col.name] = vocab = fit_set_vocab(col.name, side.of(raw_train[side.key]), side.path)
        return dataclasses.replace(side, values=encode_sets(vocab, side.values))
    if col.kind != CATEGORY:
        return side
    values = side.of(raw_train[side.key])
    given = np.array([v is not None for v in values], dtype=bool)
    vocabs[col.name] = vocab = Vocab.fit(col.name, values[given].astype(str))
    return encoded(side, vocab)


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


def user_rows(data: DataSpec, pairs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The training rows of implicit feedback of users: each user of the training interactions once, in
    vocabulary order, with the user's side table columns (their items, the target, are looked up from the
    interactions while training)."""
    feedback = data.feedback
    users, first = np.unique(pairs[feedback.user], return_index=True)
    keyed = {c.name for c in data.inputs if c.table is not None and data.table(c.table).key == feedback.user}
    rows = {name: values[first] for name, values in pairs.items() if name in keyed}
    return {feedback.user: users, **rows, data.target.name: np.ones(len(users), np.float32)}


def _with_made_from(data: DataSpec, inputs: tuple[Column, ...]) -> tuple[Column, ...]:
    """The inputs, and the key and item columns of every history column (its table is made of them), and the
    key of every side table column among them (each row's is looked up by it)."""
    named = {c.name for c in inputs}
    needed = {name for c in data.inputs if c.kind == HISTORY for name in c.of} | \
        {data.table(c.table).key for c in inputs if c.table is not None}
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
