"""Recommend: an exported recommender (a spec of implicit feedback; specc.export.topk) + user ids ->
each user's top k items and their scores, through onnxruntime, as CSV rows `user,rank,item,score`.

User ids are typed as the model's vocabulary has them: whole numbers where the training ids were,
else text. A user never seen in training gets the most popular items; a rank left without an item
(a user with fewer than k items not yet theirs) is not written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from specc.data.files import open_binary
from specc.inference.columns import class_key
from specc.inference.session import Session
from specc.language import codes
from specc.language.diagnostics import DataError

ITEMS, SCORES = "items", "scores"  # as specc.export.topk names the outputs
MAX_USERS_FILE = 1 << 30  # bytes of a --users file read at most
# (user, item) pairs a run scores: on the CPU few enough that a run's embedding rows stay in cache (16,384
# pairs, 8 MovieLens users a run, ranked about 30x faster than 1,024 users a run: bench/recommend.py); on
# a GPU many, for few launches. A model scored over its grid of users x items (specc.model.grid: its
# metadata's "grid") holds a pair's single score, not its rows: 65,536 pairs a run ranked MovieLens users
# 1.16x as fast as 16,384 on the CPU (specs/implicit.spec, one thread), where Mult-DAE's were 0.58x as fast.
RUN_PAIRS = {"cpu": 1 << 14, "cuda": 1 << 22}
GRID_RUN_PAIRS = {"cpu": 1 << 16, "cuda": 1 << 22}


def recommender(session: Session) -> dict:
    """What the model records of its recommending ({user, item, k}); DataError for a model that does not."""
    text = session.metadata.get("specc.recommend")
    if text is None:
        raise DataError(session.where, "is not a recommender: its spec's target is not implicit(...); "
                        "use specc predict", code=codes.BAD_MODEL_FILE)
    return json.loads(text)


def typed_users(session: Session, users: list[str], where: str) -> np.ndarray:
    """The user ids as the model takes them: int64 where its ids are whole numbers, else text."""
    column = recommender(session)["user"]
    if session.inputs.get(column) != "tensor(int64)":
        return np.array(users, dtype=object)
    out = np.empty(len(users), dtype=np.int64)
    for k, text in enumerate(users):
        try:
            out[k] = int(text.strip())
        except (ValueError, OverflowError):
            raise DataError(where, f"user {text!r} (entry {k + 1}) is not a whole number, as the model's users are",
                            code=codes.WRONG_TYPE) from None
    return out


def read_users(path: Path, column: str) -> list[str]:
    """User ids from a file: one per line, or a CSV whose header names the model's user column."""
    with open_binary(path) as f:  # never blocks on a FIFO put in its place; unreadable: D101
        data = f.read(MAX_USERS_FILE + 1)
    if len(data) > MAX_USERS_FILE:
        raise DataError(str(path), f"is larger than {MAX_USERS_FILE} bytes: split it", code=codes.TOO_MUCH_DATA)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(str(path), f"byte {err.start + 1} is not UTF-8", code=codes.NOT_UTF8) from None
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as err:
        raise DataError(str(path), f"cannot be read as CSV: {err}", code=codes.MALFORMED_CSV) from None
    header = bool(rows) and column in rows[0]
    at = rows[0].index(column) if header else 0
    ids = [row[at] if at < len(row) else "" for row in rows[header:]]
    for k, value in enumerate(ids):
        if not value.strip():
            raise DataError(str(path), f"line {k + 1 + header}: no user id", code=codes.DATA_SHAPE)
    if not ids:
        raise DataError(str(path), "holds no user ids", code=codes.NO_ROWS)
    return ids


def recommend(session: Session, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """items (N, k) and scores (N, k) for the typed users, as many users a run as users_per_run says."""
    column = recommender(session)["user"]
    items, scores = [], []
    batch = users_per_run(session)
    for s in range(0, len(users), batch):
        got = session.run({column: users[s:s + batch]})
        items.append(got[ITEMS])
        scores.append(got[SCORES])
    return np.concatenate(items), np.concatenate(scores)


def users_per_run(session: Session) -> int:
    """Users a run ranks: RUN_PAIRS of (user, item) pairs (GRID_RUN_PAIRS over a grid), every item scored for
    each user."""
    rec = recommender(session)
    pairs = GRID_RUN_PAIRS if rec.get("grid") else RUN_PAIRS  # (a model exported before the grid has no "grid")
    return max(1, pairs["cuda" if session.device == "cuda" else "cpu"] // rec["items"])


def ranked_rows(users: list[str], items: np.ndarray, scores: np.ndarray):
    """(user, rank from 1, item, score) for each user's ranks, skipping ranks left empty."""
    for user, row_items, row_scores in zip(users, items, scores):
        for rank, (item, score) in enumerate(zip(row_items.tolist(), row_scores.tolist()), start=1):
            if np.isfinite(score):
                yield user, rank, item, score


def write_rows(out, users: list[str], items: np.ndarray, scores: np.ndarray) -> int:
    """CSV `user,rank,item,score` (ranked_rows), each score as float32 prints it; returns the rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["user", "rank", "item", "score"])
    written = 0
    for user, rank, item, score in ranked_rows(users, items, scores):
        writer.writerow([user, rank, item, str(np.float32(score))])
        written += 1
    return written


def recommend_rows(session: Session, users: list[str], out, where: str = "--user") -> int:
    """Each user's top k as CSV on `out` (`where`: how messages name where the users came from); returns
    the rows written."""
    items, scores = recommend(session, typed_users(session, users, where))
    return write_rows(out, users, items, scores)


def ranking_metrics(session: Session, got, item_column: str, metrics: list[str]) -> dict[str, float]:
    """The recommender's ranking metrics on the interactions a file gave (`got`: its user feed and its
    item column as the target): each user's top k from the exported model, relevant = the user's items
    in the file; a metric's cutoff at most the model's k."""
    from specc.training import losses, ranking

    rec = recommender(session)
    wanted = [losses.cutoff_of(m) for m in metrics]
    too_deep = [metric for metric, (_, k) in zip(metrics, wanted) if k > rec["k"]]
    if too_deep:
        raise DataError(session.where, f"returns each user's top {rec['k']}, too few for {too_deep[0]}",
                        code=codes.BAD_MODEL_FILE)
    users = got.feed[rec["user"]]
    # each distinct user once (its first row), and each row's user among them
    who, first, owner = np.unique(np.array([str(u) for u in users]), return_index=True, return_inverse=True)
    items, _ = recommend(session, users[first])
    order = np.argsort(owner, kind="stable")
    item_keys: dict = {}  # each item id (class_key), numbered in order of appearance
    integer = items.dtype.kind in "iu"  # ids matched as the model's vocabulary holds them ("07" is 7)
    top = np.array([item_keys.setdefault(class_key(v, integer), len(item_keys)) for v in items.ravel()],
                   dtype=np.int64).reshape(items.shape)
    relevant = np.array([item_keys.setdefault(class_key(v, integer), len(item_keys)) for v in got.target],
                        dtype=np.int64)[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(who)))])
    return ranking.ranking_scores(top, indptr, relevant, wanted)

