"""Infer: ONNX model + raw rows (or image files) -> predictions, through onnxruntime (CUDA provider
when a GPU is there)."""

from __future__ import annotations

import csv
import ctypes
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specc.data.files import bad_byte, check_regular, describe_array, first_not_text, has_surrogates, load_npz, \
    not_utf8, npz_array, open_binary, open_text
from specc.data.images import SUFFIXES as IMAGE_SUFFIXES, BrokenImage, decode, images_below
from specc.data.prepare import INT64_MAX, INT64_MIN
from specc.data.table import Table, header_problem, read_table, shown_names
from specc.language.diagnostics import DataError, UsageError, os_text, printable
from specc.language.spec import CATEGORY, FLOAT, IMAGE_COLUMN, IMAGE_MODES, Column, CsvSource

PROBABILITIES = "probabilities"  # the class probabilities output (specc.export, which imports torch)
_NUMPY = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(string)": object,
          "tensor(double)": np.float64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}
IMAGE_BATCH = 256  # images decoded and run at a time: a folder's pixels are never all held at once


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


def import_onnxruntime():
    """onnxruntime, its telemetry off unless the user says otherwise: from 1.29 on Linux it writes a
    device id and a SQLite file under ~/.cache/Microsoft/DeveloperTools/ from every process that
    loads it, and may upload events. ORT_DISABLE_TELEMETRY=1, its switch, is read as it loads; a
    user's own ORT_DISABLE_TELEMETRY is left as it is."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def providers(device: str = "auto") -> list[str]:
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available and gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Session:
    """An onnxruntime session over a specc model, fed by column name."""

    def __init__(self, model: bytes | str | Path, device: str = "auto", threads: int | None = None):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:  # a benchmark's pinned threads (default: onnxruntime's, one per core)
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers(device))
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.shapes = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.model = model
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.host_inputs = _lookup_inputs(model) if self.device == "cuda" else set()

    @functools.cached_property
    def nan_safe(self) -> set[str]:
        """The inputs the model fills or flags where a value is missing (see nan_safe_inputs)."""
        return nan_safe_inputs(self.model)

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
        ort = import_onnxruntime()
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


def load_session(model: Path, device: str = "auto") -> Session:
    """A session over a model file a user names, or an error that says why it cannot be one."""
    state = import_onnxruntime().capi.onnxruntime_pybind11_state
    check_regular(model)
    try:
        return Session(model, device=device)
    except (state.InvalidProtobuf, state.InvalidGraph, state.Fail, state.InvalidArgument, state.NoSuchFile,
            state.NotImplemented) as err:
        text = str(err)
        found = re.match(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (.*)", text, re.S)
        if found:  # "... : INVALID_PROTOBUF : Load model from m.onnx failed:Protobuf parsing failed."
            text = f"{found[1].lower()}: {found[2].split('failed:', 1)[-1].strip()}"
        raise DataError(str(model), f"is not an ONNX model onnxruntime can load ({text})", code="D108") from None


def nan_safe_inputs(model: bytes | str | Path) -> set[str]:
    """The float inputs a missing value (NaN) cannot harm: every use of the input tests it with IsNaN
    first, to fill it (fill_missing: Where(IsNaN(x), median, x)) or to flag it (a missing-value
    indicator), possibly after a scale. A NaN in any other input would reach the weights."""
    import onnx

    graph = (onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))).graph
    readers: dict[str, list] = {}
    producer = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node

    def tested(name: str) -> bool:
        def is_nan_of(cond: str) -> bool:
            made = producer.get(cond)
            return made is not None and made.op_type == "IsNaN" and list(made.input) == [name]

        for node in readers.get(name, []):
            if node.op_type == "IsNaN":
                continue
            if node.op_type == "Where" and list(node.input[1:]).count(name) == 1 and node.input[2] == name \
                    and is_nan_of(node.input[0]):
                continue
            if node.op_type in ("Mul", "Div") and node.input[0] == name and tested(node.output[0]):
                continue  # a column's scale (`/ 255`), then the test
            return False
        return True

    return {i.name for i in graph.input if tested(i.name)}


def reading_options(session: Session, path: Path) -> CsvSource:
    """How the spec read its training data (a model trained on arrays: a CSV with a header)."""
    opts = json.loads(session.metadata.get("specc.reading", "{}"))
    columns = opts.get("columns")
    return CsvSource(path, opts.get("delimiter", ","), opts.get("header", True),
                     tuple(columns) if columns else None, None, tuple(opts.get("missing", ())),
                     bool(opts.get("strip", False)))


@dataclass
class Inputs:
    """What a file gave the model: the feed, typed as the model's inputs want it; the target's
    values as read (evaluate); the inputs as the user wrote them where the feed differs (an id past
    int64 fed as an unknown id); notes for the user; where each row is, for messages."""

    feed: dict[str, np.ndarray]
    rows: int
    target: np.ndarray | None = None
    shown: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: Table | None = None  # a CSV's rows
    arrays: dict[str, str] = field(default_factory=dict)  # an .npz's: column -> array name
    path: str = ""
    split_done: bool = False  # the arrays are already the rows of the split asked for (x_valid)
    order: np.ndarray | None = None  # after take(): the file's row of each row kept
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # a column predict writes back as given (the target's)

    def error(self, index, column: str, message: str, code: str = "D104", whole: bool = False) -> DataError:
        """An error about a value of a column (row `index`, or an element's index tuple): at its
        line in a CSV, at its index in an array; `whole`: about the whole array."""
        row = index[0] if isinstance(index, tuple) else index
        if self.order is not None:  # a row of a split: the file's row
            row = int(self.order[row])
            index = (row, *index[1:]) if isinstance(index, tuple) else row
        if self.table is not None:
            line = None if whole else self.table.line(row)
            return DataError(self.path, message, line=line, column=column, code=code)
        name = self.arrays[column]
        if whole:
            return DataError(self.path, f"array '{name}' {message}", code=code)
        at = index[0] if isinstance(index, tuple) and len(index) == 1 else index
        return DataError(self.path, f"array '{name}', index {at}: {message}", code=code)

    def take(self, rows: np.ndarray) -> None:
        """Keep only these rows (a split), in this order."""
        self.feed = {k: v[rows] for k, v in self.feed.items()}
        self.shown = {k: v[rows] for k, v in self.shown.items()}
        if self.target is not None:
            self.target = self.target[rows]
        self.order = rows if self.order is None else self.order[rows]
        self.rows = len(rows)


DELIMITERS = (",", "\t", ";", "|")


def read_inputs(path: Path, session: Session, target: str | None = None, delimiter: str | None = None,
                keep: str | None = None) -> Inputs:
    """The model's input columns (and `target`, if asked) from a CSV: one with a header naming them
    (the delimiter is `delimiter`, else the training data's or the first of , tab ; | that finds
    them all), or one laid out as the spec read its training data (no header, its `columns`). The
    training data's missing-value markers and stripping apply. Ids come as int64 or strings,
    numbers as float32; NaN only where the model fills or flags it. `keep`: a column read as
    text, as given, where the file has one (predict writes the target's back beside the prediction)."""
    shown = str(path)
    training = reading_options(session, path)
    wanted = list(session.inputs) + ([target] if target else [])
    first = _first_line(path)
    tried = [delimiter] if delimiter else list(dict.fromkeys((training.delimiter, *DELIMITERS)))
    best: tuple[str, list[str]] | None = None
    source = None
    for d in tried:
        names = [n.strip() for n in _split(first, d)]
        if all(name in names for name in wanted):
            source = CsvSource(path, d, True, None, None, training.missing, training.strip)
            break
        if best is None or len(names) > len(best[1]):
            best = (d, names)
    if source is None:
        layout = training.columns is not None and delimiter in (None, training.delimiter)
        if layout and len(_split(first, training.delimiter)) == len(training.columns) and \
                all(name in training.columns for name in wanted):
            source = training  # the training data's layout: its delimiter and column names
        else:
            raise _missing_columns(shown, wanted, target, best, first, training if layout else None)
    kinds = {name: FLOAT if _NUMPY.get(kind) is np.float32 else CATEGORY for name, kind in session.inputs.items()}
    if target:
        kinds[target] = CATEGORY if session.metadata.get("specc.target_kind") == CATEGORY else FLOAT
    header = list(training.columns) if source is training else [n.strip() for n in _split(first, source.delimiter)]
    kept = [keep] if keep and keep not in wanted and keep in header else []
    kinds.update({name: CATEGORY for name in kept})  # as text: predict writes it back as given
    table = read_table(source, tuple(Column(name, kinds[name], None) for name in wanted + kept))
    got = Inputs({}, table.rows, table=table, path=table.path)
    for name in session.inputs:
        got.feed[name] = _typed(session, name, table.columns[name], got)
    if target:
        got.target = table.columns[target]
    got.kept = {name: table.columns[name] for name in kept}
    return got


def _first_line(path: Path) -> str:
    """The file's first line (a byte-order mark skipped), for finding its header and delimiter."""
    with open_text(path) as f:
        first = f.readline(1 << 20).rstrip("\r\n")
        if not first and not f.read(1):
            raise DataError(str(path), "the file is empty", code="D102")
    if has_surrogates(first):
        raise not_utf8(str(path), 1, byte=bad_byte(first))
    return first


def _split(line: str, delimiter: str) -> list[str]:
    """A line's fields; a line the csv module will not split (a field past its size limit) is one."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return [line]


def _shown_delimiter(d: str) -> str:
    return "tab" if d == "\t" else f"'{d}'"


def _missing_columns(path: str, wanted: list[str], target: str | None, best: tuple[str, list[str]], first: str,
                     training: CsvSource | None) -> DataError:
    """No header names every column the model needs (and, for a model trained on a file without
    one, line 1 is no row laid out as that file was): say what is missing and what line 1 has (its
    names as parsed, never the raw line)."""
    d, names = best
    absent = [name for name in wanted if name not in names]
    problem = header_problem(names)
    has = f"line 1 {problem}" if problem else f"the header has: {shown_names(names)}"
    missing = f"{', '.join(repr(m) for m in absent)}"
    if training is None:
        what = "target" if absent == [target] else "input"
        return DataError(path, f"{missing_text(absent, what)} ({has})", line=1, code="D107")
    fields = len(_split(first, training.delimiter))
    partial = not problem and len(absent) < len(wanted)  # a header, but short of some columns
    detail = f"; as a header it names {shown_names(names)}, not {missing}" if partial else ""
    return DataError(path, f"line 1 is neither a header naming the model's columns ({shown_names(wanted)}) nor a "
                     f"row laid out as the training data was: {len(training.columns)} "
                     f"{_shown_delimiter(training.delimiter)}-separated fields "
                     f"({shown_names(list(training.columns))}), no header; it has {fields} "
                     f"field{'s' if fields != 1 else ''}{detail}", line=1, code="D107")


def missing_text(absent: list[str], what: str = "input") -> str:
    """`missing input column 'item'`: the words for columns the model needs and was not given."""
    return f"missing {what} column{'s' if len(absent) > 1 else ''} {', '.join(repr(m) for m in absent)}"


def _typed(session: Session, name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """One input's values as the model takes them, or an error at the first value that cannot be."""
    kind = _NUMPY.get(session.inputs[name], object)
    if kind in (np.float32, np.float64):
        return _numbers(session, name, values, got, kind)
    if kind is np.int64:
        return _ids(session, name, values, got)
    if kind is np.uint8:
        return _pixels(name, values, got)
    if kind is object:
        return _texts(name, values, got)
    return values.astype(kind)


def _numbers(session: Session, name: str, values: np.ndarray, got: Inputs, dtype) -> np.ndarray:
    """Numbers, finite; NaN (a missing value) only where the model fills or flags it."""
    if values.dtype.kind not in "iufb":
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes numbers",
                        whole=True)
    wide = values.astype(np.float64)
    with np.errstate(over="ignore"):  # a number too large for float32 becomes inf: reported below
        out = wide.astype(dtype)
    nan = np.isnan(wide)
    if nan.any() and name in session.nan_safe:  # (asked only then: it reads the graph)
        nan[...] = False
    bad = nan | np.isinf(out)  # inf as given, or a number too large for float32
    if not bad.any():
        return out
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    value = wide[index]
    if np.isnan(value):
        message = (f"expected a number, found a missing value (NaN); the model was not trained to fill "
                   f"missing values of '{name}' (fill_missing)")
    elif np.isinf(value):
        message = f"expected a finite number, found {value}"
    else:
        message = f"{value:g} is too large for the model's float32 input"
    raise got.error(index, name, message, code="D105")


def _pixels(name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """An image model's pixels as uint8: whole numbers from 0 to 255 (of any numeric type), or an
    error at the first that is not one."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind not in "iuf":
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes pixels "
                        "(whole numbers from 0 to 255)", whole=True)
    with np.errstate(invalid="ignore"):
        bad = ~((values >= 0) & (values <= 255) & (values == np.floor(values)))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise got.error(index, name, f"expected a pixel (a whole number from 0 to 255), found {values[index]}",
                        code="D105")
    return values.astype(np.uint8)


def _ids(session: Session, name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """Whole-number ids as int64. One past int64 was never seen in training, so it is fed as an id
    the model maps to the unknown row (and shown as given); anything else is an error at the first
    value that is not a whole number."""
    kind = values.dtype.kind
    if kind == "i":
        return values.astype(np.int64)
    far = np.zeros(len(values), dtype=bool)
    if kind == "u":
        far = values > INT64_MAX
        out = np.where(far, 0, values).astype(np.int64)
    elif kind == "f":
        whole = np.isfinite(values) & (values == np.floor(values))
        if not whole.all():
            k = int(np.argmax(~whole))
            raise got.error(k, name, f"expected a whole number (the model's ids are integers), found {values[k]}")
        far = (values >= 2.0 ** 63) | (values < -2.0 ** 63)
        out = np.where(far, 0, values).astype(np.int64)
    elif kind in "OUS":
        out = np.empty(len(values), dtype=np.int64)
        for k, text in enumerate(values):
            number = _whole(text)
            if number is None:
                shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
                raise got.error(k, name, f"expected a whole number (the model's ids are integers), found '{shown}'")
            if INT64_MIN <= number <= INT64_MAX:
                out[k] = number
            else:
                far[k] = True
    else:
        raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes whole-number ids",
                        whole=True)
    if far.any():
        unknown = _unknown_id(session, name)
        if unknown is None:
            k = int(np.argmax(far))
            raise got.error(k, name, f"the id {values[k]} does not fit the model's int64 input")
        out[far] = unknown
        got.shown[name] = np.asarray([_whole(v) if isinstance(v, (str, bytes)) else int(v) for v in values],
                                     dtype=object)
        count = int(far.sum())
        got.notes.append(f"column '{name}': {count} id{'s' if count > 1 else ''} past the int64 range "
                         f"(the first: {got.shown[name][int(np.argmax(far))]}) never seen in training; the model "
                         f"reads {'them' if count > 1 else 'it'} as an unknown id")
    return out


def _whole(text) -> int | None:
    try:
        return int(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError):
        return None


def _unknown_id(session: Session, name: str) -> int | None:
    """An int64 id the model never saw: one below its smallest id (or above its largest), the ids
    the export's parity check proves map to the unknown row."""
    vocab = json.loads(session.metadata.get("specc.vocabs", "{}")).get(name)
    if not vocab or not vocab.get("values"):
        return None
    ids = sorted(int(v) for v in vocab["values"])
    if ids[0] > INT64_MIN:
        return ids[0] - 1
    return ids[-1] + 1 if ids[-1] < INT64_MAX else None


def _texts(name: str, values: np.ndarray, got: Inputs) -> np.ndarray:
    """Category values as strings: text as it is, whole numbers written out."""
    kind = values.dtype.kind
    if kind in "OU":
        if (k := first_not_text(values)) is not None:  # onnxruntime takes UTF-8 strings only
            raise got.error(k, name, f"holds a string that is not UTF-8 text ('{printable(str(values[k]))}')",
                            code="D102")
        return np.asarray([str(v) for v in values], dtype=object)
    if kind == "S":
        out = np.empty(len(values), dtype=object)
        for k, raw in enumerate(values):
            try:
                out[k] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise got.error(k, name, "holds bytes that are not UTF-8 text", code="D102") from None
        return out
    if kind in "iu":
        return np.asarray([str(int(v)) for v in values], dtype=object)
    raise got.error(0, name, f"holds {describe_array(values)}; the model's input '{name}' takes categories "
                    "(text or whole numbers)", whole=True)


SUFFIXES = {"all": ("", "_test", "_valid"), "valid": ("_valid", ""), "train": ("_train", "")}


def read_arrays(path: Path, session: Session, target: str | None = None, arrays: dict[str, str] | None = None,
                split: str = "all") -> Inputs:
    """The model's inputs (and `target`, if asked) from an .npz file, never unpickling: the array
    `arrays` names for a column, else the column's name with the first suffix of SUFFIXES[split]
    that every other column has too (`x`, `x_test`, `x_valid`: the same suffix for all)."""
    shown = str(path)
    wanted = list(session.inputs) + ([target] if target else [])
    arrays = dict(arrays or {})
    strange = [c for c in arrays if c not in wanted]
    if strange:
        raise UsageError(f"--array {strange[0]}=...: the model has no column '{strange[0]}' "
                         f"(it reads {', '.join(wanted)})")
    archive = load_npz(path)
    with archive:
        files = list(archive.files)
        listed = ", ".join(sorted(files)) or "no arrays"
        for column, name in arrays.items():
            if name not in files:
                raise DataError(shown, f"has no array '{name}' (--array {column}={name}); it holds: {listed}",
                                code="D107")
        rest = [c for c in wanted if c not in arrays]
        suffix = next((x for x in SUFFIXES[split] if all(f"{c}{x}" in files for c in rest)), None)
        if suffix is None:
            column = next(c for c in rest if not any(f"{c}{x}" in files for x in SUFFIXES[split]))
            tried = " or ".join(f"'{column}{x}'" for x in SUFFIXES[split])
            if all(any(f"{c}{x}" in files for x in SUFFIXES[split]) for c in rest):
                column, tried = rest[0], "arrays of one suffix for every column"
            raise DataError(shown, f"has no array for the model's column '{column}' (looked for {tried}); it holds: "
                            f"{listed}; name it with --array {column}=NAME", code="D107")
        chosen = {c: arrays.get(c, f"{c}{suffix}") for c in wanted}
        data = {c: npz_array(archive, chosen[c], shown) for c in wanted}
    got = Inputs({}, 0, arrays=chosen, path=shown)
    got.split_done = split != "all" and suffix != "" and not arrays
    shapes = {c: _row_shape(session, c) for c in wanted}
    for c in wanted:
        data[c] = _shaped(data[c], shapes[c], c, got)
    counts = {chosen[c]: len(data[c]) for c in wanted}
    if len(set(counts.values())) > 1:
        raise DataError(shown, "the arrays have different numbers of rows ("
                        + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")", code="D103")
    got.rows = next(iter(counts.values()))
    if got.rows == 0:
        raise DataError(shown, f"the arrays {', '.join(chosen.values())} have no rows", code="D102")
    for name in session.inputs:
        got.feed[name] = _typed(session, name, data[name], got)
    if target:
        got.target = data[target]
    return got


def _row_shape(session: Session, column: str) -> tuple | None:
    """The shape of one row of an input (None where the model does not fix it); () for the target."""
    shape = session.shapes.get(column)
    if shape is None:
        return ()
    rest = tuple(shape[1:])
    return rest if all(isinstance(d, int) for d in rest) else None


def _shaped(arr: np.ndarray, want: tuple | None, column: str, got: Inputs) -> np.ndarray:
    """An array with one row per example, each of the shape the model takes ((N, 1) for one value is fine)."""
    name = got.arrays[column]
    if arr.ndim == 0:
        raise DataError(got.path, f"array '{name}' is a single value ({describe_array(arr)}); the model's column "
                        f"'{column}' needs one row per example", code="D103")
    if want is None:
        return arr
    rows = tuple(arr.shape[1:])
    if want == () and rows == (1,):
        return arr[:, 0]
    if rows != want:
        def rows_of(shape):
            return "one value per row" if shape == () else f"rows of shape {shape}"

        raise DataError(got.path, f"array '{name}' holds {describe_array(arr)}: {rows_of(rows)}, but the model's "
                        f"column '{column}' takes {rows_of(want)}", code="D103")
    return arr


def is_npz(path: Path) -> bool:
    """Arrays, not a CSV: an .npz (or .npy) by its name, or by its first bytes (a zip file's, or
    numpy's own) whatever its name; load_npz says what a file that is not an archive is."""
    if path.suffix in (".npz", ".npy"):
        return True
    with open_binary(path) as f:
        start = f.read(6)
    return start == b"\x93NUMPY" or start[:4] == b"PK\x03\x04"


def read_rows(path: Path, session: Session, target: str | None = None, delimiter: str | None = None,
              arrays: dict[str, str] | None = None, split: str = "all", keep: str | None = None) -> Inputs:
    """The inputs (and target) from a CSV or an .npz file, whichever `path` is; `keep`: see read_inputs."""
    check_regular(path)
    if is_npz(path):
        if delimiter is not None:
            raise UsageError(f"--delimiter: {path} is an .npz archive, not a CSV")
        return read_arrays(path, session, target, arrays, split)
    if arrays:
        raise UsageError(f"--array names arrays of an .npz archive; {path} is a CSV (its header names the columns)")
    return read_inputs(path, session, target, delimiter, keep)


def _columns(session: Session, got: Inputs, results: dict[str, np.ndarray]):
    """CSV columns: scalar inputs as given, the target's column where the file has one, then the
    outputs (a probability per class apiece); an output named as a column before it takes the
    suffix `_pred`, as fastai's show_results names its predictions (`salary` beside `salary_pred`)."""
    names, columns = [], []
    for name, values in got.feed.items():
        if values.ndim == 1:
            names.append(name)
            columns.append(got.shown.get(name, values))
    names += list(got.kept)
    columns += list(got.kept.values())
    more_names, more = _output_columns(session, results)
    for name in more_names:
        while name in names:
            name += "_pred"
        names.append(name)
    return names, columns + more


def _output_columns(session: Session, results: dict[str, np.ndarray]):
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


def predict_file(model: Path, rows: Path, out, device: str = "auto", batch: int = 65536,
                 delimiter: str | None = None, arrays: dict[str, str] | None = None,
                 image_batch: int = IMAGE_BATCH) -> int:
    """Write the inputs (one value per row) and the model's outputs as CSV; returns the row count.
    `rows` is a CSV (see read_inputs) or an .npz with an array per input (see read_arrays); for a
    model trained on an image folder, an image file or a folder of them (see predict_images).
    Notes (ids read as unknown) go to stderr."""
    session = load_session(model, device=device)
    reading = image_reading(session, model)
    if reading is not None and (rows.is_dir() or not is_npz(rows)):
        if delimiter is not None or arrays:
            raise UsageError(f"--{'delimiter' if delimiter is not None else 'array'}: the model reads images, "
                             f"and {rows} is {'a folder of them' if rows.is_dir() else 'read as one'}")
        return predict_images(session, reading, rows, out, image_batch)
    got = read_rows(rows, session, delimiter=delimiter, arrays=arrays, keep=session.metadata.get("specc.target"))
    for note in got.notes:
        print(f"specc: note: {note}", file=sys.stderr)
    feed, n = got.feed, got.rows
    parts: dict[str, list] = {name: [] for name in session.outputs}
    run = session.run_bound if session.device == "cuda" else session.run  # IO binding on the GPU
    for s in range(0, n, batch):
        result = run({k: v[s:s + batch] for k, v in feed.items()})
        for name in session.outputs:
            parts[name].append(result[name])
    results = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
    names, columns = _columns(session, got, results)
    _write_csv(out, names, columns, n)
    return n


CSV_CHUNK = 65536  # rows turned into text at a time


def _write_csv(out, names: list[str], columns: list, n: int) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for s in range(0, n, CSV_CHUNK):
        writer.writerows(zip(*(cell_texts(c[s:s + CSV_CHUNK]) for c in columns)))


def cell_texts(values) -> list[str]:
    """Values as CSV or JSON text: a float as the shortest decimal that reads back as the same
    float of its width (numpy's str: a float32 in at most 9 digits, as `specc serve` answers),
    never rounded to fewer; anything else as str."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return values.astype(str).tolist()
    return [str(v) for v in values]


# ---------------------------------------------------------------- image files


@dataclass(frozen=True, slots=True)
class ImageReading:
    """How a model trained on an images(...) folder takes an image: as its input `column`, decoded
    in `mode` and resized to `size` (height, width), as training decoded the folder."""

    column: str
    mode: str
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image as the model takes it: (channels, height, width)."""
        return (IMAGE_MODES[self.mode], *self.size)


def image_reading(session: Session, model: Path) -> ImageReading | None:
    """How the model reads images (its metadata's specc.reading), or None for a model of rows."""
    opts = json.loads(session.metadata.get("specc.reading", "{}"))
    if opts.get("format") != "images":
        return None
    mode, size = opts.get("mode"), opts.get("size")
    if mode not in IMAGE_MODES or not isinstance(size, list) or len(size) != 2 or \
            not all(isinstance(d, int) and d > 0 for d in size):
        raise DataError(str(model), f"its metadata specc.reading ({json.dumps(opts)}) has no image mode and size "
                        "as specc writes them", code="D108")
    reading = ImageReading(IMAGE_COLUMN, mode, (size[0], size[1]))
    kind, shape = session.inputs.get(IMAGE_COLUMN), session.shapes.get(IMAGE_COLUMN, [])
    if list(session.inputs) != [IMAGE_COLUMN] or kind != "tensor(uint8)" or shape[1:] != list(reading.shape):
        got = ", ".join(f"'{n}': {t} {session.shapes[n]}" for n, t in session.inputs.items())
        raise DataError(str(model), f"reads {mode} images of {size[0]}x{size[1]} by its metadata, but its inputs are "
                        f"not one uint8 batch 'image' (N, {', '.join(map(str, reading.shape))}): {got}", code="D108")
    return reading


def image_files(path: Path) -> tuple[list[Path], list[str]]:
    """The images `path` names, with each one's name for the output: the file itself (named as
    given), or every image in a folder and the folders below it (named by their path below it),
    sorted by that path; hidden files and folders are left out, a folder linked twice read once, and
    links are followed only within the folder (see images_below). A name that is not UTF-8 is
    written with \\xNN for each byte that is not (os_text)."""
    if not path.is_dir():
        check_regular(path)
        return [path], [os_text(str(path))]
    found = [relative for relative, _, _ in images_below(path, path)]
    if not found:
        raise DataError(printable(str(path)), f"holds no images (files ending {', '.join(IMAGE_SUFFIXES)}, in it or "
                        "in folders below it)", code="D111")
    return [path / relative for relative in found], [os_text(relative) for relative in found]


def decode_images(paths: list[Path], reading: ImageReading) -> np.ndarray:
    """Images decoded as training decoded its folder (Pillow, the model's mode and size): uint8
    (N, C, H, W); one that cannot be decoded is an error naming it and Pillow's reason."""
    batch = np.empty((len(paths), *reading.shape), dtype=np.uint8)
    for k, path in enumerate(paths):
        try:
            batch[k] = decode(path, reading.mode, reading.size)
        except BrokenImage as err:
            raise DataError(printable(str(path)), f"cannot be decoded as an image: {err}", code="D110") from None
    return batch


def run_images(session: Session, reading: ImageReading, paths: list[Path],
               batch: int = IMAGE_BATCH) -> dict[str, np.ndarray]:
    """The model's outputs for image files, decoded and run `batch` images at a time (only the
    outputs are kept, so a large folder never has all its pixels in memory)."""
    run = session.run_bound if session.device == "cuda" else session.run  # IO binding on the GPU
    parts: dict[str, list] = {name: [] for name in session.outputs}
    for s in range(0, len(paths), batch):
        result = run({reading.column: decode_images(paths[s:s + batch], reading)})
        for name in session.outputs:
            parts[name].append(result[name])
    return {name: np.concatenate(p) for name, p in parts.items()}


def predict_images(session: Session, reading: ImageReading, path: Path, out, batch: int = IMAGE_BATCH) -> int:
    """Write each image's name (see image_files) and the model's outputs for it as CSV; returns the
    image count. Nothing is written when an image cannot be decoded."""
    paths, names = image_files(path)
    results = run_images(session, reading, paths, batch)
    out_names, columns = _output_columns(session, results)
    _write_csv(out, ["file", *out_names], [names, *columns], len(paths))
    return len(paths)
