"""Evaluate: an exported model + a labelled file -> the spec's metrics, through onnxruntime alone.

The file is read with the options the spec used (recorded in the model's metadata), and
`--split valid` takes the same validation rows that training reported on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from specc.data.prepare import split_from_json, split_rows
from specc.diagnostics import DataError, UsageError
from specc.export import PROBABILITIES
from specc.infer import Session, read_inputs
from specc.spec import CATEGORY


def evaluate_file(model: Path, data: Path, split: str = "all", device: str = "auto", batch: int = 65536) -> dict:
    """Loss and metrics of the model on the file's rows ('all', or the spec's 'train' / 'valid' rows)."""
    session = Session(model, device=device)
    meta = session.metadata
    target = meta.get("specc.target")
    if target is None:
        raise UsageError(f"{model}: not a specc model (no specc.target in its metadata)")
    if data.suffix == ".npz":
        raise UsageError("evaluate reads CSV files; for arrays use `specc predict`")
    feed, n = read_inputs(data, session, target=target)
    truth = feed.pop(target)
    if split != "all":
        reading = json.loads(meta.get("specc.split", "null"))
        train_idx, valid_idx = split_rows(n, split_from_json(reading), str(data))
        rows = valid_idx if split == "valid" else train_idx
        feed = {k: v[rows] for k, v in feed.items()}
        truth = truth[rows]
        n = len(rows)
    parts: dict[str, list] = {name: [] for name in session.outputs}
    for s in range(0, n, batch):
        got = session.run({k: v[s:s + batch] for k, v in feed.items()})
        for name in session.outputs:
            parts[name].append(got[name])
    out = {name: np.concatenate(p) for name, p in parts.items()}
    metrics = json.loads(meta.get("specc.metrics", "[]"))
    if meta.get("specc.target_kind") == CATEGORY:
        return _classification(meta, target, truth, out, metrics, n)
    return _regression(meta, target, truth, out, metrics, n)


def _classification(meta, target, truth, out, metrics, n) -> dict:
    vocab = json.loads(meta["specc.vocabs"])[target]
    classes = vocab["values"]
    index = {(int(v) if vocab["integer"] else v): k for k, v in enumerate(classes)}
    keys = [int(t) if vocab["integer"] else str(t) for t in truth]
    known = np.array([k in index for k in keys])
    labels = out[target]
    correct = np.array([str(p) == str(t) for p, t in zip(labels, keys)])
    probs = out[PROBABILITIES]
    true_idx = np.array([index.get(k, 0) for k in keys])
    picked = probs[np.arange(n), true_idx][known]
    result = {"rows": n, "loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()) if known.any() else math.nan}
    accuracy = float(correct.mean()) if n else math.nan
    for metric in metrics:
        result[metric] = {"accuracy": accuracy, "error_rate": 1 - accuracy}[metric]
    if not known.all():
        result["unseen_classes"] = int((~known).sum())
    return result


def _regression(meta, target, truth, out, metrics, n) -> dict:
    y = np.asarray(truth, dtype=np.float64)
    if not np.isfinite(y).all():
        raise DataError("", f"the target column '{target}' has missing or infinite values", code="D105")
    pred = out[target].astype(np.float64)
    err = pred - y
    mse = float((err * err).mean())
    loss_name = meta.get("specc.loss", "mse")
    result = {"rows": n, "loss": {"mse": mse, "l1": float(np.abs(err).mean())}.get(loss_name, mse)}
    for metric in metrics:
        result[metric] = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.abs(err).mean())}[metric]
    return result
