"""Side tables (`table NAME { ... }` in the data block): each table read whole -> its columns for every
row of the data, taken from the table's row of the row's key, and the per-key arrays the export puts
inside the graph (specc.export.graph), so that the exported model takes only the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from specc.data.read import stacked
from specc.data.sources import source_def
from specc.data.vocab import Vocab, as_int
from specc.language import codes
from specc.language.diagnostics import DataError
from specc.data.sets import sets_array
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Column, DataSpec, NoSplit, SideTable, file_columns

# The table's row of a key it lacks (and of an id never seen): its values are the columns' fills.
NO_ROW = 0


@dataclass(frozen=True)
class SideColumn:
    """One side column, as the model and the export see it: the table's keys (`keys`, a Vocab: index k + 1
    is keys.values[k], 0 a key the table lacks) and the column's value for each (`values`, a row per key
    index, row NO_ROW the fill): floats as read, a category's vocabulary index in the model, or a set's
    indices padded with 0 (specc.data.sets.encode_sets; a key the table lacks, the empty set)."""

    name: str
    table: str
    key: str
    keys: object  # specc.data.prepare.Vocab of the table's keys
    values: np.ndarray
    path: str = ""  # the table's file, where an error in its values is reported

    def of(self, raw_keys) -> np.ndarray:
        """The column's value for each raw key (as the data has them)."""
        return self.values[self.keys.lookup(raw_keys)]

    def by_index(self, vocab) -> np.ndarray:
        """The column's value for each index of the key's vocabulary in the model (`vocab`, whose index 0, an
        id never seen in training, takes the fill: the table's row of no key)."""
        index = np.concatenate([[NO_ROW], self.keys.lookup(vocab.raw_values())])
        return np.ascontiguousarray(self.values[index])


def whole_table(data: DataSpec, table: SideTable, columns: tuple[Column, ...]) -> tuple[DataSpec, tuple[Column, ...]]:
    """The data spec that reads the table whole (its source, no split, the key and `columns` its inputs), and the
    columns those are as the table's file holds them (a float(columns=[...]) vector as its columns)."""
    key = Column(table.key, CATEGORY, table.span)
    whole = dataclasses.replace(data, source=table.source, inputs=(key, *columns), target=None,
                                valid=NoSplit(table.span), feedback=None, keep_classes=(), train_rows=None,
                                augment=None, tables=())
    return whole, file_columns((key, *columns))


def read_table(data: DataSpec, table: SideTable, columns: tuple[Column, ...]) -> tuple[dict[str, np.ndarray], str]:
    """Every row of the table's key and `columns`, as its source reads them (no split), and its path. A float
    may be missing (NaN) where fill_missing fills it, as in the data."""
    whole, read = whole_table(data, table, columns)
    rows, _, path = source_def(table.source.kind).read(whole, read)
    return stacked(rows, whole.inputs), path


def table_keys(table: SideTable, raw_keys: np.ndarray, data_keys, path: str):
    """The table's keys as a vocabulary (no counts worth keeping): each at most once, none missing, whole
    numbers where the data's ids are (the exported model's key input is theirs)."""
    text = np.asarray([str(k) for k in raw_keys], dtype=object)
    blank = np.flatnonzero((text == "") | (text == "nan"))
    if len(blank):
        raise DataError(path, f"table '{table.name}': row {blank[0] + 1} has no key", column=table.key,
                        code=codes.SIDE_TABLE_KEY)
    keys = Vocab.fit(table.key, raw_keys)
    if data_keys.integer and not keys.integer:
        bad = next(k for k in text if as_int(k) is None)  # the vocabulary's own test: whole and in int64's range
        raise DataError(path, f"table '{table.name}': key '{bad}' is not a whole number in int64's range, as the "
                        f"data's '{table.key}' ids are", column=table.key, code=codes.SIDE_TABLE_KEY)
    if not data_keys.integer and keys.integer:  # the data's ids are text: so are the table's
        keys = Vocab(table.key, tuple(sorted(set(text.tolist()))), (), False)
    index = keys.lookup(raw_keys)
    counts = np.bincount(index, minlength=keys.size)
    if (counts > 1).any():
        twice = int(np.argmax(counts > 1))
        rows = np.flatnonzero(index == twice)[:2] + 1
        raise DataError(path, f"table '{table.name}': key '{keys.values[twice - 1]}' is on rows {rows[0]} and "
                        f"{rows[1]}: a table has one row per key", column=table.key, code=codes.SIDE_TABLE_KEY)
    return keys, index


def _some(values, n: int = 3) -> str:
    """The first few values, for a message."""
    return ", ".join(f"'{v}'" for v in values[:n]) + (", ..." if len(values) > n else "")


def side_columns(data: DataSpec, wanted: tuple[Column, ...], data_vocabs: dict) -> dict[str, SideColumn]:
    """The side columns among `wanted`, read from their tables: each a SideColumn whose values are the raw
    ones (a category's text, None for the unknown category; floats as floats), the row of a key the table
    lacks its fill. A row's raw value is then SideColumn.of(its key), encoded as the other columns are."""
    out: dict[str, SideColumn] = {}
    for table in data.tables:
        mine = tuple(col for col in wanted if col.table == table.name)
        if not mine:
            continue
        rows, path = read_table(data, table, mine)
        data_keys = data_vocabs[table.key]
        keys, index = table_keys(table, rows[table.key], data_keys, path)
        if not (keys.lookup(data_keys.raw_values()) > 0).any():
            raise DataError(path, f"table '{table.name}': none of its {keys.size - 1:,} keys ({_some(keys.values)}) "
                            f"is a '{table.key}' of the training rows ({_some(data_keys.values)})", column=table.key,
                            code=codes.SIDE_TABLE_KEY)
        for col in mine:
            fill = table.fill_of(col.name)
            if col.kind == CATEGORY:
                values = np.empty(keys.size, dtype=object)
                values[NO_ROW] = fill  # None: the unknown category
                values[index] = np.asarray([str(v) for v in rows[col.name]], dtype=object)
            elif col.kind == CATEGORIES:  # each key's set of ids as read; a key the table lacks, the empty set
                values = sets_array([()] * keys.size)
                values[index] = rows[col.name]
            elif col.kind == FLOAT:
                values = np.zeros((keys.size, *col.shape), dtype=np.float32)
                values[NO_ROW] = 0.0 if fill is None else fill
                values[index] = rows[col.name]
            else:
                raise KeyError(f"no side table column of kind {col.kind}")  # a bug: a kind the checker lets in
            out[col.name] = SideColumn(col.name, table.name, table.key, keys, values, path)
    return out


def encoded(side: SideColumn, vocab) -> SideColumn:
    """A category side column with its values as the model's vocabulary indices (`vocab`, fitted on the
    training rows; a key the table lacks, with no fill, the unknown category)."""
    values = np.zeros(len(side.values), dtype=np.int64)
    present = np.array([v is not None for v in side.values])
    if present.any():
        values[present] = vocab.lookup(side.values[present].astype(object))
    return dataclasses.replace(side, values=values)
