"""Set columns (`tags: categories(sep="|")`): each reader's values (a text field, a list, a padded array
row) -> one tuple of ids per row; prepare's vocabulary and [rows, longest set] index matrix of them; and
the (N, L) padded ids an exported model takes (specc.inference.columns.padded_sets makes them)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from specc.language import codes
from specc.language.diagnostics import DataError
from specc.language.spec import SET_PAD_ID, SET_PAD_TEXT, Column

# (row, message, code) -> the error at that row of the file, as the reader places it
At = Callable[[int, str, codes.Code], DataError]


def sets_array(sets) -> np.ndarray:
    """Sets (tuples of ids) as a 1-D object array, one set a row (numpy would make sets of one size a 2-D array)."""
    out = np.empty(len(sets), dtype=object)
    for k, items in enumerate(sets):
        out[k] = tuple(items)
    return out


def from_padded(arr: np.ndarray) -> np.ndarray:
    """A 2-D array of ids padded with SET_PAD_ID (integers) or SET_PAD_TEXT (text) as sets: each row's other values."""
    pad = SET_PAD_ID if arr.dtype.kind in "iu" else SET_PAD_TEXT
    values = arr.tolist() if arr.dtype.kind in "iu" else arr.astype(str).tolist()
    return sets_array([tuple(v for v in row if v != pad) for row in values])


def split_texts(texts, sep: str, strip: bool = False) -> np.ndarray:
    """Text fields as sets: each split at `sep`, an empty id dropped (an empty field, or one of separators
    alone, is the empty set); with `strip`, spaces around each id removed first."""
    out = np.empty(len(texts), dtype=object)
    for k, text in enumerate(texts):
        items = text.split(sep)
        if strip:
            items = [i.strip() for i in items]
        out[k] = tuple(i for i in items if i)
    return out


def check_sizes(sets: np.ndarray, col: Column, at: At) -> None:
    """Every row's set holds at most the column's max_size distinct ids (a padded matrix as wide as the
    largest set is what the model takes: one huge row would make every row that wide)."""
    for k, items in enumerate(sets):
        if len(items) > col.max_size and len(set(items)) > col.max_size:
            raise at(k, f"a set of {len(set(items)):,} distinct ids, more than the column's max_size "
                        f"({col.max_size:,}); raise it with categories(max_size=...) if the data means it",
                     codes.TOO_LARGE_SET)


def flat_distinct(sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct ids, all rows one after another, and the row each came from."""
    rows, ids = [], []
    for k, items in enumerate(sets):
        distinct = list(dict.fromkeys(items))
        ids += distinct
        rows += [k] * len(distinct)
    values = np.asarray(ids) if ids and all(isinstance(i, (int, np.integer)) for i in ids) else \
        np.asarray(ids, dtype=object)
    return values, np.asarray(rows, dtype=np.int64)


def encode_sets(vocab, sets: np.ndarray) -> np.ndarray:
    """Each row's distinct known ids as vocabulary indices, in index order, padded with 0 (the unknown id, which
    the bag skips) to the longest: int64 [rows, at least 1]."""
    ids, rows = flat_distinct(sets)
    index = vocab.lookup(ids) if len(ids) else np.zeros(0, np.int64)
    keep = index > 0  # an id never seen in training is dropped, as padding is
    rows, index = rows[keep], index[keep]
    order = np.lexsort((index, rows))
    rows, index = rows[order], index[order]
    counts = np.bincount(rows, minlength=len(sets))
    out = np.zeros((len(sets), max(1, int(counts.max(initial=0)))), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out[rows, np.arange(len(rows)) - starts[rows]] = index
    return out
