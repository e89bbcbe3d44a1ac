"""Ranking metrics of a recommender: each validation user's top-K items and relevant items -> a hit
matrix -> per-user values at a cutoff k -> their means, keyed "name@k". The definitions are RecBole's
full-ranking ones (docs/ranking-metrics.md); numpy only, so importing this never imports torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


# --------------------------------------------------------------------------- which ranked items hit


def hits(top: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether the item at each rank is relevant to its user: bool (U, K), from the top-K item ids
    (U, K), best first, and the relevant items in CSR form (user u's are items[indptr[u]:indptr[u+1]])."""
    top, indptr, items = _checked_csr(top, indptr, items)
    # Item ids may be as large as int64 allows, so user * n_items + item could overflow: number the
    # distinct relevant items 0..m-1 instead and key each (user, item) pair as user * m + number.
    known = np.unique(items)
    width = max(known.size, 1)
    owner = np.repeat(np.arange(top.shape[0], dtype=np.int64), np.diff(indptr))
    pairs = np.unique(owner * width + np.searchsorted(known, items))
    number, is_known = _lookup(known, top)
    users = np.arange(top.shape[0], dtype=np.int64)[:, None]
    _, is_pair = _lookup(pairs, users * width + number)
    return is_known & is_pair


def _lookup(table: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each query stands in the sorted `table` (an index into it) and whether it is there."""
    if table.size == 0:
        return np.zeros(queries.shape, np.int64), np.zeros(queries.shape, bool)
    at = np.minimum(np.searchsorted(table, queries), table.size - 1)
    return at, table[at] == queries


def _checked_csr(top, indptr, items) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three arrays as int64, after checking that top is (U, K) and indptr/items a CSR of U rows."""
    top, indptr, items = (np.asarray(a, dtype=np.int64) for a in (top, indptr, items))
    if top.ndim != 2:
        raise ValueError(f"expected top of shape (users, k), got shape {top.shape}")
    if indptr.shape != (top.shape[0] + 1,) or items.ndim != 1:
        raise ValueError(f"expected indptr of shape ({top.shape[0] + 1},) and 1-d items for {top.shape[0]} "
                         f"users, got shapes {indptr.shape} and {items.shape}")
    if indptr[0] != 0 or indptr[-1] != items.size or np.any(np.diff(indptr) < 0):
        raise ValueError(f"indptr must rise from 0 to len(items) = {items.size}")
    return top, indptr, items


# --------------------------------------------------------------------------- per-user values at k
# Each takes hit: bool (U, K') from hits(), n_relevant: int (U,), the user's number of relevant items,
# and a cutoff 1 <= k <= K'; it returns float64 (U,). A user with no relevant item gets 0 (never NaN):
# ranking_scores leaves such users out of its means.


def hit_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """1 where any of the user's top k items is relevant, else 0."""
    top_k, _ = _cut(hit, n_relevant, k)
    return top_k.any(axis=1).astype(np.float64)


def precision_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """The share of the user's top k items that are relevant: #relevant in the top k / k."""
    top_k, _ = _cut(hit, n_relevant, k)
    return top_k.sum(axis=1) / k


def recall_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """The share of the user's relevant items in the top k: #relevant in the top k / n_relevant.

    As in RecBole the denominator is n_relevant, not min(n_relevant, k): a user with more relevant
    items than k cannot reach 1."""
    top_k, n = _cut(hit, n_relevant, k)
    return _ratio(top_k.sum(axis=1), n)


def mrr_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """1 / the rank of the user's first relevant item in the top k, 0 if there is none."""
    top_k, _ = _cut(hit, n_relevant, k)
    first = top_k.argmax(axis=1)  # the first True of each row; 0 for a row without one
    return np.where(top_k.any(axis=1), 1.0 / (first + 1), 0.0)


def ndcg_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """DCG@k / IDCG@k: hits discounted by 1/log2(rank + 1), over the same sum for a list whose first
    min(n_relevant, k) items are all relevant."""
    top_k, n = _cut(hit, n_relevant, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = np.where(top_k, discount, 0.0).sum(axis=1)
    ideal = np.concatenate(([0.0], np.cumsum(discount)))  # ideal[j]: DCG of j relevant items at the top
    return _ratio(dcg, ideal[np.minimum(n, k)])


def map_at(hit: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """RecBole's average precision at k: precision@i summed over the ranks i <= k that hold a relevant
    item, divided by min(n_relevant, k)."""
    top_k, n = _cut(hit, n_relevant, k)
    precision = np.cumsum(top_k, axis=1) / np.arange(1, k + 1)
    return _ratio(np.where(top_k, precision, 0.0).sum(axis=1), np.minimum(n, k))


def _cut(hit, n_relevant, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k columns of `hit`, and n_relevant as int64, after checking shapes and 1 <= k <= K'."""
    hit = np.asarray(hit, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if hit.ndim != 2 or n_relevant.shape != (hit.shape[0],):
        raise ValueError(f"expected hit of shape (users, k) and n_relevant of shape (users,), "
                         f"got shapes {hit.shape} and {n_relevant.shape}")
    if not 1 <= k <= hit.shape[1]:
        raise ValueError(f"cutoff k = {k} is outside 1..{hit.shape[1]}, the length of the ranked lists")
    return hit[:, :k], n_relevant


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, 0 where den is 0 (a user with no relevant item)."""
    out = np.zeros(num.shape, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------- the table and the means

RankingFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

# Every ranking metric by the name a run reports it under.
RANKING: dict[str, RankingFn] = {
    "ndcg": ndcg_at,
    "recall": recall_at,
    "hit": hit_at,
    "precision": precision_at,
    "mrr": mrr_at,
    "map": map_at,
}


def ranking_scores(top: np.ndarray, indptr: np.ndarray, items: np.ndarray,
                   wanted: list[tuple[str, int]]) -> dict[str, float]:
    """Each wanted (name, k) averaged over the users with at least one relevant item, keyed "name@k".

    A user's relevant items are taken to be distinct (their count is indptr[u+1] - indptr[u]). Users
    with no relevant item are skipped, so no mean is NaN; ValueError if no user has one, for an
    unknown name, or for a k longer than the ranked lists."""
    unknown = sorted({name for name, _ in wanted} - RANKING.keys())
    if unknown:
        raise ValueError(f"unknown ranking metric '{unknown[0]}': expected one of {', '.join(sorted(RANKING))}")
    hit = hits(top, indptr, items)
    n_relevant = np.diff(np.asarray(indptr, dtype=np.int64))
    scored = n_relevant > 0
    if not scored.any():
        raise ValueError("no user has a relevant item: the ranking metrics have nothing to average")
    hit, n_relevant = hit[scored], n_relevant[scored]
    return {f"{name}@{k}": float(  # the key specc.training.losses.metric_key gives
        RANKING[name](hit, n_relevant, k).mean()) for name, k in wanted}
