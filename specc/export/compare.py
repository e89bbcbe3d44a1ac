"""The parity check: the exported model, run by onnxruntime on raw rows, against torch."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from specc.data.prepare import Prepared, Vocab
from specc.export.errors import ExportError
from specc.export.graph import PROBABILITIES, takes_pixels
from specc.export.ids import unseen_ids
from specc.inference.columns import whole
from specc.language.spec import CATEGORIES, FLOAT, Spec
from specc.training.metrics import returned_by_export

PARITY_TOLERANCE = 1e-4
PARITY_ROWS = 2048


def raw_feed(spec: Spec, vocabs: dict[str, Vocab], raw: dict[str, list], rows: slice) -> dict[str, np.ndarray]:
    """Raw column values shaped as the ONNX model's inputs."""
    feed = {}
    kinds = {c.name: c.kind for c in spec.data.inputs}
    for col in spec.graph_inputs():
        values = raw[col][rows]
        if kinds[col] == CATEGORIES:  # the sets as the model takes them: (N, L), padded
            from specc.data.sets import sets_array
            from specc.inference.columns import padded_sets

            def error(k, message, code):  # the rows were read and checked in training: a bug
                raise ValueError(f"parity row {k} of '{col}': {message}")
            feed[col] = padded_sets(sets_array(values), vocabs[col].integer, error)
        elif col in vocabs:
            vocab = vocabs[col]
            if vocab.integer:  # a value no whole number (a missing id) is, as an unseen id is, the unknown category
                unseen = int(unseen_ids(vocab)[0])
                feed[col] = np.array([unseen if (w := whole(v)) is None else w for v in values], dtype=np.int64)
            else:
                feed[col] = np.array([str(v) for v in values], dtype=object)
        else:
            feed[col] = np.asarray(values, dtype=np.uint8 if takes_pixels(spec, col) else np.float32)
    return feed


def parity_rows(spec: Spec, prepared: Prepared) -> dict[str, list]:
    """Validation rows as read (with none, `valid = none`, the first training rows) of the exported model's
    inputs, plus rows whose ids were never seen in training, and for a set column rows of an empty set, of an
    unseen id beside a known one, and of an id given twice."""
    inputs = spec.graph_inputs()
    raw = {c: list(prepared.raw_rows[c][:PARITY_ROWS]) for c in inputs}
    kinds = {c.name: c.kind for c in spec.data.inputs}
    for col in inputs:
        vocab = prepared.vocabs.get(col)
        if vocab is None:
            continue
        if kinds[col] == CATEGORIES:
            known = [int(v) if vocab.integer else v for v in vocab.values[:2]]
            unseen = [int(u) if vocab.integer else u for u in unseen_ids(vocab)]
            for items in ((), (*unseen[:1], *known), (*known, *known[:1])):
                for other in inputs:  # one row with just this set
                    raw[other].append(items if other == col else raw[other][0])
            continue
        for unseen in unseen_ids(vocab):
            for other in inputs:  # one row with just this id unseen
                raw[other].append(unseen if other == col else raw[other][0])
    if "fill_missing" in spec.data.procs:
        for col in inputs:
            if col in (prepared.stats or {}):
                for other in inputs:  # one row with just this value missing
                    raw[other].append(float("nan") if other == col else raw[other][0])
    return raw


def reference_outputs(spec: Spec, model: torch.nn.Module, vocabs: dict[str, Vocab], raw: dict[str, list],
                      sides: dict | None = None) -> dict:
    """What the exported model should return, computed by torch from the same raw rows (a side table's
    column looked up by its key's raw id in `sides`, specc.data.side.SideColumn)."""
    model = model.cpu().eval()
    sides = sides or {}
    with torch.no_grad():
        args = []
        kinds = {c.name: c.kind for c in spec.data.inputs}
        for col in spec.model.inputs:
            if col in sides:
                args.append(torch.from_numpy(np.ascontiguousarray(sides[col].of(raw[sides[col].key]))))
            elif kinds[col] == CATEGORIES:
                from specc.data.sets import encode_sets, sets_array

                args.append(torch.from_numpy(encode_sets(vocabs[col], sets_array(raw[col]))))
            elif col in vocabs:
                args.append(torch.from_numpy(vocabs[col].lookup(raw[col])))
            else:
                args.append(torch.tensor(np.asarray(raw[col], dtype=np.float32)))
        out = model(*args)
    target = spec.data.target
    returned = returned_by_export(spec.train.loss, out)
    if target.kind == FLOAT:
        return {target.name: returned[:, 0].numpy()}
    values = vocabs[target.name].values
    labels = [values[k] for k in out.argmax(dim=-1).tolist()]
    if vocabs[target.name].integer:
        labels = [int(v) for v in labels]
    return {PROBABILITIES: returned.numpy(), target.name: np.array(labels, dtype=object)}


def parity(spec: Spec, model: fx.GraphModule, onnx_bytes: bytes, vocabs: dict[str, Vocab],
           raw: dict[str, list], sides: dict | None = None) -> float:
    """Max |onnxruntime - torch| over the numeric outputs on raw rows (labels must agree where the
    top class is clear); raises ExportError above the tolerance."""
    from specc.inference.session import Session

    n = len(next(iter(raw.values())))
    feed = raw_feed(spec, vocabs, raw, slice(0, n))
    got = Session(onnx_bytes, device="cpu").run(feed)
    want = reference_outputs(spec, model, vocabs, raw, sides)
    target = spec.data.target.name
    numeric = target if spec.data.target.kind == FLOAT else PROBABILITIES
    diff = float(np.max(np.abs(got[numeric] - want[numeric]))) if n else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime and torch differ by {diff:.3g} on {n} rows "
                          f"(tolerance {PARITY_TOLERANCE:g})")
    if numeric == PROBABILITIES:
        top2 = np.sort(want[PROBABILITIES], axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 10 * PARITY_TOLERANCE  # ties may break either way
        mismatched = [k for k in np.flatnonzero(clear) if got[target][k] != want[target][k]]
        if mismatched:
            k = mismatched[0]
            raise ExportError(f"onnxruntime predicts '{got[target][k]}' where torch predicts '{want[target][k]}' "
                              f"(row {k})")
    return diff
