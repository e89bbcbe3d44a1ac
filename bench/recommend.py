"""Benchmark: implicit-feedback recommenders on one split, the peers' side (specc's is added later).

Every peer (popularity, cornac's BPR and EASE, implicit's ALS and BPR on the CPU) trains on the same
interactions and is evaluated the same way: for each user with a held-out item, every item is scored,
the user's training items are masked out, the top 10 are taken and compared with the held-out items
(binary relevance) by specc.training.ranking.ranking_scores: NDCG@10 and Recall@10. Usage (from any
directory; the peers come with `pip install -e '.[bench]'`):

    python bench/recommend.py                          # specs/data/interactions.csv, 20% of each user held out
    python bench/recommend.py --data ratings.csv       # any `user,item[,...]` CSV, every row an interaction
    python bench/recommend.py --train u1.base --test u1.test --sep '\\t' --no-header   # a given split
    python bench/recommend.py --peers popularity "implicit ALS" --json out.json
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyarrow import csv
from threadpoolctl import threadpool_limits

from common import print_table, write_json
from specc.training.ranking import ranking_scores

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "specs" / "data" / "interactions.csv"
SEED = 0         # the split's and every peer's seed
FRACTION = 0.2   # of each user's interactions held out by the default split
K = 10           # the cutoff of NDCG and Recall
USER_CHUNK = 1024  # users scored at a time: a (chunk, items) float64 matrix


# --------------------------------------------------------------------------- data and split

@dataclass(frozen=True, slots=True)
class Split:
    """Binary user x item matrices (CSR, float32) over one numbering of users and items, the raw ids
    behind each index, and how many test rows were left out (user or item unseen in training, or
    a pair already in training)."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    dropped: int


