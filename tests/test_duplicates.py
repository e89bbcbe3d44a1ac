"""specc.data.duplicates: groups of equal rows, against a dictionary of each row's bytes (the oracle), with
rows made to share a hash while they differ."""

from __future__ import annotations

import numpy as np

from specc.data.duplicates import equal_rows, row_hashes


def _by_bytes(array: np.ndarray) -> list[list[int]]:
    groups: dict[bytes, list[int]] = {}
    for k, row in enumerate(array.reshape(len(array), -1)):
        groups.setdefault(row.tobytes(), []).append(k)
    return sorted(g for g in groups.values() if len(g) > 1)


def test_equal_rows_are_grouped_as_their_bytes_group_them():
    rng = np.random.default_rng(0)
    for shape in [(300, 1, 5, 7), (300, 3, 4, 4), (300, 1), (5, 0)]:  # 35 bytes: padded to whole words
        pixels = rng.integers(0, 3 if shape[-1] == 1 else 256, size=shape, dtype=np.uint8)
        if len(pixels) > 20:
            pixels[[4, 9, 200]] = pixels[17]
        assert [g.tolist() for g in equal_rows(pixels)] == _by_bytes(pixels)
    assert equal_rows(np.zeros((1, 4), np.uint8)) == [] and equal_rows(np.zeros((0, 4), np.uint8)) == []


def test_rows_of_one_hash_that_differ_are_not_grouped():
    """The hash is a sum of each 8-byte word times an odd key, modulo 2**64: moving one word and making up
    for it in the next gives another row of the same hash, which the whole comparison keeps apart."""
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, size=(3, 24), dtype=np.uint8)
    keys = np.random.default_rng(0).integers(1, 1 << 63, size=3, dtype=np.uint64) | np.uint64(1)
    words = rows.view(np.uint64).copy()  # (3, 3)
    k0, k1 = int(keys[0]), int(keys[1])
    shift = 12345
    words[1] = words[0]
    words[1, 0] = (int(words[0, 0]) + shift * k1) % (1 << 64)
    words[1, 1] = (int(words[0, 1]) - shift * k0) % (1 << 64)
    words[2] = words[0]
    same = words.view(np.uint8)
    hashes = row_hashes(same)
    assert hashes[0] == hashes[1] == hashes[2] and not np.array_equal(same[0], same[1])
    assert [g.tolist() for g in equal_rows(same)] == [[0, 2]]
