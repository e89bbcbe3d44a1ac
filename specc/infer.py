"""Infer: ONNX model + raw rows -> predictions, through onnxruntime (CUDA provider when a GPU is there)."""

from __future__ import annotations

import csv
import ctypes
import functools
import json
from pathlib import Path

import numpy as np

from specc.data.table import read_table
from specc.diagnostics import DataError
from specc.spec import CATEGORY, FLOAT, Column, CsvSource

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
        self.host_inputs = _lookup_inputs(model) if self.device == "cuda" else set()

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.outputs, feed)
        return dict(zip(self.outputs, results))

    @property
    def device(self) -> str:
        """Where the session's inputs and outputs live: 'cuda' with the CUDA provider, else 'cpu'."""
        return "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def run_bound(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """As `run`, through IO binding: the inputs are copied to the session's device once and the
        outputs stay there until the end (on the GPU: no copies between the nodes' kernels and the
        host). String inputs go as they are."""
        bound = self.bind(feed)
        bound.run()
        return bound.outputs()

    def bind(self, feed: dict[str, np.ndarray]) -> Bound:
        """The feed copied to the session's device once, for runs that leave it there (see Bound)."""
        return Bound(self, feed)


def _lookup_inputs(model: bytes | str | Path) -> set[str]:
    """The graph inputs read only by vocabulary lookups (ai.onnx.ml LabelEncoder, which runs on the
    CPU whatever the provider): bound in host memory, they are not copied to the GPU and back."""
    import onnx

    graph = (onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))).graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.domain)
    return {i.name for i in graph.input if readers.get(i.name) == {"ai.onnx.ml"}}


class Bound:
    """A feed bound to a session's device, its outputs bound there too: `run()` runs the model with
    nothing copied between host and device, `outputs()` copies the last results to the host. For
    serving the same buffers again and again, and for timing the model alone. Inputs that only
    vocabulary lookups read stay in host memory, where those lookups run."""

    def __init__(self, session: Session, feed: dict[str, np.ndarray]):
        import onnxruntime as ort

        self.session = session
        self.binding = session.session.io_binding()
        self.values = []  # the device copies must outlive the runs
        for name, values in feed.items():
            values = np.ascontiguousarray(values)
            if values.dtype == object or name in session.host_inputs:
                self.values.append(values)
                self.binding.bind_cpu_input(name, values)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(values, session.device, 0)
                self.values.append(value)
                self.binding.bind_ortvalue_input(name, value)
        for name in session.outputs:
            self.binding.bind_output(name, session.device)

    def run(self) -> None:
        self.session.session.run_with_iobinding(self.binding)

    def outputs(self) -> dict[str, np.ndarray]:
        return dict(zip(self.session.outputs, self.binding.copy_outputs_to_cpu()))


def reading_options(session: Session, path: Path) -> CsvSource:
    """How to read a CSV for this model: the options the spec read its training data with."""
    opts = json.loads(session.metadata.get("specc.reading", "{}"))
    columns = opts.get("columns")
    return CsvSource(path, opts.get("delimiter", ","), opts.get("header", True),
                     tuple(columns) if columns else None, None, tuple(opts.get("missing", ())),
                     bool(opts.get("strip", False)))


def read_inputs(path: Path, session: Session, target: str | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The model's input columns (and `target`, if asked) from a CSV, read as the training data was
    (delimiter, header or given column names, missing-value markers, stripping), typed as the
    model's inputs want them: ids as int64 or strings, numbers as float32 with NaN where missing."""
    shown = str(path)
    if not path.is_file():
        raise DataError(shown, "file not found", code="D101")
    source = reading_options(session, path)
    wanted_names = list(session.inputs) + ([target] if target else [])
    with open(path, newline="", encoding="utf-8") as f:
        first = next(csv.reader(f, delimiter=source.delimiter), None)
    if first is None:
        raise DataError(shown, "the file is empty", code="D102")
    header = list(source.columns) if source.columns else [h.strip() for h in first]
    absent = [name for name in wanted_names if name not in header]
    if absent:
        what = "target" if absent == [target] else "input"
        raise DataError(shown, f"missing {what} column{'s' if len(absent) > 1 else ''} "
                        f"{', '.join(repr(m) for m in absent)} (the header has: {', '.join(header)})",
                        line=1, code="D107")
    kinds = {name: FLOAT if _NUMPY.get(kind) is np.float32 else CATEGORY for name, kind in session.inputs.items()}
    if target:
        kinds[target] = CATEGORY if session.metadata.get("specc.target_kind") == CATEGORY else FLOAT
    wanted = tuple(Column(name, kinds[name], None) for name in wanted_names)
    table = read_table(source, wanted)
    feed = {}
    for name in wanted_names:
        values = table.columns[name]
        kind = session.inputs.get(name)
        if kind is None:  # the target: as read
            feed[name] = values
        elif _NUMPY.get(kind) is np.float32:
            feed[name] = values.astype(np.float32)
        elif _NUMPY.get(kind) is np.int64:
            feed[name] = _ids(values, table, name)
        else:
            feed[name] = np.asarray([str(v) for v in values], dtype=object)
    return feed, table.rows


def _ids(values: np.ndarray, table, name: str) -> np.ndarray:
    """Whole-number ids for an int64 input, or an error at the first value that is not one."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    for k, text in enumerate(values):
        try:
            int(text)
        except ValueError:
            raise DataError(table.path, f"expected a whole number (the model's ids are integers), found '{text}'",
                            line=table.line(k), column=name, code="D104") from None
    return np.asarray([int(v) for v in values], dtype=np.int64)


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
    run = session.run_bound if session.device == "cuda" else session.run  # IO binding on the GPU
    for s in range(0, n, batch):
        got = run({k: v[s:s + batch] for k, v in feed.items()})
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
