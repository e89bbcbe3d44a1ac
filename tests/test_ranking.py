"""Ranking metrics (specc.training.ranking): the hit matrix, each metric against numbers worked out by
hand, RecBole's denominators, the users skipped in the means, and a cross-check against plain loops."""

import math
import subprocess
import sys

import numpy as np
import pytest

from specc.training.losses import metric_key
from specc.training.ranking import (RANKING, hit_at, hits, map_at, mrr_at, ndcg_at,
                                    precision_at, ranking_scores, recall_at)

L3 = math.log2(3)  # the discount of rank 2 is 1/log2(3); rank 1's is 1/log2(2) = 1, rank 3's 1/log2(4) = 1/2
L5 = math.log2(5)  # rank 4's discount is 1/log2(5)

# --------------------------------------------------------------------------- the hit matrix


def test_hits_marks_the_relevant_items_of_each_user_only():
    top = np.array([[7, 5, 9], [5, 7, 8]])
    indptr = np.array([0, 1, 3])
    items = np.array([5, 8, 7])  # user 0: {5}; user 1: {8, 7}; 9 is nobody's
    assert hits(top, indptr, items).tolist() == [[False, True, False], [False, True, True]]


def test_hits_handles_item_ids_of_any_int64_size():
    big = [2**40, 2**40 + 1, 2**62, 2**63 - 1, -(2**63)]
    top = np.array([[big[0], big[1], big[2]], [big[3], big[4], big[0]]], dtype=np.int64)
    indptr = np.array([0, 2, 4])
    items = np.array([big[1], big[2], big[4], big[0]], dtype=np.int64)  # user 0: 2**40+1, 2**62; user 1: -2**63, 2**40
    assert hits(top, indptr, items).tolist() == [[False, True, True], [False, True, True]]


def test_hits_of_a_user_without_relevant_items_are_all_false():
    top = np.array([[1, 2], [1, 2], [3, 4]])
    indptr = np.array([0, 0, 1, 1])  # only user 1 has a relevant item
    assert hits(top, indptr, np.array([2])).tolist() == [[False, False], [False, True], [False, False]]
    assert not hits(top, np.zeros(4, np.int64), np.array([], np.int64)).any()


@pytest.mark.parametrize("indptr,items", [([0, 1], [3]), ([0, 2, 1], [3, 4]), ([0, 1, 3], [3, 4]), ([1, 1, 2], [3, 4])])
def test_hits_refuses_a_bad_csr(indptr, items):
    with pytest.raises(ValueError):
        hits(np.array([[3, 4], [4, 3]]), np.array(indptr), np.array(items))


# --------------------------------------------------------------------------- each metric by hand

# Six users ranked to depth 4. Most expectations are at k = 3, so rank 4 must be ignored (user B).
HIT = np.array([
    [1, 0, 1, 0],  # A: hits at ranks 1 and 3, 2 relevant (fewer than k)
    [0, 0, 0, 1],  # B: no hit in the top 3, one at rank 4, 3 relevant
    [1, 1, 1, 0],  # C: all of the top 3 hit, 5 relevant (more than k)
    [0, 1, 0, 0],  # D: a hit at rank 2, 4 relevant (more than k)
    [0, 0, 1, 0],  # E: a hit at rank 3, 1 relevant
    [0, 0, 0, 0],  # F: no relevant item at all
], dtype=bool)
N_RELEVANT = np.array([2, 3, 5, 4, 1, 0])
IDCG3 = 1 + 1 / L3 + 1 / 2  # three relevant items in ranks 1..3

