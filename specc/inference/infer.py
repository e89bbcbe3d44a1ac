"""Predict: an exported model + rows (a CSV, an .npz, a Parquet file) or images -> the model's
outputs as CSV, through onnxruntime (CUDA provider when a GPU is there). A file is read by the
reader of the source that recognises it, else by the model's own source's (specc.data.sources),
and typed as the model's inputs by specc.inference.columns; the session is specc.inference.session."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from specc.data.sources import SOURCES, TEXT, SourceDef, source_def
from specc.inference.columns import IMAGE_BATCH, Ask, Inputs
from specc.inference.session import Session, load_session
from specc.language import codes
from specc.language.diagnostics import DataError

PROBABILITIES = "probabilities"  # the class probabilities output (specc.export, which imports torch)


def recorded_source(session: Session) -> SourceDef:
    """The source the model's training data came from, as its metadata's specc.reading names it (a
    model that does not say reads text); one this specc does not declare is an error (D108)."""
    kind = session.reading.get("format", TEXT)
    if kind not in SOURCES:
        raise DataError(session.where, f"its metadata specc.reading names the source '{kind}', which this specc "
                        f"does not read (it reads {', '.join(SOURCES)}): was it written by a newer specc?",
                        code=codes.BAD_MODEL_FILE)
    return source_def(kind)


def reader_for(session: Session, path: Path) -> SourceDef:
    """The source whose reader reads `path` for this model: the one that recognises the file by its
    name or first bytes (an .npz, a Parquet file), else the model's own source where it reads what
    no source recognises (a CSV model's text, an image model's images), else text with a header."""
    own = recorded_source(session)
    for defn in SOURCES.values():
        if defn.recognises is not None and defn.recognises(path):
            return defn
    return own if own.recognises is None else source_def(TEXT)


def read_file(path: Path, session: Session, ask: Ask) -> Inputs:
    """What the file gives the model, as the reader for it reads it (see reader_for)."""
    return reader_for(session, path).reader(path, session, ask)


def run_inputs(session: Session, got: Inputs, batch: int) -> dict[str, np.ndarray]:
    """The model's outputs for every row of the inputs, `batch` rows a run (images: as many as their
    reader decodes at a time), through IO binding on the GPU."""
    run = session.run_bound if session.device == "cuda" else session.run
    parts: dict[str, list] = {name: [] for name in session.outputs}
    for feed in got.batches(batch):
        result = run(feed)
        for name in session.outputs:
            parts[name].append(result[name])
    return {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}


def predict_file(model: Path, rows: Path, out, device: str = "auto", batch: int = 65536,
                 delimiter: str | None = None, arrays: dict[str, str] | None = None,
                 image_batch: int = IMAGE_BATCH) -> int:
    """Write the inputs (one value per row) and the model's outputs as CSV; returns the row count.
    `rows` is a CSV (see read_text), an .npz with an array per input (see read_arrays) or a Parquet
    file; for a model trained on an image folder, an image file or a folder of them (see
    read_images). Notes (ids read as unknown) go to stderr."""
    names, columns, n, notes = predicted(model, rows, device, batch, delimiter, arrays, image_batch)
    for note in notes:
        print(f"specc: note: {note}", file=sys.stderr)
    write_csv(out, names, columns, n)
    return n


def predicted(model: Path, rows: Path, device: str = "auto", batch: int = 65536, delimiter: str | None = None,
              arrays: dict[str, str] | None = None, image_batch: int = IMAGE_BATCH):
    """predict_file's columns before they are text: (names, columns, row count, notes); Run.predict's frame."""
    session = load_session(model, device=device)
    ask = Ask(delimiter=delimiter, arrays=arrays, keep=session.metadata.get("specc.target"), image_batch=image_batch)
    got = read_file(rows, session, ask)
    results = run_inputs(session, got, batch)
    names, columns = csv_columns(session, got, results)
    return names, columns, got.rows, got.notes


def csv_columns(session: Session, got: Inputs, results: dict[str, np.ndarray]):
    """CSV columns: what the reader leads with (scalar inputs as given, the target's column where
    the file has one; an image's name), then the outputs (a probability per class apiece); an output
    named as a column before it takes the suffix `_pred`, as fastai's show_results names its
    predictions (`salary` beside `salary_pred`)."""
    names, columns = got.leading()
    more_names, more = output_columns(session, results)
    for name in more_names:
        while name in names:
            name += "_pred"
        names.append(name)
    return names, columns + more


def output_columns(session: Session, results: dict[str, np.ndarray]):
    """CSV columns of the outputs: the value or label, and a probability per class apiece."""
    names, columns = [], []
    target = session.metadata.get("specc.target")
    vocabs = json.loads(session.metadata.get("specc.vocabs", "{}"))
    classes = vocabs.get(target, {}).get("values")
    for name, values in results.items():
        if values.ndim == 1:
            names.append(name)
            columns.append(values)
        else:
            labels = classes if classes and len(classes) == values.shape[1] else range(values.shape[1])
            for k, label in enumerate(labels):
                names.append(f"probability_{label}")
                columns.append(values[:, k])
    return names, columns


CSV_CHUNK = 65536  # rows turned into text at a time


def write_csv(out, names: list[str], columns: list, n: int) -> None:
    """A header and `n` rows of the columns, turned into text CSV_CHUNK rows at a time (cell_texts). A chunk
    none of whose texts needs quoting (no delimiter, quote or line break, none empty) is joined as it is, as
    the csv module would write it, in a third of its time."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    numeric = [isinstance(c, np.ndarray) and c.dtype.kind in "fiub" for c in columns]  # never quoted: not looked at
    for s in range(0, n, CSV_CHUNK):
        texts = [cell_texts(c[s:s + CSV_CHUNK]) for c in columns]
        if all(number or not _any_quoted(t) for number, t in zip(numeric, texts)):
            out.write("\n".join(map(",".join, zip(*texts))) + "\n")
        else:
            writer.writerows(zip(*texts))


QUOTED = re.compile(r'[,"\r\n]|^$')  # what the csv module quotes (minimal quoting): a delimiter, a quote, a line
# break; and an empty text in a row of one column, which it writes as "" (checked per text here, to be safe)


def _any_quoted(texts: list[str]) -> bool:
    """Whether the csv module would quote one of the texts."""
    return any(QUOTED.search(t) for t in texts)


def cell_texts(values) -> list[str]:
    """Values as CSV or JSON text: a float as the shortest decimal that reads back as the same
    float of its width (numpy's str: a float32 in at most 9 digits, as `specc serve` answers),
    never rounded to fewer; anything else as str."""
    values = np.asarray(values)
    if values.dtype.kind in "fiu":  # numpy's str of each, in C
        return values.astype(str).tolist()
    if values.dtype.kind == "O" and all(type(v) is str for v in values):
        return values.tolist()
    return [str(v) for v in values]