def read_pairs(path: Path, sep: str, header: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first two columns of a CSV (user, item) as string arrays; further columns are ignored."""
    table = csv.read_csv(path, read_options=csv.ReadOptions(autogenerate_column_names=not header),
                         parse_options=csv.ParseOptions(delimiter=sep))
    if table.num_columns < 2:
        raise ValueError(f"{path}: expected at least two columns (user, item), found {table.num_columns}")
    return tuple(np.asarray(table.column(c).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=str)
                 for c in (0, 1))


def per_user_split(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A bool mask of the rows held out: round(fraction * n) of each user's n rows, drawn at random."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))  # each user's rows together, in random order
    _, first, counts = np.unique(users[order], return_index=True, return_counts=True)
    rank = np.arange(len(users)) - np.repeat(first, counts)  # position within the user's shuffled rows
    held = np.floor(fraction * counts + 0.5).astype(np.int64)  # round half up: 5 rows at 0.2 -> 1
    test = np.zeros(len(users), bool)
    test[order] = rank < np.repeat(held, counts)
    return test


def make_split(train_pairs, test_pairs) -> Split:
    """Number the training users and items, and build both matrices over that numbering."""
    user_ids, u = np.unique(train_pairs[0], return_inverse=True)
    item_ids, i = np.unique(train_pairs[1], return_inverse=True)
    shape = (len(user_ids), len(item_ids))
    train = _binary(u, i, shape)
    tu, tu_ok = _index(user_ids, test_pairs[0])
    ti, ti_ok = _index(item_ids, test_pairs[1])
    keep = tu_ok & ti_ok
    keep[keep] = ~np.asarray(train[tu[keep], ti[keep]]).ravel().astype(bool)  # pairs seen in training
    test = _binary(tu[keep], ti[keep], shape)
    return Split(train, test, user_ids, item_ids, len(keep) - int(keep.sum()))


def _index(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's index in the sorted `ids` and whether it is there."""
    at = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return at, ids[at] == values


def _binary(rows: np.ndarray, cols: np.ndarray, shape) -> sp.csr_matrix:
    """A 0/1 CSR matrix with a one at each (row, col); repeated pairs count once."""
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def load_split(args) -> tuple[Split, str]:
    """The split the command line asks for, and a line that says what it is."""
    sep, header = args.sep, not args.no_header
    if args.train:
        split = make_split(read_pairs(args.train, sep, header), read_pairs(args.test, sep, header))
        return split, f"train {args.train}, test {args.test}"
    users, items = read_pairs(args.data, sep, header)
    test = per_user_split(users, FRACTION, SEED)
    split = make_split((users[~test], items[~test]), (users[test], items[test]))
    return split, f"{args.data}, {FRACTION:.0%} of each user's interactions held out at random (seed {SEED})"


# --------------------------------------------------------------------------- evaluation


def score(top: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> dict[str, float]:
    """NDCG@K and Recall@K of top-K lists against CSR relevance, by specc's own ranking metrics."""
    return ranking_scores(top, indptr, items, [("ndcg", K), ("recall", K)])


def top_items(scorer, split: Split, users: np.ndarray) -> np.ndarray:
    """Each user's K best items, best first (ties to the lower index), never one of their training
    items. Every item has training interactions: make_split numbers only those."""
    tops = []
    for s in range(0, len(users), USER_CHUNK):
        chunk = users[s:s + USER_CHUNK]
        scores = np.array(scorer(chunk), dtype=np.float64)  # a copy: the masking below writes into it
        seen = split.train[chunk]
        scores[np.repeat(np.arange(len(chunk)), np.diff(seen.indptr)), seen.indices] = -np.inf
        tops.append(np.argsort(-scores, axis=1, kind="stable")[:, :K])
    return np.concatenate(tops).astype(np.int64)


def evaluate(scorer, split: Split) -> dict[str, float]:
    """score() over the users with at least one test item."""
    users = np.flatnonzero(np.diff(split.test.indptr))
    relevant = split.test[users]
    return score(top_items(scorer, split, users), relevant.indptr, relevant.indices)


# --------------------------------------------------------------------------- the peers
# Each fit takes the training matrix (users x items, CSR of ones) and the thread count, and returns
# a scorer: user indices (n,) -> scores (n, items), higher is better, in make_split's numbering.


def fit_popularity(train: sp.csr_matrix, threads: int):
    """Every user gets the items by their number of training interactions."""
    counts = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def _cornac_fit(model, train: sp.csr_matrix):
    """Fit a cornac model on `train`; a scorer that maps between cornac's numbering and ours."""
    import cornac

    coo = train.tocoo()
    triples = list(zip(coo.row.astype(str), coo.col.astype(str), coo.data.astype(float)))
    dataset = cornac.data.Dataset.from_uir(triples, seed=SEED)
    model.fit(dataset)
    to_user = np.array([dataset.uid_map[str(u)] for u in range(train.shape[0])])
    to_item = np.array([dataset.iid_map[str(i)] for i in range(train.shape[1])])

    def scorer(users):
        return np.stack([np.asarray(model.score(int(u))).ravel() for u in to_user[users]])[:, to_item]
    return scorer


def fit_cornac_bpr(train: sp.csr_matrix, threads: int):
    """cornac's BPR (matrix factorisation with item biases, SGD on sampled pairs)."""
    from cornac.models import BPR

    return _cornac_fit(BPR(**SETTINGS["cornac BPR"], num_threads=threads, seed=SEED), train)


def fit_cornac_ease(train: sp.csr_matrix, threads: int):
    """cornac's EASE (a closed-form item-item model; its BLAS runs on `threads` threads)."""
    from cornac.models import EASE

    return _cornac_fit(EASE(**SETTINGS["cornac EASE"], verbose=False, seed=SEED), train)


def _implicit_fit(model, train: sp.csr_matrix):
    """Fit an implicit model on `train` (users x items); a scorer from its factors."""
    # implicit parallelises itself (num_threads) and asks for a single-threaded BLAS underneath.
    with threadpool_limits(1, "blas"):
        model.fit(train, show_progress=False)
    user_f, item_f = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda users: user_f[users] @ item_f.T


def fit_implicit_als(train: sp.csr_matrix, threads: int):
    """implicit's ALS (Hu, Koren and Volinsky's weighted matrix factorisation), on the CPU."""
    from implicit.als import AlternatingLeastSquares

    return _implicit_fit(AlternatingLeastSquares(**SETTINGS["implicit ALS"], use_gpu=False, num_threads=threads,
                                                 random_state=SEED), train)


def fit_implicit_bpr(train: sp.csr_matrix, threads: int):
    """implicit's BPR (matrix factorisation with an item bias column), on the CPU."""
    from implicit.bpr import BayesianPersonalizedRanking

    return _implicit_fit(BayesianPersonalizedRanking(**SETTINGS["implicit BPR"], use_gpu=False,
                                                     num_threads=threads, random_state=SEED), train)


def fit_specc(split: Split, threads: int, spec_path: Path) -> dict:
    """A shipped spec trained on the split's training rows, the test rows as its validation file
    (`valid = file(...)`: every training row trains); its row: fit seconds (training's wall time, each
    epoch's full-ranking validation included), and NDCG@K and Recall@K of the exported model's top K
    through onnxruntime alone. Also onnxruntime's top-K rows/s against torch's ranking on the same weights."""
    import tempfile

    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, part in (("train.csv", split.train), ("test.csv", split.test)):
            coo = part.tocoo()
            lines = [f"{split.user_ids[u]},{split.item_ids[i]}" for u, i in zip(coo.row, coo.col)]
            (folder / name).write_text("user,item\n" + "\n".join(lines) + "\n")
        spec, _ = load_spec(spec_path, [f'data.source.path="{folder / "train.csv"}"', f'data.valid=file("{folder / "test.csv"}")'])
        start = time.perf_counter()
        result = train_run(spec, folder / "run", RunOptions("cpu", quiet=True, threads=threads))
        fit_s = time.perf_counter() - start
        top, ort_rate = _onnx_top(folder / "run" / "model.onnx", split, threads)
        torch_rate = _torch_top_rate(spec, result.model, folder / "run", split, threads)
    users = np.flatnonzero(np.diff(split.test.indptr))
    relevant = split.test[users]
    return {"fit_s": fit_s, **score(top[users], relevant.indptr, relevant.indices),
            "onnx_users_per_s": ort_rate, "torch_users_per_s": torch_rate}


def _onnx_top(model: Path, split: Split, threads: int) -> tuple[np.ndarray, float]:
    """Every user's top K through onnxruntime (as bench indices) and the users ranked per second."""
    from specc.inference.recommend import recommend, typed_users
    from specc.inference.session import Session

    session = Session(model, device="cpu", threads=threads)
    ids = typed_users(session, list(split.user_ids), "bench")
    start = time.perf_counter()
    items, _ = recommend(session, ids)  # as `specc recommend` runs it
    rate = len(ids) / (time.perf_counter() - start)
    as_text = items.astype(str)
    at = np.minimum(np.searchsorted(split.item_ids, as_text), len(split.item_ids) - 1)
    return np.where(split.item_ids[at] == as_text, at, -1), rate


def _torch_top_rate(spec, model, run: Path, split: Split, threads: int) -> float:
    """Users ranked per second by torch (specc.training.implicit.ranked) on the same weights."""
    import torch

    from specc.data.prepare import prepare
    from specc.training.implicit import item_scorer, ranked
    from specc.training.loop import interactions_of

    torch.set_num_threads(threads)
    prepared = prepare(spec.data, spec.model.inputs)
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    users = torch.from_numpy(prepared.vocabs["user"].lookup(list(split.user_ids)))
    model = model.cpu().eval()
    with torch.no_grad():
        start = time.perf_counter()
        for s in range(0, len(users), USER_CHUNK):
            ranked(item_scorer(spec, model, inter), inter, users[s:s + USER_CHUNK], spec.data.feedback.top_k)
        return len(users) / (time.perf_counter() - start)


@dataclass(frozen=True, slots=True)
class Peer:
    """A recommender to compare: its name, the package it needs (None: numpy alone) and its fit."""

    name: str
    package: str | None
    fit: object


# The common settings of each peer, for ML-100k-sized data.
SETTINGS = {
    "popularity": {},
    "cornac BPR": {"k": 64, "learning_rate": 0.01, "lambda_reg": 0.01, "max_iter": 200},
    "cornac EASE": {"lamb": 500, "posB": False},
    "implicit ALS": {"factors": 64, "regularization": 0.05, "iterations": 15, "alpha": 1.0},
    "implicit BPR": {"factors": 64, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
    "specc BPR": {"spec": "specs/implicit.spec"},
    "specc Mult-DAE": {"spec": "specs/multdae.spec"},
}
SPECC = {"specc BPR": ROOT / "specs" / "implicit.spec", "specc Mult-DAE": ROOT / "specs" / "multdae.spec"}
PEERS = (
    Peer("popularity", None, fit_popularity),
    Peer("cornac BPR", "cornac", fit_cornac_bpr),
    Peer("cornac EASE", "cornac", fit_cornac_ease),
    Peer("implicit ALS", "implicit", fit_implicit_als),
    Peer("implicit BPR", "implicit", fit_implicit_bpr),
    *(Peer(name, None, fit_specc) for name in SPECC),
)


def run_peer(peer: Peer, split: Split, threads: int) -> dict:
    """Fit and evaluate one peer: its row (skipped, with the reason, where its package is missing)."""
    row = {"peer": peer.name, "settings": SETTINGS[peer.name]}
    if peer.name in SPECC:
        return {**row, **fit_specc(split, threads, SPECC[peer.name])}
    if peer.package and importlib.util.find_spec(peer.package) is None:
        return {**row, "skipped": f"{peer.package} is not installed (pip install -e '.[bench]')"}
    start = time.perf_counter()
    scorer = peer.fit(split.train, threads)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(scorer, split)
    return {**row, "fit_s": fit_s, "eval_s": time.perf_counter() - start, **metrics}


# --------------------------------------------------------------------------- the command line


def versions() -> str:
    """The line of package versions, CPUs and threads."""
    found = []
    for package in ("cornac", "implicit"):
        try:
            found.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            found.append(f"{package} not installed")
    return f"python {platform.python_version()}, numpy {np.__version__}, {', '.join(found)}, {os.cpu_count()} CPUs"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA,
                    help="interactions CSV, user and item first (default specs/data/interactions.csv)")
    ap.add_argument("--train", type=Path, help="a given training file (with --test) instead of --data's split")
    ap.add_argument("--test", type=Path, help="the given test file")
    ap.add_argument("--sep", default=",", help=r"column separator (default ','; '\t' for a tab)")
    ap.add_argument("--no-header", action="store_true", help="the files have no header line")
    ap.add_argument("--peers", nargs="+", choices=[p.name for p in PEERS], default=[p.name for p in PEERS],
                    metavar="PEER", help=f"which peers to run (default all: {', '.join(p.name for p in PEERS)})")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for every peer and numpy's BLAS (default 1: steadier on a small shared machine)")
    ap.add_argument("--json", metavar="PATH", help="save the rows as JSON")
    args = ap.parse_args(argv)
    if (args.train is None) != (args.test is None):
        ap.error("--train and --test go together")
    args.sep = codecs.decode(args.sep, "unicode_escape")
    if len(args.sep) != 1:
        ap.error(f"--sep must be one character, got {args.sep!r}")
    for path in (args.train, args.test) if args.train else (args.data,):
        if not path.is_file():
            ap.error(f"no such file: {path}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threadpool_limits(args.threads)  # numpy's BLAS (EASE's inverse, the scoring products)
    split, source = load_split(args)
    print(f"implicit-feedback recommenders on {source}")
    print(f"{split.train.shape[0]} users, {split.train.shape[1]} items, {split.train.nnz} training and "
          f"{split.test.nnz} test interactions ({split.dropped} test rows left out: unseen in training)")
    print(f"{versions()}, {args.threads} thread(s)")
    rows = []
    for peer in PEERS:
        if peer.name in args.peers:
            rows.append(run_peer(peer, split, args.threads))
            print(f"  {peer.name}: " + (rows[-1].get("skipped") or f"fit {rows[-1]['fit_s']:.2f}s"), flush=True)
    print()
    head = f"{'peer':<14}  {'fit s':>7}  {'NDCG@10':>7}  {'Recall@10':>9}  settings"
    print_table(head, rows, lambda r: (
        f"{r['peer']:<14}  skipped: {r['skipped']}" if "skipped" in r else
        f"{r['peer']:<14}  {r['fit_s']:>7.2f}  {r['ndcg@10']:>7.4f}  {r['recall@10']:>9.4f}  "
        + " ".join(f"{k}={v}" for k, v in r["settings"].items())))
    print()
    print("fit s: wall seconds of the peer's fit alone (its data conversion and the scoring not counted);")
    print("  specc's: `specc train`'s run, its full-ranking validation after every epoch included.")
    for r in rows:
        if "onnx_users_per_s" in r:
            print(f"{r['peer']}: the exported top {K} through onnxruntime: {r['onnx_users_per_s']:,.0f} users/s; torch's ranking "
                  f"on the same weights: {r['torch_users_per_s']:,.0f} users/s (ratio "
                  f"{r['onnx_users_per_s'] / r['torch_users_per_s']:.2f}), {args.threads} thread(s)")
    print(f"NDCG@10, Recall@10: means over the users with a test item; every item scored, the user's training")
    print("  items masked out, the top 10 against the user's test items (specc.training.ranking).")
    if args.json:
        write_json(Path(args.json).resolve(), rows, source=source, users=split.train.shape[0],
                   items=split.train.shape[1], train=split.train.nnz, test=split.test.nnz, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
