"""The onnxruntime side of inference: an exported model -> a session that runs it (its CUDA provider
when a GPU is there, telemetry off), fed by column name, with IO binding for device-resident runs;
and what the graph tells about its inputs (which only lookups read, which a NaN cannot harm)."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from pathlib import Path

import numpy as np

from specc.data.files import check_regular
from specc.language import codes
from specc.language.diagnostics import DataError, os_text


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
        if not isinstance(source, bytes) and os_text(source) != source:
            source = Path(source).read_bytes()  # a name of bytes that are not UTF-8, which onnxruntime cannot take
        self.session = ort.InferenceSession(source, options, providers=providers(device))
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.shapes = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.model = model
        self.where = "the model" if isinstance(model, bytes) else str(model)  # as messages name it
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.host_inputs = lookup_inputs(model) if self.device == "cuda" else set()

    @functools.cached_property
    def nan_safe(self) -> set[str]:
        """The inputs the model fills or flags where a value is missing (see nan_safe_inputs)."""
        return nan_safe_inputs(self.model)

    @property
    def reading(self) -> dict:
        """How the training data was read (the metadata's specc.reading): {"format": its source's
        kind, and that source's options}; {} for a model that does not say."""
        return json.loads(self.metadata.get("specc.reading", "{}"))

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


def lookup_inputs(model: bytes | str | Path) -> set[str]:
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
        raise DataError(str(model), f"is not an ONNX model onnxruntime can load ({text})",
                        code=codes.BAD_MODEL_FILE) from None


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
