"""Category ids -> vocabulary indices inside the ONNX graph: a table of plain ops where the ids are
dense whole numbers, else ai.onnx.ml's LabelEncoder; an unseen id maps to 0, the unknown row."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from onnx import TensorProto
from torch import fx

from specc.data.prepare import Vocab
from specc.export.emitter import Emitter
from specc.model.lower import op_of

# Whole-number ids are looked up in a table of plain ops (Clip, Gather, and a Sub when the ids start
# below 1) where the table is small: at most DENSE_SPAN_RATIO entries per id, or DENSE_ANYWAY in
# all. Every provider runs those where the model runs (on the GPU, beside the embeddings), where the
# LabelEncoder is a CPU kernel whatever the provider. An embedding of such ids is exported indexed
# by the id itself (its rows gathered through the table at export), so the lookup costs no node at
# all, where that at most doubles the embedding or adds at most COMPOSE_EXTRA numbers to it.
DENSE_SPAN_RATIO = 4
DENSE_ANYWAY = 65536
DENSE_LIMIT = 1 << 62  # ids this large fall back to the LabelEncoder: the shift below cannot wrap
COMPOSE_EXTRA = 1 << 18


class DenseIds(NamedTuple):
    """Raw ids clipped into a table's range, and the table: entry k is the vocabulary index of
    id k + offset; the ends and the holes are 0, the unknown index."""

    clipped: str
    table: np.ndarray


def id_type(vocab: Vocab) -> int:
    """The ONNX element type a column's raw ids have in the graph, as an input or an output: int64 where
    every id is a whole number (Vocab.integer), else text."""
    return TensorProto.INT64 if vocab.integer else TensorProto.STRING


def dense_ids(em: Emitter, col: str, vocab: Vocab, label: str | None = None) -> DenseIds | None:
    """The ids of `col` clipped into a table's range, or None when they are not dense enough; `label` names
    the nodes (the column's name when not given: a second vocabulary of one input needs another)."""
    label = label or col
    if not vocab.integer or not vocab.values:
        return None
    ids = np.array([int(v) for v in vocab.values], dtype=object)  # Python ints: no overflow here
    low, high = int(ids.min()), int(ids.max())
    most = max(DENSE_SPAN_RATIO * len(ids), DENSE_ANYWAY)  # numbers a table may span
    if not (-DENSE_LIMIT < low and high < DENSE_LIMIT and high - low + 1 <= most):
        return None
    # The table is indexed by the id itself when the ids start at 1 or above and that keeps it small
    # enough, else by id - low + 1 (a Sub more). Clip sends every id below and above the range to an
    # end of the table. With |ids| < 2**62 the Sub wraps only for ids outside the range, to values
    # Clip also sends to an end.
    offset = 0 if low >= 1 and high + 2 <= most else low - 1
    first, last = low - 1 - offset, high + 1 - offset  # the two ends
    table = np.zeros(last + 1, dtype=np.int64)
    table[(ids - offset).astype(np.int64)] = np.arange(1, len(ids) + 1)
    shifted = col if offset == 0 else em.node("Sub", [col, em.const(offset, np.int64)], f"{label}_shifted")
    clipped = em.node("Clip", [shifted, em.const(first, np.int64), em.const(last, np.int64)], f"{label}_clipped")
    return DenseIds(clipped, table)


def composes(fnode: fx.Node, module: torch.nn.Module | None, dense: DenseIds) -> bool:
    """Whether `fnode` calls `module`, a lookup table (an op declaring OpDef.lookup: embedding)
    small enough to index by raw id (see COMPOSE_EXTRA)."""
    defn = op_of(fnode) if fnode.op == "call_module" else None
    if defn is None or not defn.lookup:
        return False
    rows, width = module.weight.shape
    extra = (len(dense.table) - rows) * width
    return len(dense.table) <= 2 * rows or extra <= COMPOSE_EXTRA


def lookup(em: Emitter, col: str, vocab: Vocab, dense: DenseIds | None, label: str | None = None) -> str:
    """Raw id -> vocabulary index, 0 for an id never seen in training: through the table where the
    ids are dense (`dense`, from _dense_ids), else with the LabelEncoder; `label` names the nodes."""
    label = label or col
    if dense:
        return em.node("Gather", [em.weight_array(f"{label}_vocabulary", dense.table), dense.clipped],
                       f"{label}_index", axis=0)
    em.uses_ml = True
    if vocab.integer:
        keys = dict(keys_int64s=[int(v) for v in vocab.values])
    else:
        keys = dict(keys_strings=list(vocab.values))
    return em.node("LabelEncoder", [col], f"{label}_index", domain="ai.onnx.ml",
                   values_int64s=list(range(1, vocab.size)), default_int64=0, **keys)


def unseen_ids(vocab: Vocab) -> list[str]:
    """Ids never seen in training, one of each kind a lookup treats apart: for whole numbers, one
    above and one below the range, and a hole inside it when there is one."""
    if not vocab.integer:
        return ["<never seen>"]
    ids = sorted(int(v) for v in vocab.values)
    holes = [a + 1 for a, b in zip(ids, ids[1:]) if b > a + 1]
    return [str(i) for i in [ids[-1] + 1, ids[0] - 1, *holes[:1]]]