AT_3 = {  # users A..F at k = 3
    "hit": [1, 0, 1, 1, 1, 0],
    "precision": [2 / 3, 0, 3 / 3, 1 / 3, 1 / 3, 0],
    # recall divides by n_relevant, not min(n_relevant, k): C finds 3 of 5, D 1 of 4
    "recall": [2 / 2, 0, 3 / 5, 1 / 4, 1 / 1, 0],
    "mrr": [1 / 1, 0, 1 / 1, 1 / 2, 1 / 3, 0],
    # A: (1 + 1/2) / (1 + 1/log2 3), IDCG over min(2, 3) = 2 ranks; C: IDCG over min(5, 3) = 3 ranks
    # equals its DCG; D: (1/log2 3) / IDCG3; E: (1/2) / 1, IDCG over min(1, 3) = 1 rank
    "ndcg": [(1 + 1 / 2) / (1 + 1 / L3), 0, 1, (1 / L3) / IDCG3, (1 / 2) / 1, 0],
    # A: (P@1 + P@3) / min(2, 3) = (1 + 2/3) / 2; C: (1 + 1 + 1) / min(5, 3); D: P@2 / min(4, 3) = (1/2) / 3;
    # E: P@3 / min(1, 3) = (1/3) / 1
    "map": [(1 + 2 / 3) / 2, 0, 3 / 3, (1 / 2) / 3, (1 / 3) / 1, 0],
}

B_AT_4 = {  # user B at k = 4: its one hit at rank 4, 3 relevant
    "hit": 1,
    "precision": 1 / 4,
    "recall": 1 / 3,
    "mrr": 1 / 4,
    "ndcg": (1 / L5) / IDCG3,  # IDCG over min(3, 4) = 3 ranks
    "map": (1 / 4) / 3,  # P@4 / min(3, 4)
}


def test_the_table_names_every_metric_once():
    assert sorted(RANKING) == sorted(AT_3) == sorted(B_AT_4)
    assert RANKING == {"ndcg": ndcg_at, "recall": recall_at, "hit": hit_at, "precision": precision_at,
                       "mrr": mrr_at, "map": map_at}


@pytest.mark.filterwarnings("error")  # user F (no relevant item) must not divide by zero
@pytest.mark.parametrize("name", sorted(AT_3))
def test_metric_at_3_matches_the_hand_computed_values(name):
    got = RANKING[name](HIT, N_RELEVANT, 3)
    assert got.dtype == np.float64 and got.shape == (6,)
    assert got.tolist() == pytest.approx(AT_3[name], abs=1e-12)


@pytest.mark.parametrize("name", sorted(B_AT_4))
def test_metric_at_4_sees_the_fourth_rank(name):
    assert RANKING[name](HIT, N_RELEVANT, 4)[1] == pytest.approx(B_AT_4[name], abs=1e-12)


def test_map_and_ndcg_cap_their_denominator_at_k_but_recall_does_not():
    one_hit = np.array([[True, False]])
    many = np.array([10])  # 10 relevant items, k = 2
    assert map_at(one_hit, many, 2)[0] == pytest.approx(1 / 2)  # P@1 / min(10, 2)
    assert ndcg_at(one_hit, many, 2)[0] == pytest.approx(1 / (1 + 1 / L3))
    assert recall_at(one_hit, many, 2)[0] == pytest.approx(1 / 10)


def test_all_hits_and_no_hits_at_the_extremes():
    all_hits, no_hits = np.ones((1, 5), bool), np.zeros((1, 5), bool)
    for name, fn in RANKING.items():
        assert fn(all_hits, np.array([5]), 5)[0] == pytest.approx(1.0), name
        assert fn(no_hits, np.array([5]), 5)[0] == 0.0, name


@pytest.mark.parametrize("name", sorted(RANKING))
@pytest.mark.parametrize("k", [0, 5])
def test_a_cutoff_outside_the_ranked_lists_is_refused(name, k):
    with pytest.raises(ValueError, match="cutoff k"):
        RANKING[name](HIT, N_RELEVANT, k)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        ndcg_at(HIT, N_RELEVANT[:5], 3)


# --------------------------------------------------------------------------- the means


def test_metric_key():
    assert metric_key("ndcg", 10) == "ndcg@10"


