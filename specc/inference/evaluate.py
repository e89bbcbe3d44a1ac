"""Evaluate: an exported model + a labelled file -> the spec's metrics, through onnxruntime alone.

The file is read as predict reads it (specc.inference.infer.read_file): a CSV, read as the spec
read its data (the options are in the model's metadata) or with a header naming the columns, an
.npz with an array per column, a Parquet file; for a model trained on an image folder, a folder
laid out as that one was. `--split valid` takes the same validation rows that training reported on
(a usage error for a model trained with `valid = none`, which had none)."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from specc.data.files import describe_array
from specc.data.split import split_columns, split_from_json, split_rows, valid_file
from specc.data.splits import SPLITS, UndeclaredSplit, validates
from specc.data.table import shown_names
from specc.inference.columns import IMAGE_BATCH, Ask, Inputs, class_key
from specc.inference.infer import PROBABILITIES, read_file, run_inputs
from specc.inference.recommend import ranking_metrics, recommender
from specc.inference.session import load_session
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError, printable
from specc.language.spec import CATEGORY
from specc.training import losses


def evaluate_file(model: Path, data: Path, split: str = "all", device: str = "auto", batch: int = 65536,
                  delimiter: str | None = None, arrays: dict[str, str] | None = None,
                  image_batch: int = IMAGE_BATCH) -> dict:
    """Loss and metrics of the model on the file's rows ('all', or the spec's 'train' / 'valid'
    rows), with "rows", "arrays" (an .npz's arrays read) and "notes" beside them. For a model
    trained on an image folder, `data` may be a folder of class folders (see read_images.class_folder)."""
    session = load_session(model, device=device)
    meta = session.metadata
    target = meta.get("specc.target")
    if target is None:
        raise DataError(str(model), "is not a model of `specc train` (its metadata has no specc.target)",
                        code=codes.BAD_MODEL_FILE)
    if "specc.recommend" in meta:
        return _ranking(session, model, data, split, delimiter, arrays)
    loss, metrics = _declared(meta, model)
    ask = Ask(target=target, split=split, delimiter=delimiter, arrays=arrays, image_batch=image_batch)
    got = _rows_of(session, data, ask)
    out = run_inputs(session, got, batch)
    if meta.get("specc.target_kind") == CATEGORY:
        returned, truth, predicted = _classification(meta, target, got, out)
    else:
        returned, truth = _regression(target, got, out)
        predicted = returned
    # each as its declaration computes it (specc.training.losses): the loss from what the model returned
    # (the probabilities of a class), a metric from the prediction (the value, or the class)
    result = {"loss": loss.evaluate(returned, truth)}
    result.update((m.name, m.compute(predicted, truth)) for m in metrics)
    return {"rows": got.rows, **result, "arrays": got.arrays, "notes": got.notes}


def _ranking(session, model: Path, data: Path, split: str, delimiter, arrays) -> dict:
    """A recommender's ranking metrics on a file of interactions (user, item: every row one; with
    `split`, the spec's training or validation rows of it), through its exported top k."""
    meta = session.metadata
    item = recommender(session)["item"]
    metrics = json.loads(meta.get("specc.metrics", "[]"))
    for name in metrics:
        base, k = losses.cutoff_of(name)
        if k is None or base not in losses.METRICS or not losses.METRICS[base].cutoff:
            raise DataError(str(model), f"names the metric {json.dumps(name)} for a recommender in its metadata, "
                            "which this specc does not know", code=codes.BAD_MODEL_FILE)
    if not metrics:
        raise DataError(str(model), "names no ranking metric in its metadata: add metrics = [ndcg(10), ...] to "
                        "the spec's train block", code=codes.BAD_MODEL_FILE)
    got = _rows_of(session, data, Ask(target=item, split=split, delimiter=delimiter, arrays=arrays))
    rec = recommender(session)
    if rec.get("rating") is not None:  # only the rows rated at least the threshold are interactions
        rated = _rows_of(session, data, Ask(target=rec["rating"], split=split, delimiter=delimiter, arrays=arrays))
        got.take(np.flatnonzero(_regression(rec["rating"], rated, {rec["rating"]: rated.target})[1] >= rec["threshold"]))
    return {"rows": got.rows, **ranking_metrics(session, got, item, metrics), "arrays": got.arrays, "notes": got.notes}


def _rows_of(session, data: Path, ask: Ask) -> Inputs:
    """The file's rows as the model's reader gives them, those of the spec's split where `ask` says one:
    picked as the split's declaration picks them (from the columns it reads, read beside the model's),
    or, for 'valid' of a split with a validation file of its own (`file(path)`), that file's rows."""
    if ask.split == "all":
        return read_file(data, session, ask)
    split = _spec_split(session)
    if ask.split == "valid" and not validates(split):
        raise UsageError(f"--split valid: {printable(str(session.where))} was trained with valid = none, which keeps "
                         "no validation rows; --split all (or train: every row) takes the file's rows")
    other = valid_file(split)
    if other is not None and ask.split == "valid":
        got = read_file(other, session, dataclasses.replace(ask, split="all"))
        got.notes.append(f"the validation rows are those of {printable(str(other))}, the spec's valid = file(...)")
        return got
    got = read_file(data, session, dataclasses.replace(ask, split_columns=split_columns(split, ())))
    if not got.split_done:
        train_idx, valid_idx = split_rows(got.rows, split, str(data), got.split_values)
        got.take(valid_idx if ask.split == "valid" else train_idx)
    return got


def _declared(meta: dict, model: Path) -> tuple[losses.LossDef, list[losses.MetricDef]]:
    """The declarations of the loss and metrics the model's metadata names; a name this specc
    does not declare, or one for another kind of target, is an error naming it."""
    kind = meta.get("specc.target_kind")
    loss = meta.get("specc.loss")
    if loss not in losses.LOSSES or losses.LOSSES[loss].target != kind:
        raise DataError(str(model), f"names the loss {json.dumps(loss)} for a {kind} target in its metadata, which "
                        f"this specc does not know (its losses: {', '.join(losses.LOSSES)})", code=codes.BAD_MODEL_FILE)
    metrics = json.loads(meta.get("specc.metrics", "[]"))
    for name in metrics:
        if name not in losses.METRICS or losses.METRICS[name].target != kind:
            raise DataError(str(model), f"names the metric {json.dumps(name)} for a {kind} target in its metadata, "
                            f"which this specc does not know (its metrics: {', '.join(losses.METRICS)})",
                            code=codes.BAD_MODEL_FILE)
    return losses.loss(loss), [losses.metric(name) for name in metrics]


def _spec_split(session):
    """The spec's validation split, from the model's metadata (D108 for a kind this specc does not know)."""
    meta = session.metadata
    try:
        return split_from_json(json.loads(meta.get("specc.split", "null")))
    except UndeclaredSplit:
        raise DataError(session.where, f"names the validation split {meta['specc.split']} in its metadata, which this "
                        f"specc does not know (its splits: {', '.join(SPLITS)})", code=codes.BAD_MODEL_FILE) from None


def _classification(meta, target: str, got: Inputs, out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probabilities the model returned, and each row's true and predicted class, as indices."""
    vocab = json.loads(meta["specc.vocabs"])[target]
    classes = vocab["values"]
    index = {(int(v) if vocab["integer"] else v): k for k, v in enumerate(classes)}
    keys = [class_key(t, vocab["integer"]) for t in got.target]
    unseen = Counter(k for k in keys if k not in index)
    if unseen:
        raise _unseen(got, target, keys, unseen, classes)
    truth = np.array([index[k] for k in keys], dtype=np.int64)
    predicted = np.array([index[class_key(label, vocab["integer"])] for label in out[target]], dtype=np.int64)
    return out[PROBABILITIES], truth, predicted


def _unseen(got: Inputs, target: str, keys: list, unseen: Counter, classes: list[str]) -> DataError:
    """Labels the model never saw in training cannot be scored: name them, how often each comes,
    the model's classes and the close ones ('<=50K.' -> '<=50K'), at the first row with one."""
    first = next(k for k, key in enumerate(keys) if key in unseen)
    common = unseen.most_common(5)
    listed = ", ".join(f"'{c}' ({n} row{'s' if n > 1 else ''})" for c, n in common)
    if len(unseen) > len(common):
        listed += f" and {len(unseen) - len(common)} more"
    hints = []
    for label, _ in common:
        close = difflib.get_close_matches(str(label), classes, n=1, cutoff=0.75)
        if close:
            hints.append(f"'{close[0]}' for '{label}'")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    count = len(unseen)
    return got.error(first, target, f"{count} class{'es' if count > 1 else ''} the model never saw in training: "
                     f"{listed}; its classes are {shown_names(list(classes))}{hint}", code=codes.UNKNOWN_CLASS)


def _regression(target: str, got: Inputs, out) -> tuple[np.ndarray, np.ndarray]:
    """The values the model returned and the target's, both float64, the target checked to be finite."""
    truth = got.target
    if truth.dtype.kind not in "iufb":
        raise got.error(0, target, f"holds {describe_array(truth)}; the target is a number", code=codes.WRONG_TYPE,
                        whole=True)
    y = np.asarray(truth, dtype=np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        k = int(np.argmax(bad))
        found = "a missing value (NaN)" if np.isnan(y[k]) else f"{y[k]}"
        raise got.error(k, target, f"expected a finite number, found {found}", code=codes.BAD_NUMBER)
    return out[target].astype(np.float64), y
