"""Inspect: a run folder -> what its embeddings learned (the seed's learn.bias, learn.weight, PCA).

Reads model.safetensors with numpy alone, and checks what it reads: the file is the user's, and a
damaged or hand-made one gets an error that names the tensor or the metadata at fault."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specc.data.files import check_regular, describe_array, open_binary
from specc.data.prepare import Vocab
from specc.data.vocab import as_int
from specc.language import codes
from specc.language.diagnostics import DataError, UsageError

DELIMITERS = (",", "\t", ";", "|")


@dataclass(frozen=True, slots=True)
class NamesFile:
    """A text file of id -> display name, and how to read it: `delimiter` None is the first
    line's most frequent of DELIMITERS; `header` None is a header unless the first line starts
    with one of the model's ids."""

    path: Path
    delimiter: str | None = None
    encoding: str = "utf-8"
    header: bool | None = None


def load_run(run: Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Weights and metadata of a run folder's model.safetensors (never unpickles anything), and
    the tensors numpy cannot hold (name -> why)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.lexists(run):
        raise UsageError(f"{run}: no such run folder")
    if not run.is_dir():
        raise UsageError(f"{run} is not a folder: give the run folder of `specc train`")
    path = run / "model.safetensors"
    if not os.path.lexists(path):
        raise UsageError(f"{run} has no model.safetensors: is it a run folder of `specc train`?")
    check_regular(path)
    weights, unreadable = {}, {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                try:
                    weights[key] = f.get_tensor(key)
                except TypeError as err:  # a dtype numpy lacks, such as bfloat16
                    unreadable[key] = str(err)
    except (SafetensorError, OSError) as err:
        raise DataError(str(path), f"is not a readable safetensors file ({err})", code=codes.BAD_MODEL_FILE) from None
    return weights, meta, unreadable


def _metadata(meta: dict[str, str], path: Path) -> tuple[dict[str, Vocab], dict[str, dict]]:
    """The vocabularies and embeddings the metadata records, checked: a hand-made or damaged file
    is an error naming the entry, not a KeyError."""

    def bad(key: str, what: str) -> DataError:
        return DataError(str(path), f"metadata '{key}' is not what `specc train` writes: {what}",
                         code=codes.BAD_MODEL_FILE)

    parsed = {}
    for key in ("specc.vocabs", "specc.embeddings"):
        try:
            parsed[key] = json.loads(meta.get(key, "{}"))
        except json.JSONDecodeError as err:
            raise bad(key, f"not JSON ({err})") from None
        if not isinstance(parsed[key], dict):
            raise bad(key, "not a JSON object")
    vocabs = {}
    for column, v in parsed["specc.vocabs"].items():
        if not isinstance(v, dict):
            raise bad("specc.vocabs", f"the entry of '{column}' is not an object")
        values, counts = v.get("values"), v.get("counts")
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            raise bad("specc.vocabs", f"the values of '{column}' are not a list of strings")
        if not isinstance(counts, list) or len(counts) != len(values) or \
                not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise bad("specc.vocabs", f"the counts of '{column}' are not a count per value")
        integer = v.get("integer")
        if not isinstance(integer, bool) or (integer and not all(as_int(x) is not None for x in values)):
            raise bad("specc.vocabs", f"'integer' of '{column}' does not say whether its values are whole numbers")
        vocabs[column] = Vocab(column, tuple(values), tuple(counts), integer, bool(v.get("unknown", True)))
    embeddings = {}
    for name, e in parsed["specc.embeddings"].items():
        if not isinstance(e, dict) or not isinstance(e.get("column"), str) or \
                not isinstance(e.get("dim"), int) or isinstance(e.get("dim"), bool) or e["dim"] < 1:
            raise bad("specc.embeddings", f"the entry of '{name}' is not a column and a width")
        if e["column"] not in vocabs:
            raise bad("specc.embeddings", f"embedding '{name}' is over '{e['column']}', which has no vocabulary")
        if not isinstance(e.setdefault("weight", f"{name}.weight"), str):  # older runs: the value's own name
            raise bad("specc.embeddings", f"the table of '{name}' is not named by a string")
        embeddings[name] = e
    return vocabs, embeddings


def read_names(names: NamesFile, column: str, vocab: Vocab) -> dict[str, str]:
    """id -> display name, from a text file whose first field (or the one its header names
    `column`) holds the id and the next (or the first) the name. Ids are matched as the model
    holds them: whole numbers by value ("007" is 7)."""
    path = names.path
    try:
        codec = codecs.lookup(names.encoding)
    except LookupError:
        raise UsageError(f"--names-encoding {names.encoding!r}: not an encoding Python knows "
                         "(e.g. utf-8, latin-1, cp1252)") from None
    check_regular(path)
    with open_binary(path) as f:
        data = f.read()
    encoding = "utf-8-sig" if codec.name == "utf-8" else codec.name  # a byte-order mark is no part of an id
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        # the line of the bad byte, where a newline is the byte 0x0a (ASCII-compatible encodings)
        line = data[:err.start].count(b"\n") + 1 if "\n".encode(codec.name) == b"\n" else None
        raise DataError(str(path), f"byte 0x{data[err.start]:02x} is not {codec.name} text; give the file's "
                        "encoding with --names-encoding (MovieLens' u.item is latin-1)", line=line,
                        code=codes.NOT_UTF8) from None
    first = text.split("\n", 1)[0].rstrip("\r")
    delimiter = names.delimiter or max(DELIMITERS, key=lambda d: len(_fields(first, d)))
    shown = "tab" if delimiter == "\t" else f"'{delimiter}'"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise DataError(str(path), f"cannot be parsed: {err}", line=reader.line_num, code=codes.MALFORMED_CSV) from None
    rows = [(n, row) for n, row in rows if row and row != [""]]
    if not rows:
        raise DataError(str(path), "the file is empty", code=codes.NO_ROWS)
    if len(rows[0][1]) < 2:
        raise DataError(str(path), f"expected an id and a name on each line, split by {shown}; line "
                        f"{rows[0][0]} has one field (another delimiter? --names-delimiter)", line=rows[0][0],
                        code=codes.DATA_SHAPE)
    header = names.header
    if header is None:
        header = _key(rows[0][1][0], vocab) not in set(vocab.values)
    key, name = 0, 1
    if header:
        fields = [h.strip() for h in rows[0][1]]
        if column in fields:
            key = fields.index(column)
            name = 1 if key == 0 else 0
        rows = rows[1:]
    found = {}
    for _, row in rows:
        if len(row) > max(key, name):
            found[_key(row[key], vocab)] = row[name].strip()
    if not set(found) & set(vocab.values):
        raise DataError(str(path), f"none of its ids is an id of '{column}' in the model (read with the delimiter "
                        f"{shown}, {'a' if header else 'no'} header, the id in field {key + 1}): see --names-delimiter "
                        "and --names-header", code=codes.NAMES_DO_NOT_MATCH)
    return found


def _fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _key(text: str, vocab: Vocab) -> str:
    """An id as the vocabulary writes it."""
    text = text.strip()
    if vocab.integer:
        number = as_int(text)
        return str(number) if number is not None else text
    return text


def _label(vocab: Vocab, index: int, names: dict[str, str]) -> str:
    value = vocab.values[index - 1]
    key = str(int(value)) if vocab.integer else value
    shown = names.get(key)
    return f"{shown} [{vocab.column} {value}]" if shown else f"{vocab.column} {value}"


def pca(factors: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Scores of each row on the first k principal components, and each one's share of variance
    (zero when the rows do not vary)."""
    centred = factors - factors.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    total = var.sum()
    return centred @ vt[:k].T, var[:k] / total if total > 0 else np.zeros(min(k, len(var)))


def _table(weights, unreadable, path: Path, name: str, emb: dict, vocab: Vocab, chosen: np.ndarray) -> np.ndarray:
    """An embedding's rows for the chosen ids, checked: there, a 2-d float table with a row per id
    and the unknown row, as wide as the metadata says, and finite."""
    key = emb["weight"]

    def bad(what: str) -> DataError:
        return DataError(str(path), f"tensor '{key}' (embedding '{name}' of '{vocab.column}') {what}",
                         code=codes.BAD_MODEL_FILE)

    if key in unreadable:
        raise bad(f"cannot be read with numpy ({unreadable[key]})")
    if key not in weights:
        raise DataError(str(path), f"has no tensor '{key}' for embedding '{name}' (it holds: "
                        f"{', '.join(sorted(weights)[:10]) or 'no tensors'})", code=codes.BAD_MODEL_FILE)
    table = weights[key]
    if table.ndim != 2 or table.dtype.kind != "f":
        raise bad(f"holds {describe_array(table)}; an embedding is a 2-d table of floats")
    if table.shape != (vocab.size, emb["dim"]):
        raise bad(f"has shape {tuple(table.shape)}, but {len(vocab.values)} ids and the unknown row of "
                  f"width {emb['dim']} make ({vocab.size}, {emb['dim']})")
    rows = table[chosen].astype(np.float64)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        k = int(np.argmax(~finite))
        raise bad(f"holds NaN or infinite values (in the row of id {vocab.values[chosen[k] - 1]}): the file is "
                  "damaged, or training diverged")
    return rows


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a run's embeddings of one id column learned, over its `top` most frequent ids (labels
    in order of frequency): each bias (dim 1) by embedding name, and each wider embedding's scores on
    its first three principal components with their shares of the variance (None: too few ids);
    `widths` each embedding's width, in the model's order."""

    column: str
    categories: int
    labels: tuple[str, ...]
    widths: dict
    biases: dict
    components: dict


def inspection(run: Path, column: str | None = None, names_file: NamesFile | None = None,
               top: int = 1000) -> Inspection:
    """The biases and principal components of `column`'s embeddings (default: the last id column)."""
    weights, meta, unreadable = load_run(run)
    path = run / "model.safetensors"
    vocabs, embeddings = _metadata(meta, path)
    if not embeddings:
        raise UsageError(f"{run}: the model has no embeddings to inspect")
    columns = list(dict.fromkeys(e["column"] for e in embeddings.values()))
    if column is None:
        column = columns[-1]  # the seed inspects the items (movies), the last id column
    if column not in columns:
        raise UsageError(f"--column {column!r}: the embeddings are over {', '.join(columns)}")
    vocab = vocabs[column]
    names = read_names(names_file, column, vocab) if names_file else {}
    counts = np.asarray(vocab.counts)
    order = np.argsort(-counts, kind="stable")[:top]
    chosen = order + 1  # vocabulary indices (0 is the unknown row)
    widths, biases, components = {}, {}, {}
    for name, emb in embeddings.items():
        if emb["column"] != column:
            continue
        widths[name] = emb["dim"]
        table = _table(weights, unreadable, path, name, emb, vocab, chosen)
        if emb["dim"] == 1:
            biases[name] = table[:, 0]
        elif len(chosen) < 2:
            components[name] = None
        else:
            try:
                components[name] = pca(table, 3)
            except np.linalg.LinAlgError as err:  # finite, but too large to decompose
                raise DataError(str(path), f"tensor '{name}.weight': its factors cannot be decomposed ({err})",
                                code=codes.BAD_MODEL_FILE) from None
    labels = tuple(_label(vocab, k, names) for k in chosen)
    return Inspection(column, len(vocab.values), labels, widths, biases, components)


def report(run: Path, column: str | None = None, names_file: NamesFile | None = None, top: int = 1000,
           show: int = 10) -> str:
    """The lowest and highest biases and the ends of the first three principal components of the
    factors, over the `top` most frequent ids of `column`."""
    found = inspection(run, column, names_file, top)
    labels, column = found.labels, found.column
    lines = [f"{column}: {found.categories} categories; the {len(labels)} most frequent in training are shown"]
    for name, width in found.widths.items():
        if name in found.biases:
            bias = found.biases[name]
            ranked = np.argsort(bias, kind="stable")
            lines.append(f"\nbias '{name}': lowest")
            lines += [f"  {bias[r]:+.3f}  {labels[r]}" for r in ranked[:show]]
            lines.append(f"bias '{name}': highest")
            lines += [f"  {bias[r]:+.3f}  {labels[r]}" for r in ranked[::-1][:show]]
            continue
        if found.components[name] is None:
            lines.append(f"\nfactors '{name}' ({width} wide): too few ids for principal components")
            continue
        scores, share = found.components[name]
        for c in range(scores.shape[1]):
            ranked = np.argsort(scores[:, c], kind="stable")
            lines.append(f"\nfactors '{name}' ({width} wide): principal component {c + 1}"
                         f" ({share[c]:.1%} of the variance)")
            lines.append("  one end:")
            lines += [f"    {scores[r, c]:+.3f}  {labels[r]}" for r in ranked[:show]]
            lines.append("  other end:")
            lines += [f"    {scores[r, c]:+.3f}  {labels[r]}" for r in ranked[::-1][:show]]
    return "\n".join(lines)