def test_ranking_scores_skips_users_without_relevant_items():
    top = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    indptr = np.array([0, 2, 2, 3])  # user 0: {1, 3}; user 1: none; user 2: {8}
    items = np.array([3, 1, 8])
    got = ranking_scores(top, indptr, items, [("ndcg", 3), ("recall", 2), ("mrr", 3), ("hit", 1)])
    assert list(got) == ["ndcg@3", "recall@2", "mrr@3", "hit@1"]
    # user 0: hits at ranks 1, 3, 2 relevant; user 2: a hit at rank 2, 1 relevant. User 1 is left out
    # (counting it as 0 would divide each sum by 3 instead of 2).
    assert got["ndcg@3"] == pytest.approx(((1 + 1 / 2) / (1 + 1 / L3) + (1 / L3) / 1) / 2)
    assert got["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert got["mrr@3"] == pytest.approx((1 + 1 / 2) / 2)
    assert got["hit@1"] == pytest.approx((1 + 0) / 2)
    assert all(type(v) is float for v in got.values())


def test_ranking_scores_refusals():
    top, indptr, items = np.array([[1, 2]]), np.array([0, 1]), np.array([2])
    with pytest.raises(ValueError, match="unknown ranking metric 'ndgc'"):
        ranking_scores(top, indptr, items, [("ndcg", 1), ("ndgc", 1)])
    with pytest.raises(ValueError, match="cutoff k"):
        ranking_scores(top, indptr, items, [("ndcg", 3)])
    with pytest.raises(ValueError, match="no user has a relevant item"):
        ranking_scores(top, np.array([0, 0]), np.array([], np.int64), [("ndcg", 1)])


# --------------------------------------------------------------------------- against plain loops


def _loop_hit(rel, n, k):
    return float(any(rel[:k]))


def _loop_precision(rel, n, k):
    return sum(rel[:k]) / k


def _loop_recall(rel, n, k):
    return sum(rel[:k]) / n


def _loop_mrr(rel, n, k):
    for i in range(k):
        if rel[i]:
            return 1 / (i + 1)
    return 0.0


def _loop_ndcg(rel, n, k):
    dcg = sum(1 / math.log2(i + 2) for i in range(k) if rel[i])
    idcg = sum(1 / math.log2(i + 2) for i in range(min(n, k)))
    return dcg / idcg


def _loop_map(rel, n, k):
    total, found = 0.0, 0
    for i in range(k):
        if rel[i]:
            found += 1
            total += found / (i + 1)
    return total / min(n, k)


LOOPS = {"hit": _loop_hit, "precision": _loop_precision, "recall": _loop_recall, "mrr": _loop_mrr,
         "ndcg": _loop_ndcg, "map": _loop_map}


def _random_ranking(seed):
    """Random top-10 lists and relevant sets over 25 large item ids; some users have none relevant."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(2**62, size=25, replace=False)
    top = np.stack([rng.choice(pool, size=10, replace=False) for _ in range(40)])
    relevant = [rng.choice(pool, size=rng.integers(0, 9), replace=False) for _ in range(40)]
    indptr = np.concatenate(([0], np.cumsum([len(r) for r in relevant])))
    return top, indptr, np.concatenate(relevant).astype(np.int64), relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_matches_plain_loops_on_random_rankings(seed):
    top, indptr, items, relevant = _random_ranking(seed)
    rel = [[int(item) in set(r.tolist()) for item in row.tolist()] for row, r in zip(top, relevant)]
    assert hits(top, indptr, items).tolist() == rel
    users = [u for u in range(len(rel)) if len(relevant[u]) > 0]
    assert 0 < len(users) < len(rel)  # the means must skip someone
    wanted = [(name, k) for name in LOOPS for k in (1, 3, 10)]
    got = ranking_scores(top, indptr, items, wanted)
    for name, k in wanted:
        per_user = [LOOPS[name](rel[u], len(relevant[u]), k) for u in users]
        assert got[metric_key(name, k)] == pytest.approx(sum(per_user) / len(users), abs=1e-12), (name, k)
        values = RANKING[name](np.array(rel), np.diff(indptr), k)[users]
        assert values.tolist() == pytest.approx(per_user, abs=1e-12), (name, k)


def test_importing_the_metrics_does_not_import_torch():
    code = "import sys, specc.training.ranking; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
