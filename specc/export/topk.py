"""Export of a recommender (implicit feedback): trained model -> an ONNX model that takes a batch of
user ids and returns each user's top k items, as the data had their ids, and their scores.

Inside the graph every item is scored for each user (over the model's grid of users x items where it
has one, specc.model.grid; else the model run on the user repeated against the whole catalogue), the
user's training items are set to -inf (a table of each user's items, padded with the unknown item,
scattered into the scores), a user never seen in training gets the items' training popularity as
scores (the most popular items first), and ONNX's TopK picks the k best; equal scores go to the item
with the lower vocabulary index, as torch's stable sort does (specc.training.implicit.ranked). A user
with fewer than k items left gets the rest at -inf."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch.fx as fx
from onnx import TensorProto, helper

from specc.data.prepare import Vocab, history_table
from specc.export.emitter import Emitter
from specc.export.graph import finished, metadata, translate_body
from specc.export.ids import dense_ids, id_type, lookup
from specc.export.ops import function as translate_function, module as translate_module
from specc.language.spec import Spec
from specc.model.grid import ITEM, USER, Grid
from specc.model.lower import column_of
from specc.training.implicit import UNKNOWN, Interactions, model_grid

ITEMS, SCORES = "items", "scores"  # the exported recommender's outputs, (N, k) each
NO_INTEGER_ITEM = -1  # the item id of a rank left empty (-inf), for whole-number ids; "" for text ids


def to_onnx_topk(spec: Spec, model: fx.GraphModule, vocabs: dict[str, Vocab], inter: Interactions) -> onnx.ModelProto:
    """The recommender's ONNX model: user ids (N,) -> items (N, k) and scores (N, k)."""
    feedback = spec.data.feedback
    em = Emitter(reserved=(feedback.user, ITEMS, SCORES))
    users_vocab, items_vocab = vocabs[feedback.user], vocabs[feedback.item]
    user = lookup(em, feedback.user, users_vocab, dense_ids(em, feedback.user, users_vocab))
    n_items = items_vocab.size
    k = min(feedback.top_k, n_items)
    over = model_grid(spec, model, inter)
    scores = _every_item(em, spec, model, user, inter, over)
    scores = _popular_for_unknown(em, user, scores, inter)
    scores = _masked(em, user, scores, inter)
    _, top = em.nodes_of("TopK", [scores, em.const([k], np.int64)], [SCORES, "top_index"], exact_outputs=(SCORES,),
                         axis=1, largest=1, sorted=1)
    em.node("Gather", [_item_ids(em, items_vocab), top], ITEMS, exact=True, axis=0)
    inputs = [helper.make_tensor_value_info(feedback.user, id_type(users_vocab), ["N"])]
    outputs = [helper.make_tensor_value_info(ITEMS, id_type(items_vocab), ["N", k]),
               helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", k])]
    props = metadata(spec, vocabs)
    props["specc.recommend"] = json.dumps({"user": feedback.user, "item": feedback.item, "k": k, "items": n_items,
                                           "rating": feedback.rating, "threshold": feedback.threshold,
                                           "grid": over is not None})
    return finished(em, spec, inputs, outputs, props)


def _every_item(em: Emitter, spec: Spec, model: fx.GraphModule, user: str, inter: Interactions,
                over: Grid | None) -> str:
    """The model's score of every item for each user [N, n_items]: its output, for a model of users (view =
    users); else over its grid `over` (_on_grid), where it has one; else the model run on each user paired with
    every item. A side table's column is looked up by its key's index (Interactions.sides)."""
    feedback, n_items = spec.data.feedback, inter.n_items
    keys = {feedback.user: user}
    if over is not None:
        keys[feedback.item] = em.const(np.arange(n_items, dtype=np.int64), np.int64)
    elif not feedback.per_user:
        _, grid = _grid_shape(em, user, n_items)
        column = em.node("Unsqueeze", [user, em.const([1], np.int64)], "user_column")
        keys[feedback.user] = _spread(em, column, grid, "user_grid", "user_pairs")
        keys[feedback.item] = _spread(em, _catalogue_row(em, n_items), grid, "item_grid", "item_pairs")
    names = {}
    for fnode in (n for n in model.graph.nodes if n.op == "placeholder"):
        column = column_of(fnode)
        if column in (inter.sides or {}):
            key, table = inter.sides[column]
            values = em.weight_array(f"{column}_by_{key}", table.cpu().numpy())
            names[fnode.name] = em.node("Gather", [values, keys[key]], f"{column}_of_{key}", axis=0)
        else:
            names[fnode.name] = keys[column]
    if over is not None:
        return _on_grid(em, over, names, user, n_items)
    result = translate_body(em, model, names, {})
    return result if feedback.per_user else em.node("Reshape", [result, grid], "all_scores")


def _on_grid(em: Emitter, over: Grid, names: dict[str, str], user: str, n_items: int) -> str:
    """[N, n_items]: the model over its Grid (specc.model.grid), its inputs in `names` (the N users' and every
    item's): a value of one side computed once for each user or each item, a value of both for each pair (a
    user's pairs in item order, as the pair layout of _every_item has them), a dot product of a user's value
    and an item's one MatMul."""
    modules = dict(over.model.named_modules())
    size, grid = _grid_shape(em, user, n_items)
    count = em.node("Squeeze", [size, em.const([0], np.int64)], "users_count_scalar")
    place = em.node("Range", [em.const(0, np.int64), count, em.const(1, np.int64)], "user_place")
    column = em.node("Unsqueeze", [place, em.const([1], np.int64)], "user_place_column")
    pair_of = {USER: _spread(em, column, grid, "user_place_grid", "pair_user"),
               ITEM: _spread(em, _catalogue_row(em, n_items), grid, "item_grid", "pair_item")}
    paired: dict[str, str] = {}

    def in_pairs(fnode: fx.Node) -> str:  # a value as a value of both reads it: a row per pair
        side = over.sides[fnode]
        if len(side) != 1:
            return names[fnode.name]
        if fnode.name not in paired:
            (which,) = side
            paired[fnode.name] = em.node("Gather", [names[fnode.name], pair_of[which]], f"{fnode.name}_by_pair", axis=0)
        return paired[fnode.name]

    for fnode in over.nodes:
        both = over.sides[fnode] == {USER, ITEM}
        if fnode in over.dots:
            mine, theirs = over.dots[fnode]
            items_t = em.node("Transpose", [names[theirs.name]], f"{fnode.name}_items", perm=[1, 0])
            scores = em.node("MatMul", [names[mine.name], items_t], f"{fnode.name}_grid")
            names[fnode.name] = em.node("Reshape", [scores, em.const([-1, 1], np.int64)], fnode.name)
            continue
        view = {**names, **{n.name: in_pairs(n) for n in fnode.all_input_nodes}} if both else names
        if fnode.op == "call_module":
            names[fnode.name] = translate_module(em, fnode, modules[fnode.target], view[fnode.args[0].name])
        else:
            names[fnode.name] = translate_function(em, fnode, view)
    return em.node("Reshape", [in_pairs(over.output), grid], "all_scores")


def _grid_shape(em: Emitter, user: str, n_items: int) -> tuple[str, str]:
    """The request's count of users [N], and the shape of its grid of users x items [N, n_items]."""
    size = em.node("Shape", [user], "users_count")
    return size, em.node("Concat", [size, em.const([n_items], np.int64)], "grid_shape", axis=0)


def _catalogue_row(em: Emitter, n_items: int) -> str:
    """Every item's index, as a row [1, n_items]."""
    return em.const(np.arange(n_items, dtype=np.int64)[None, :], np.int64)


def _spread(em: Emitter, column: str, grid: str, grid_name: str, name: str) -> str:
    """`column` (a user's [N, 1], or the catalogue row [1, n_items]) spread over the grid and laid out a row per
    (user, item) pair, each user's pairs in item order."""
    return em.node("Reshape", [em.node("Expand", [column, grid], grid_name), em.const([-1], np.int64)], name)


def _popular_for_unknown(em: Emitter, user: str, scores: str, inter: Interactions) -> str:
    """The scores, a user never seen in training given the items' training counts instead."""
    unknown = em.node("Equal", [user, em.const(UNKNOWN, np.int64)], "user_unknown")
    column = em.node("Unsqueeze", [unknown, em.const([1], np.int64)], "user_unknown_column")
    popularity = em.const(inter.popularity.cpu().numpy().astype(np.float32)[None, :])
    return em.node("Where", [column, popularity, scores], "scores_or_popular")


def seen_table(inter: Interactions) -> np.ndarray:
    """Each user's training items, a row per user index padded with the unknown item, with one column more
    than the most items a user has, so that every row masks the unknown item too."""
    table = history_table(inter.users.cpu().numpy(), inter.items.cpu().numpy(), len(inter.starts) - 1)
    return np.pad(table, ((0, 0), (0, 1)), constant_values=UNKNOWN)


def _masked(em: Emitter, user: str, scores: str, inter: Interactions) -> str:
    """The scores with each user's training items and the unknown item at -inf."""
    seen = em.node("Gather", [em.weight_array("seen_items", seen_table(inter)), user], "user_seen", axis=0)
    shape = em.node("Shape", [seen], "user_seen_shape")
    never = em.node("Expand", [em.const(-np.inf, np.float32), shape], "seen_never")
    return em.node("ScatterElements", [scores, seen, never], "scores_unseen", axis=1)


def _item_ids(em: Emitter, vocab: Vocab) -> str:
    """The item id of each vocabulary index, as the data had them (index 0, the unknown item: none)."""
    ids = item_ids(vocab)
    return em.const(ids, ids.dtype)


def topk_parity(spec: Spec, model, onnx_bytes: bytes, vocabs: dict[str, Vocab], inter: Interactions,
                users: list) -> float:
    """onnxruntime's top k for the raw user ids `users` against torch's ranking (specc.training.implicit.ranked)
    on the same weights: the largest score difference; ExportError where the items differ but for ties."""
    import torch

    from specc.export.compare import PARITY_TOLERANCE, ExportError
    from specc.inference.recommend import recommend
    from specc.inference.session import Session
    from specc.training.implicit import item_scorer, ranked

    feedback = spec.data.feedback
    vocab = vocabs[feedback.user]
    feed = np.array([int(u) for u in users], dtype=np.int64) if vocab.integer else np.array([str(u) for u in users],
                                                                                             dtype=object)
    got = dict(zip((ITEMS, SCORES), recommend(Session(onnx_bytes, device="cpu"), feed)))
    model = model.cpu().eval()
    k = got[SCORES].shape[1]
    with torch.no_grad():  # one rank more than the export's: whether its k-th item is clear of the next
        top, values = ranked(item_scorer(spec, model, inter), inter, torch.from_numpy(vocab.lookup(users)), k + 1)
    want_items = np.asarray(item_ids(vocabs[feedback.item]), dtype=object)[top.numpy()[:, :k]]
    want_scores, after = values.numpy()[:, :k], values.numpy()[:, k:]
    finite = np.isfinite(want_scores)
    if not np.array_equal(finite, np.isfinite(got[SCORES])):
        raise ExportError("onnxruntime and torch leave different ranks empty")
    diff = float(np.max(np.abs(got[SCORES][finite] - want_scores[finite]), initial=0.0))
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime's top-k scores and torch's differ by {diff:.3g} (tolerance {PARITY_TOLERANCE:g})")
    with np.errstate(invalid="ignore"):  # -inf - -inf between two empty ranks: NaN, not a clear gap
        gaps = np.abs(np.diff(np.concatenate([want_scores, after], axis=1), axis=1))
    clear = np.ones_like(finite)  # an item whose score is clear of its neighbours', the next unranked one's too
    clear[:, 1:] &= gaps[:, :k - 1] > 10 * PARITY_TOLERANCE
    clear[:, :-1] &= gaps[:, :k - 1] > 10 * PARITY_TOLERANCE
    if after.shape[1]:  # (none where every item is ranked)
        clear[:, -1] &= gaps[:, k - 1] > 10 * PARITY_TOLERANCE
    wrong = np.argwhere(clear & finite & (got[ITEMS].astype(object) != want_items))
    if len(wrong):
        row, rank = wrong[0]
        raise ExportError(f"for user {users[row]}, onnxruntime ranks item {got[ITEMS][row, rank]} at {rank + 1} where "
                          f"torch ranks {want_items[row, rank]}")
    return diff


def item_ids(vocab: Vocab) -> np.ndarray:
    """The item id of each vocabulary index, as the exported model returns them (index 0: none)."""
    ids = vocab.raw_values()
    return np.concatenate([np.array([NO_INTEGER_ITEM if vocab.integer else ""], dtype=ids.dtype), ids])


def parity_users(spec: Spec, prepared, vocabs: dict[str, Vocab], count: int = 256) -> list:
    """Raw user ids for the parity check: the first validation users (with none, `valid = none`, the first
    training users), and ids never seen in training."""
    from specc.export.ids import unseen_ids

    column = spec.data.feedback.user
    raw = list(dict.fromkeys(prepared.raw_rows[column].tolist()))[:count]
    vocab = vocabs[column]
    unseen = unseen_ids(vocab)
    return raw + ([int(u) for u in unseen] if vocab.integer else unseen)
