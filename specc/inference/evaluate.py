"""Evaluate: an exported model + a labelled file -> the spec's metrics, through onnxruntime alone.

The file is a CSV, read as the spec read its data (the options are in the model's metadata) or
with a header naming the columns, or an .npz with an array per column; for a model trained on an
image folder, a folder laid out as that one was. `--split valid` takes the same validation rows
that training reported on."""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from specc.data.files import describe_array
from specc.data.images import Listing, list_folder
from specc.data.prepare import INT64_MAX, INT64_MIN, split_from_json, split_rows
from specc.data.table import shown_names
from specc.inference.infer import IMAGE_BATCH, PROBABILITIES, ImageReading, Inputs, Session, image_reading, is_npz, \
    load_session, read_rows, run_images
from specc.language.diagnostics import DataError, printable
from specc.language.spec import CATEGORY, ImagesSource


def evaluate_file(model: Path, data: Path, split: str = "all", device: str = "auto", batch: int = 65536,
                  delimiter: str | None = None, arrays: dict[str, str] | None = None,
                  image_batch: int = IMAGE_BATCH) -> dict:
    """Loss and metrics of the model on the file's rows ('all', or the spec's 'train' / 'valid'
    rows), with "rows", "arrays" (an .npz's arrays read) and "notes" beside them. For a model
    trained on an image folder, `data` may be a folder of class folders (see _image_folder)."""
    session = load_session(model, device=device)
    meta = session.metadata
    target = meta.get("specc.target")
    if target is None:
        raise DataError(str(model), "is not a model of `specc train` (its metadata has no specc.target)", code="D108")
    images = image_reading(session, model)
    if images is not None and data.is_dir():
        got, out = _image_folder(session, images, data, split, image_batch)
    else:
        if images is not None and not is_npz(data):
            raise DataError(str(data), "is not a folder: the model reads images, so evaluate takes a folder with one "
                            "subfolder of images per class, as the model was trained on (or an .npz with arrays "
                            f"'{images.column}' and '{target}')", code="D107")
        got = read_rows(data, session, target=target, delimiter=delimiter, arrays=arrays, split=split)
        if split != "all" and not got.split_done:
            train_idx, valid_idx = split_rows(got.rows, _spec_split(meta), str(data))
            got.take(valid_idx if split == "valid" else train_idx)
        parts: dict[str, list] = {name: [] for name in session.outputs}
        for s in range(0, got.rows, batch):
            result = session.run({k: v[s:s + batch] for k, v in got.feed.items()})
            for name in session.outputs:
                parts[name].append(result[name])
        out = {name: np.concatenate(p) for name, p in parts.items()}
    metrics = json.loads(meta.get("specc.metrics", "[]"))
    if meta.get("specc.target_kind") == CATEGORY:
        result = _classification(meta, target, got, out, metrics)
    else:
        result = _regression(meta, target, got, out, metrics)
    return {"rows": got.rows, **result, "arrays": got.arrays, "notes": got.notes}


def _spec_split(meta: dict):
    """The spec's validation split, from the model's metadata."""
    return split_from_json(json.loads(meta.get("specc.split", "null")))


def _image_folder(session: Session, images: ImageReading, folder: Path, split: str,
                  batch: int) -> tuple[Inputs, dict[str, np.ndarray]]:
    """The model's outputs for every image of a folder laid out as training's (one subfolder per
    class, or train/ and valid/ folders of them), with each one's class (its folder's name). A split
    takes the folder's own train/ or valid/ images, else the spec's split of them in training's
    order. A class the model does not know is an error before any image is decoded."""
    listing = list_folder(ImagesSource(folder, images.size, images.mode, None))
    meta = session.metadata
    _known_classes(listing, json.loads(meta["specc.vocabs"])[meta["specc.target"]])
    files = list(listing.files)
    if split != "all" and listing.own_split:
        files = [f for f in files if f.valid == (split == "valid")]
    elif split != "all":
        train_idx, valid_idx = split_rows(len(files), _spec_split(meta), str(folder))
        files = [files[k] for k in (valid_idx if split == "valid" else train_idx)]
    out = run_images(session, images, [listing.root / f.relative for f in files], batch)
    return Inputs({}, len(files), target=np.array([f.label for f in files], dtype=object), path=str(folder)), out


