"""Inspect: a run folder -> what its embeddings learned (the seed's learn.bias, learn.weight, PCA).

Reads model.safetensors with numpy alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from specc.data.prepare import Vocab, vocabs_from_json
from specc.diagnostics import DataError, UsageError


def load_run(run: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Weights and metadata of a run folder's model.safetensors (never unpickles anything)."""
    from safetensors import safe_open

    path = run / "model.safetensors"
    if not path.is_file():
        raise UsageError(f"{run} has no model.safetensors: is it a run folder of `specc train`?")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        raise DataError(str(path), f"is not a readable safetensors file ({err})", code="D108") from None
    return weights, meta


def read_names(path: Path, column: str) -> dict[str, str]:
    """id -> display name, from a CSV whose first column (or the one named `column`) holds the id."""
    if not path.is_file():
        raise DataError(str(path), "file not found", code="D101")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise DataError(str(path), "expected a header with an id column and a name column", line=1, code="D102")
        key = header.index(column) if column in header else 0
        name = 1 if key == 0 else 0
        names = {}
        for row in reader:
            if len(row) > max(key, name):
                names[row[key].strip()] = row[name].strip()
    return names


def _label(vocab: Vocab, index: int, names: dict[str, str]) -> str:
    value = vocab.values[index - 1]
    key = str(int(value)) if vocab.integer else value
    shown = names.get(key)
    return f"{shown} [{vocab.column} {value}]" if shown else f"{vocab.column} {value}"


def pca(factors: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Scores of each row on the first k principal components, and each one's share of variance."""
    centred = factors - factors.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    return centred @ vt[:k].T, var[:k] / var.sum()


def report(run: Path, column: str | None = None, names_path: Path | None = None, top: int = 1000,
           show: int = 10) -> str:
    weights, meta = load_run(run)
    vocabs = vocabs_from_json(meta.get("specc.vocabs", "{}"))
    embeddings = json.loads(meta.get("specc.embeddings", "{}"))
    if not embeddings:
        raise UsageError(f"{run}: the model has no embeddings to inspect")
    columns = list(dict.fromkeys(e["column"] for e in embeddings.values()))
    if column is None:
        column = columns[-1]  # the seed inspects the items (movies), the last id column
    if column not in columns:
        raise UsageError(f"--column {column!r}: the embeddings are over {', '.join(columns)}")
    vocab = vocabs[column]
    names = read_names(names_path, column) if names_path else {}
    counts = np.asarray(vocab.counts)
    order = np.argsort(-counts, kind="stable")[:top]
    chosen = order + 1  # vocabulary indices (0 is the unknown row)
    lines = [f"{column}: {len(vocab.values)} categories; the {len(chosen)} most frequent in training are shown"]
    for name, emb in embeddings.items():
        if emb["column"] != column:
            continue
        table = weights[f"{name}.weight"]
        if emb["dim"] == 1:
            bias = table[chosen, 0]
            ranked = np.argsort(bias, kind="stable")
            lines.append(f"\nbias '{name}': lowest")
            lines += [f"  {bias[r]:+.3f}  {_label(vocab, chosen[r], names)}" for r in ranked[:show]]
            lines.append(f"bias '{name}': highest")
            lines += [f"  {bias[r]:+.3f}  {_label(vocab, chosen[r], names)}" for r in ranked[::-1][:show]]
        else:
            scores, share = pca(table[chosen], 3)
            for c in range(scores.shape[1]):
                ranked = np.argsort(scores[:, c], kind="stable")
                lines.append(f"\nfactors '{name}' ({emb['dim']} wide): principal component {c + 1}"
                             f" ({share[c]:.1%} of the variance)")
                lines.append("  one end:")
                lines += [f"    {scores[r, c]:+.3f}  {_label(vocab, chosen[r], names)}" for r in ranked[:show]]
                lines.append("  other end:")
                lines += [f"    {scores[r, c]:+.3f}  {_label(vocab, chosen[r], names)}"
                          for r in ranked[::-1][:show]]
    return "\n".join(lines)
