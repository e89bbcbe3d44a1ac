"""Infer: ONNX model + raw rows -> predictions, through onnxruntime (CUDA provider when a GPU is there)."""

from __future__ import annotations

import csv
import ctypes
import functools
import json
from pathlib import Path

import numpy as np

from specc.diagnostics import DataError

_NUMPY = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(string)": object,
          "tensor(double)": np.float64, "tensor(int32)": np.int32}


@functools.cache
def gpu_present() -> bool:
    """True when an NVIDIA driver answers with at least one device. onnxruntime-gpu lists the
    CUDA provider even without one, and asking for it then prints errors before falling back."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False
    count = ctypes.c_int(0)
    try:
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except AttributeError:
        return False


def providers(device: str = "auto") -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available and gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Session:
    """An onnxruntime session over a specc model, fed by column name."""

    def __init__(self, model: bytes | str | Path, device: str = "auto"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers(device))
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.outputs, feed)
        return dict(zip(self.outputs, results))


def read_inputs(path: Path, session: Session, delimiter: str | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Read the model's input columns from a CSV with a header, typed as the model wants them."""
    if delimiter is None:
        delimiter = json.loads(session.metadata.get("specc.reading", "{}")).get("delimiter", ",")
    shown = str(path)
    if not path.is_file():
        raise DataError(shown, "file not found", code="D101")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(shown, "the file is empty", code="D102")
        header = [h.strip() for h in header]
        missing = [name for name in session.inputs if name not in header]
        if missing:
            raise DataError(shown, f"missing input column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(m) for m in missing)} (the header has: {', '.join(header)})",
                            line=1, code="D107")
        index = {name: header.index(name) for name in session.inputs}
        values: dict[str, list] = {name: [] for name in session.inputs}
        lines = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(shown, f"expected {len(header)} fields, found {len(row)}", line=reader.line_num,
                                code="D103")
            lines.append(reader.line_num)
            for name, k in index.items():
                values[name].append(row[k])
    feed = {}
    for name, kind in session.inputs.items():
        dtype = _NUMPY.get(kind, object)
        raw = values[name]
        if dtype is object:
            feed[name] = np.array(raw, dtype=object)
            continue
        try:
            feed[name] = np.array(raw if dtype is not np.int64 else [int(v) for v in raw], dtype=dtype)
        except ValueError:
            for k, text in enumerate(raw):
                try:
                    int(text) if dtype is np.int64 else float(text)
                except ValueError:
                    what = "a whole number (the model's ids are integers)" if dtype is np.int64 else "a number"
                    raise DataError(shown, f"expected {what}, found '{text}'", line=lines[k], column=name,
                                    code="D104") from None
    return feed, len(lines)


def read_arrays(path: Path, session: Session) -> tuple[dict[str, np.ndarray], int]:
    """The model's inputs from an .npz file: the array of each input's name (or `<name>_valid`)."""
    shown = str(path)
    if not path.is_file():
        raise DataError(shown, "file not found", code="D101")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(shown, f"is not a readable .npz file ({err})", code="D102") from None
    feed = {}
    with archive:
        for name, kind in session.inputs.items():
            key = name if name in archive.files else f"{name}_valid"
            if key not in archive.files:
                raise DataError(shown, f"has no array '{name}' (it holds: {', '.join(sorted(archive.files))})",
                                code="D107")
            try:
                arr = archive[key]
            except ValueError:
                raise DataError(shown, f"array '{key}' holds Python objects; specc never unpickles data",
                                code="D102") from None
            dtype = _NUMPY.get(kind, object)
            feed[name] = arr.astype(str).astype(object) if dtype is object else arr.astype(dtype)
    counts = {len(v) for v in feed.values()}
    if len(counts) != 1:
        raise DataError(shown, "the input arrays have different numbers of rows", code="D103")
    return feed, counts.pop()


def _columns(session: Session, feed: dict[str, np.ndarray], results: dict[str, np.ndarray]):
    """CSV columns: scalar inputs as given, then the outputs; a probability per class apiece."""
    names, columns = [], []
    for name, values in feed.items():
        if values.ndim == 1:
            names.append(name)
            columns.append(values)
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


def predict_file(model: Path, rows: Path, out, device: str = "auto", batch: int = 65536) -> int:
    """Write the inputs (one value per row) and the model's outputs as CSV; returns the row count.
    `rows` is a CSV with a header, or an .npz with an array per input."""
    session = Session(model, device=device)
    if rows.suffix == ".npz":
        feed, n = read_arrays(rows, session)
    else:
        feed, n = read_inputs(rows, session)
    parts: dict[str, list] = {name: [] for name in session.outputs}
    for s in range(0, n, batch):
        got = session.run({k: v[s:s + batch] for k, v in feed.items()})
        for name in session.outputs:
            parts[name].append(got[name])
    results = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
    names, columns = _columns(session, feed, results)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for k in range(n):
        writer.writerow([_cell(c[k]) for c in columns])
    return n


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)