def _known_classes(listing: Listing, vocab: dict) -> None:
    """Every class folder must name a class of the model: one it never learned cannot be scored."""
    classes = vocab["values"]
    known = {int(v) if vocab["integer"] else v for v in classes}
    unknown = Counter(f.label for f in listing.files if _class_key(f.label, vocab["integer"]) not in known)
    if not unknown:
        return
    first = next(f for f in listing.files if f.label in unknown)
    part = ("valid" if first.valid else "train") if listing.own_split else ""
    where = listing.root / part / first.label if len(unknown) == 1 else listing.root
    listed = ", ".join(f"'{printable(c)}' ({n} image{'s' if n > 1 else ''})" for c, n in sorted(unknown.items())[:5])
    if len(unknown) > 5:
        listed += f" and {len(unknown) - 5} more"
    hints = [f"'{printable(close[0])}' for '{printable(label)}'" for label in sorted(unknown)[:5]
             if (close := difflib.get_close_matches(label, [str(c) for c in classes], n=1, cutoff=0.75))]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    count = len(unknown)
    raise DataError(printable(str(where)), f"class folder{'s' if count > 1 else ''} {listed} "
                    f"{'are' if count > 1 else 'is'} not {'classes' if count > 1 else 'a class'} of the model: its "
                    f"classes are {shown_names([printable(str(c)) for c in classes])}{hint}", code="D109")


def _class_key(value, integer: bool):
    """A label as the model's vocabulary holds it: a whole number for integer classes, else text.
    A label that cannot be one stays text, so that it is reported as a class never seen."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not integer:
        return str(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and value == int(value) else str(value)
    try:
        number = int(value)
    except ValueError:
        return str(value)
    return number if INT64_MIN <= number <= INT64_MAX else str(value)


def _classification(meta, target: str, got: Inputs, out, metrics) -> dict:
    vocab = json.loads(meta["specc.vocabs"])[target]
    classes = vocab["values"]
    index = {(int(v) if vocab["integer"] else v): k for k, v in enumerate(classes)}
    keys = [_class_key(t, vocab["integer"]) for t in got.target]
    unseen = Counter(k for k in keys if k not in index)
    if unseen:
        raise _unseen(got, target, keys, unseen, classes)
    truth = np.array([index[k] for k in keys], dtype=np.int64)
    n = got.rows
    picked = out[PROBABILITIES][np.arange(n), truth]
    labels = out[target]
    correct = np.array([str(p) == str(k) for p, k in zip(labels, keys)])
    result = {"loss": float(-np.log(np.clip(picked, 1e-12, None)).mean())}
    accuracy = float(correct.mean())
    for metric in metrics:
        result[metric] = {"accuracy": accuracy, "error_rate": 1 - accuracy}[metric]
    return result


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
                     f"{listed}; its classes are {shown_names(list(classes))}{hint}", code="D109")


def _regression(meta, target: str, got: Inputs, out, metrics) -> dict:
    truth = got.target
    if truth.dtype.kind not in "iufb":
        raise got.error(0, target, f"holds {describe_array(truth)}; the target is a number", whole=True)
    y = np.asarray(truth, dtype=np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        k = int(np.argmax(bad))
        found = "a missing value (NaN)" if np.isnan(y[k]) else f"{y[k]}"
        raise got.error(k, target, f"expected a finite number, found {found}", code="D105")
    pred = out[target].astype(np.float64)
    err = pred - y
    mse = float((err * err).mean())
    loss_name = meta.get("specc.loss", "mse")
    result = {"loss": {"mse": mse, "l1": float(np.abs(err).mean())}.get(loss_name, mse)}
    for metric in metrics:
        result[metric] = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.abs(err).mean())}[metric]
    return result
