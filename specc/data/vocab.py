"""A category column's vocabulary: the values seen in training, each an index of the model's (0: unknown)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from specc.data.arrays import INT64_MAX, INT64_MIN


def as_int(text: str) -> int | None:
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
        ints = [as_int(str(v)) for v in uniques]
        if all(i is not None for i in ints):
            # Whole-number ids: one category per number ("07" and "7" are the same id), in numeric order.
            merged: dict[int, int] = {}
            for i, c in zip(ints, counts):
                merged[i] = merged.get(i, 0) + int(c)
            keys = sorted(merged)
            return Vocab(column, tuple(str(k) for k in keys), tuple(merged[k] for k in keys), True, unknown)
        return Vocab(column, tuple(str(v) for v in uniques), tuple(int(c) for c in counts), False, unknown)

    def raw_values(self) -> np.ndarray:
        """The categories as the data has them, in index order (index k + 1's at k for an input): int64 for
        whole-number ids (Vocab.integer), else text (an object array), the dtypes of the exported model's ids."""
        if self.integer:
            return np.array([int(v) for v in self.values], dtype=np.int64)
        return np.array(self.values, dtype=object)

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
            keys = [(as_int(v) if isinstance(v, str) else int(v)) for v in uniques]
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
