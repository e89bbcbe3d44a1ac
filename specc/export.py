"""Export: trained fx GraphModule -> a self-contained ONNX model, checked against torch.

The ONNX graph takes the raw input columns (ids as they appear in the data, as strings or int64)
and maps them to vocabulary indices with ai.onnx.ml LabelEncoder (unseen ids -> 0, the unknown
row); then it runs the model, translated node by node from the fx graph, so that its node names
are the spec's; the output is named after the target."""

from __future__ import annotations

import json
import operator

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper, numpy_helper

from specc.data.prepare import Prepared, Vocab, vocabs_to_json
from specc.spec import CATEGORY, FLOAT, Spec

OPSET = 17
ML_OPSET = 2  # LabelEncoder-2: int64 and string keys
PARITY_TOLERANCE = 1e-4
PARITY_ROWS = 2048


class ExportError(Exception):
    """The exported model does not reproduce torch's outputs."""


class _Emitter:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: dict[tuple, str] = {}

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.constants:
            name = f"const_{len(self.constants)}"
            self.initializers.append(numpy_helper.from_array(arr, name))
            self.constants[key] = name
        return self.constants[key]

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        self.initializers.append(numpy_helper.from_array(tensor.detach().cpu().float().numpy(), name))
        return name


def _label_encoder(em: _Emitter, col: str, vocab: Vocab, output: str) -> str:
    """Raw id -> vocabulary index, 0 for an id never seen in training."""
    values = list(range(1, vocab.size))
    if vocab.integer:
        keys = dict(keys_int64s=[int(v) for v in vocab.values])
    else:
        keys = dict(keys_strings=list(vocab.values))
    return em.node("LabelEncoder", [col], output, domain="ai.onnx.ml", values_int64s=values, default_int64=0,
                   **keys)


def _operand(em: _Emitter, arg, names: dict) -> str:
    if isinstance(arg, fx.Node):
        return names[arg.name]
    return em.const(float(arg))


def to_onnx(spec: Spec, model: fx.GraphModule, vocabs: dict[str, Vocab]) -> onnx.ModelProto:
    """Translate the lowered model, with input lookup and output naming, into ONNX."""
    em = _Emitter()
    inputs = []
    names: dict[str, str] = {}
    kinds = {c.name: c.kind for c in spec.data.inputs}
    modules = dict(model.named_modules())
    for fnode in model.graph.nodes:
        if fnode.op == "placeholder":
            col = fnode.target
            if kinds[col] == CATEGORY:
                vocab = vocabs[col]
                dtype = TensorProto.INT64 if vocab.integer else TensorProto.STRING
                inputs.append(helper.make_tensor_value_info(col, dtype, ["N"]))
                names[fnode.name] = _label_encoder(em, col, vocab, f"{col}_index")
            else:
                inputs.append(helper.make_tensor_value_info(col, TensorProto.FLOAT, ["N"]))
                names[fnode.name] = em.node("Unsqueeze", [col, em.const([1], np.int64)], f"{col}_column")
        elif fnode.op == "call_module":
            module = modules[fnode.target]
            if isinstance(module, torch.nn.Embedding):
                weight = em.weight(f"{fnode.target}.weight", module.weight)
                names[fnode.name] = em.node("Gather", [weight, names[fnode.args[0].name]], fnode.name, axis=0)
            else:
                raise TypeError(f"no ONNX translation for module {type(module).__name__}")
        elif fnode.op == "call_function":
            args = [_operand(em, a, names) for a in fnode.args]
            target = fnode.target
            if target in (operator.add, operator.sub, operator.mul, operator.truediv):
                op = {operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul", operator.truediv: "Div"}[target]
                names[fnode.name] = em.node(op, args, fnode.name)
            elif target is torch.sum:
                axes = em.const([fnode.kwargs["dim"]], np.int64)
                names[fnode.name] = em.node("ReduceSum", [args[0], axes], fnode.name,
                                            keepdims=int(fnode.kwargs["keepdim"]))
            elif target is torch.sigmoid:
                names[fnode.name] = em.node("Sigmoid", args, fnode.name)
            else:
                raise TypeError(f"no ONNX translation for {target}")
        elif fnode.op == "output":
            result = names[fnode.args[0].name]
    target = spec.data.target
    outputs = []
    if target.kind == FLOAT:
        # One number per row, named after the target.
        em.node("Reshape", [result, em.const([-1], np.int64)], target.name)
        outputs.append(helper.make_tensor_value_info(target.name, TensorProto.FLOAT, ["N"]))
    graph = helper.make_graph(em.nodes, spec.name, inputs, outputs, em.initializers)
    onnx_model = helper.make_model(
        graph, producer_name="specc", opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    onnx_model.ir_version = 8  # readable by onnxruntime 1.14 and later
    meta = {
        "specc.spec": spec.source.text,
        "specc.target": target.name,
        "specc.inputs": json.dumps([{"name": c.name, "kind": c.kind} for c in spec.data.inputs
                                    if c.name in spec.model.inputs]),
        "specc.vocabs": vocabs_to_json(vocabs),
        "specc.reading": json.dumps({"delimiter": spec.data.source.delimiter}),
    }
    helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def raw_feed(spec: Spec, vocabs: dict[str, Vocab], raw: dict[str, list], rows: slice) -> dict[str, np.ndarray]:
    """Raw column values shaped as the ONNX model's inputs."""
    feed = {}
    for col in spec.model.inputs:
        values = raw[col][rows]
        if col in vocabs:
            vocab = vocabs[col]
            if vocab.integer:
                feed[col] = np.array([int(v) for v in values], dtype=np.int64)
            else:
                feed[col] = np.array([str(v) for v in values], dtype=object)
        else:
            feed[col] = np.asarray(values, dtype=np.float32)
    return feed


def parity_rows(spec: Spec, prepared: Prepared) -> dict[str, list]:
    """Validation rows as read, plus rows whose ids were never seen in training."""
    rows = min(PARITY_ROWS, prepared.n_valid)
    raw = {c: list(prepared.raw_valid[c][:rows]) for c in spec.model.inputs}
    for col in spec.model.inputs:
        vocab = prepared.vocabs.get(col)
        if vocab is None:
            continue
        unseen = str(max(int(v) for v in vocab.values) + 1) if vocab.integer else "<never seen>"
        for other in spec.model.inputs:  # one row with just this id unseen
            raw[other].append(unseen if other == col else raw[other][0])
    return raw


def parity(spec: Spec, model: fx.GraphModule, onnx_bytes: bytes, vocabs: dict[str, Vocab],
           raw: dict[str, list]) -> float:
    """Max |onnxruntime - torch| on raw rows; raises ExportError above the tolerance."""
    from specc.infer import Session

    n = len(next(iter(raw.values())))
    feed = raw_feed(spec, vocabs, raw, slice(0, n))
    got = Session(onnx_bytes, device="cpu").run(feed)[spec.data.target.name]
    model = model.cpu().eval()
    with torch.no_grad():
        args = []
        for col in spec.model.inputs:
            if col in vocabs:
                args.append(torch.from_numpy(vocabs[col].lookup(raw[col])))
            else:
                args.append(torch.tensor(np.asarray(raw[col], dtype=np.float32)))
        want = model(*args)[:, 0].numpy()
    diff = float(np.max(np.abs(got - want))) if n else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime and torch differ by {diff:.3g} on {n} rows "
                          f"(tolerance {PARITY_TOLERANCE:g})")
    return diff
