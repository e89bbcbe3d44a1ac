"""Rows of an array -> the groups of rows that are equal, number for number (an image folder's decoded
pixels: the same picture in two classes, or in the training and the validation images).

Each row is hashed to 64 bits (its bytes as words, each times a fixed odd number, summed modulo 2**64:
equal rows always hash alike), and rows of one hash are then compared whole, so a group never holds two
rows that differ."""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 1 << 24  # rows hashed at once: a copy of this size at most (padded to whole words)


def row_hashes(flat: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of a 2-d array, from its bytes."""
    rows = np.ascontiguousarray(flat).reshape(len(flat), -1).view(np.uint8) if len(flat) else \
        np.zeros((0, 0), np.uint8)
    n, width = rows.shape
    words = -(-width // 8)
    keys = np.random.default_rng(0).integers(1, 1 << 63, size=words, dtype=np.uint64) | np.uint64(1)
    out = np.zeros(n, dtype=np.uint64)
    step = max(1, CHUNK_BYTES // max(width, 1))
    for s in range(0, n, step):
        part = rows[s:s + step]
        if width % 8:
            part = np.pad(part, ((0, 0), (0, -width % 8)))
        with np.errstate(over="ignore"):  # the products and their sum wrap around, as they should
            out[s:s + step] = (np.ascontiguousarray(part).view(np.uint64) * keys).sum(axis=1, dtype=np.uint64)
    return out


def equal_rows(array: np.ndarray) -> list[np.ndarray]:
    """The groups of two or more rows of `array` (its first axis) that are equal, each its row indices in
    order, the groups in the order of their first rows."""
    if len(array) < 2:
        return []
    flat = np.ascontiguousarray(array).reshape(len(array), -1)
    hashes = row_hashes(flat)
    order = np.argsort(hashes, kind="stable")
    starts = np.flatnonzero(np.concatenate([[True], hashes[order][1:] != hashes[order][:-1]]))
    sizes = np.diff(np.append(starts, len(order)))
    groups = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        alike: dict[bytes, list[int]] = {}  # one hash's rows, told apart by their bytes
        for row in order[start:start + size]:
            alike.setdefault(flat[row].tobytes(), []).append(int(row))
        groups += [np.array(rows) for rows in alike.values() if len(rows) > 1]
    return sorted(groups, key=lambda g: g[0])
