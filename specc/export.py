"""Export: trained fx GraphModule -> a self-contained ONNX model, checked against torch.

The ONNX graph takes the raw input columns (ids as they appear in the data, as strings or int64)
and maps them to vocabulary indices (unseen ids -> 0, the unknown row): whole-number ids that are
dense enough through a table of plain ops, folded into the embeddings where they are small (see
DENSE_SPAN_RATIO), the others with ai.onnx.ml LabelEncoder; then it runs the model, translated
node by node from the fx graph, so that its node names are the spec's; the output is named after
the target."""

from __future__ import annotations

import json
import operator
from typing import NamedTuple

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper, numpy_helper

from specc.data.prepare import Prepared, Vocab, split_to_json, vocabs_to_json
from specc.spec import CATEGORY, FLOAT, CsvSource, Spec

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
        self.uses_ml = False  # an ai.onnx.ml operator was emitted

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes() if arr.dtype != object else repr(arr.tolist()))
        if key not in self.constants:
            name = f"const_{len(self.constants)}"
            self.initializers.append(numpy_helper.from_array(arr, name))
            self.constants[key] = name
        return self.constants[key]

    def opset_imports(self) -> list[onnx.OperatorSetIdProto]:
        """The standard opset, and ai.onnx.ml's where a LabelEncoder was emitted."""
        ml = [helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if self.uses_ml else []
        return [helper.make_opsetid("", OPSET), *ml]

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        return self.weight_array(name, tensor.detach().cpu().float().numpy())

    def weight_array(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name


# Whole-number ids are looked up in a table of plain ops (Clip, Gather, and a Sub when the ids start
# below 1) where the table is small: at most DENSE_SPAN_RATIO entries per id, or DENSE_ANYWAY in
# all. Every provider runs those where the model runs (on the GPU, beside the embeddings), where the
# LabelEncoder is a CPU kernel whatever the provider. An embedding of such ids is exported indexed
# by the id itself (its rows gathered through the table at export), so the lookup costs no node at
# all, where that at most doubles the embedding or adds at most COMPOSE_EXTRA numbers to it.
DENSE_SPAN_RATIO = 4
DENSE_ANYWAY = 65536
DENSE_LIMIT = 1 << 62  # ids this large fall back to the LabelEncoder: the shift below cannot wrap
COMPOSE_EXTRA = 1 << 18


class DenseIds(NamedTuple):
    """Raw ids clipped into a table's range, and the table: entry k is the vocabulary index of
    id k + offset; the ends and the holes are 0, the unknown index."""

    clipped: str
    table: np.ndarray


def _dense_ids(em: _Emitter, col: str, vocab: Vocab) -> DenseIds | None:
    """The ids of `col` clipped into a table's range, or None when they are not dense enough."""
    if not vocab.integer or not vocab.values:
        return None
    ids = np.array([int(v) for v in vocab.values], dtype=object)  # Python ints: no overflow here
    low, high = int(ids.min()), int(ids.max())
    most = max(DENSE_SPAN_RATIO * len(ids), DENSE_ANYWAY)  # numbers a table may span
    if not (-DENSE_LIMIT < low and high < DENSE_LIMIT and high - low + 1 <= most):
        return None
    # The table is indexed by the id itself when the ids start at 1 or above and that keeps it small
    # enough, else by id - low + 1 (a Sub more). Clip sends every id below and above the range to an
    # end of the table. With |ids| < 2**62 the Sub wraps only for ids outside the range, to values
    # Clip also sends to an end.
    offset = 0 if low >= 1 and high + 2 <= most else low - 1
    first, last = low - 1 - offset, high + 1 - offset  # the two ends
    table = np.zeros(last + 1, dtype=np.int64)
    table[(ids - offset).astype(np.int64)] = np.arange(1, len(ids) + 1)
    shifted = col if offset == 0 else em.node("Sub", [col, em.const(offset, np.int64)], f"{col}_shifted")
    clipped = em.node("Clip", [shifted, em.const(first, np.int64), em.const(last, np.int64)], f"{col}_clipped")
    return DenseIds(clipped, table)


def _composes(module: torch.nn.Module, dense: DenseIds) -> bool:
    """Whether this module is an embedding small enough to index by raw id (see COMPOSE_EXTRA)."""
    if not isinstance(module, torch.nn.Embedding):
        return False
    extra = (len(dense.table) - module.num_embeddings) * module.embedding_dim
    return len(dense.table) <= 2 * module.num_embeddings or extra <= COMPOSE_EXTRA


def _lookup(em: _Emitter, col: str, vocab: Vocab, dense: DenseIds | None) -> str:
    """Raw id -> vocabulary index, 0 for an id never seen in training: through the table where the
    ids are dense (`dense`, from _dense_ids), else with the LabelEncoder."""
    if dense:
        return em.node("Gather", [em.weight_array(f"{col}_vocabulary", dense.table), dense.clipped], f"{col}_index",
                       axis=0)
    em.uses_ml = True
    if vocab.integer:
        keys = dict(keys_int64s=[int(v) for v in vocab.values])
    else:
        keys = dict(keys_strings=list(vocab.values))
    return em.node("LabelEncoder", [col], f"{col}_index", domain="ai.onnx.ml", values_int64s=list(range(1, vocab.size)),
                   default_int64=0, **keys)


def _operand(em: _Emitter, arg, names: dict) -> str:
    if isinstance(arg, fx.Node):
        return names[arg.name]
    if isinstance(arg, int) and not isinstance(arg, bool):
        return em.const(arg, np.int64)  # e.g. the indices torch.where picks between
    return em.const(float(arg))


_BINARY_OPS = {operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul", operator.truediv: "Div"}
_UNARY_OPS = {torch.sigmoid: "Sigmoid", torch.relu: "Relu", torch.tanh: "Tanh"}
PROBABILITIES = "probabilities"


def _module(em: _Emitter, fnode: fx.Node, module: torch.nn.Module, x: str) -> str:
    """One call_module node as ONNX (modules in eval mode: dropout is the identity)."""
    name = fnode.target
    if isinstance(module, torch.nn.Embedding):
        return em.node("Gather", [em.weight(f"{name}.weight", module.weight), x], fnode.name, axis=0)
    if isinstance(module, torch.nn.Linear):
        return em.node("Gemm", [x, em.weight(f"{name}.weight", module.weight), em.weight(f"{name}.bias", module.bias)],
                       fnode.name, transB=1)
    if isinstance(module, torch.nn.BatchNorm1d):
        params = [em.weight(f"{name}.{k}", getattr(module, k)) for k in ("weight", "bias", "running_mean",
                                                                          "running_var")]
        return em.node("BatchNormalization", [x, *params], fnode.name, epsilon=float(module.eps))
    if isinstance(module, torch.nn.Dropout):
        return em.node("Identity", [x], fnode.name)
    raise TypeError(f"no ONNX translation for module {type(module).__name__}")  # lower/export mismatch


def _function(em: _Emitter, fnode: fx.Node, names: dict) -> str:
    """One call_function node as ONNX."""
    target, kw = fnode.target, fnode.kwargs
    if target is torch.unsqueeze:
        # The dim is a number, not an operand: it becomes the axes input, and turning it into an
        # operand as well would leave an initializer no node reads (onnxruntime warns on load).
        return em.node("Unsqueeze", [_operand(em, fnode.args[0], names), em.const([fnode.args[1]], np.int64)],
                       fnode.name)
    args = _operands(em, fnode.args, names)
    if target in _BINARY_OPS:
        return em.node(_BINARY_OPS[target], args, fnode.name)
    if target in _UNARY_OPS:
        return em.node(_UNARY_OPS[target], args, fnode.name)
    if target is torch.sum:
        return em.node("ReduceSum", [args[0], em.const([kw["dim"]], np.int64)], fnode.name,
                       keepdims=int(kw["keepdim"]))
    if target is torch.softmax:
        return em.node("Softmax", args, fnode.name, axis=kw["dim"])
    if target is torch.log_softmax:
        return em.node("LogSoftmax", args, fnode.name, axis=kw["dim"])
    if target is torch.flatten:
        return em.node("Flatten", args, fnode.name, axis=kw["start_dim"])
    if target is torch.cat:
        return em.node("Concat", args[0], fnode.name, axis=kw["dim"])
    if target is torch.isnan:
        return em.node("IsNaN", args, fnode.name)
    if target is torch.where:
        return em.node("Where", args, fnode.name)
    raise TypeError(f"no ONNX translation for {target}")  # lower/export mismatch


def _operands(em: _Emitter, args, names: dict) -> list:
    out = []
    for a in args:
        if isinstance(a, (tuple, list)):
            out.append([_operand(em, x, names) for x in a])
        else:
            out.append(_operand(em, a, names))
    return out


def to_onnx(spec: Spec, model: fx.GraphModule, vocabs: dict[str, Vocab]) -> onnx.ModelProto:
    """Translate the lowered model, with input lookups and output naming, into ONNX."""
    em = _Emitter()
    inputs = []
    names: dict[str, str] = {}
    dense: dict[str, DenseIds | None] = {}  # category placeholders -> their ids clipped for a table
    columns = {c.name: c for c in spec.data.inputs}
    modules = dict(model.named_modules())
    result = None
    for fnode in model.graph.nodes:
        if fnode.op == "placeholder":
            col = columns[fnode.target]
            if col.kind == CATEGORY:
                vocab = vocabs[col.name]
                dtype = TensorProto.INT64 if vocab.integer else TensorProto.STRING
                inputs.append(helper.make_tensor_value_info(col.name, dtype, ["N"]))
                dense[fnode.name] = ids = _dense_ids(em, col.name, vocab)
                if not ids or not all(_composes(modules.get(u.target), ids) for u in fnode.users):
                    # something other than a small embedding reads the index: look it up once
                    names[fnode.name] = _lookup(em, col.name, vocab, ids)
            elif col.shape:
                inputs.append(helper.make_tensor_value_info(col.name, TensorProto.FLOAT, ["N", *col.shape]))
                names[fnode.name] = col.name
            else:
                inputs.append(helper.make_tensor_value_info(col.name, TensorProto.FLOAT, ["N"]))
                names[fnode.name] = col.name
        elif fnode.op == "call_module":
            module, source = modules[fnode.target], dense.get(fnode.args[0].name)
            if source and _composes(module, source):  # the embedding's rows in raw-id order
                rows = module.weight.detach().cpu()[torch.from_numpy(source.table)]
                names[fnode.name] = em.node("Gather", [em.weight(f"{fnode.target}.weight_by_id", rows),
                                                       source.clipped], fnode.name, axis=0)
            else:
                names[fnode.name] = _module(em, fnode, module, names[fnode.args[0].name])
        elif fnode.op == "call_function":
            names[fnode.name] = _function(em, fnode, names)
        elif fnode.op == "output":
            result = names[fnode.args[0].name]
    outputs = _outputs(em, spec, vocabs, result)
    graph = helper.make_graph(em.nodes, spec.name, inputs, outputs, em.initializers)
    onnx_model = helper.make_model(graph, producer_name="specc", opset_imports=em.opset_imports())
    onnx_model.ir_version = 8  # readable by onnxruntime 1.14 and later
    source = spec.data.source
    meta = {
        "specc.spec": spec.source.text,
        "specc.target": spec.data.target.name,
        "specc.target_kind": spec.data.target.kind,
        "specc.split": json.dumps(split_to_json(spec.data.valid)),
        "specc.loss": spec.train.loss,
        "specc.metrics": json.dumps(list(spec.train.metrics)),
        "specc.inputs": json.dumps([{"name": c.name, "kind": c.kind, "shape": list(c.shape)}
                                    for c in spec.data.inputs if c.name in spec.model.inputs]),
        "specc.vocabs": vocabs_to_json(vocabs),
        "specc.reading": json.dumps({"format": "csv", "delimiter": source.delimiter, "header": source.header,
                                     "columns": list(source.columns) if source.columns else None,
                                     "missing": list(source.missing), "strip": source.strip}
                                    if isinstance(source, CsvSource) else {"format": "npz"}),
    }
    helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _outputs(em: _Emitter, spec: Spec, vocabs: dict[str, Vocab], result: str) -> list:
    """What a person wants back: the number for a float target; for classes, the probabilities
    (softmax applied where the loss took logits) and the label as the user's class value."""
    target = spec.data.target
    if target.kind == FLOAT:
        value = result
        if spec.train.loss == "bce_with_logits":  # trained on logits: give the probability
            value = em.node("Sigmoid", [result], f"{target.name}_probability")
        em.node("Reshape", [value, em.const([-1], np.int64)], target.name)
        return [helper.make_tensor_value_info(target.name, TensorProto.FLOAT, ["N"])]
    vocab = vocabs[target.name]
    if spec.train.loss == "nll":  # the model gives log-probabilities
        em.node("Exp", [result], PROBABILITIES)
    else:  # cross_entropy takes logits
        em.node("Softmax", [result], PROBABILITIES, axis=-1)
    index = em.node("ArgMax", [result], f"{target.name}_index", axis=1, keepdims=0)
    if vocab.integer:
        classes = em.const([int(v) for v in vocab.values], np.int64)
        label_type = TensorProto.INT64
    else:
        classes = em.const(np.array(vocab.values, dtype=object), object)
        label_type = TensorProto.STRING
    em.node("Gather", [classes, index], target.name, axis=0)
    return [helper.make_tensor_value_info(target.name, label_type, ["N"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", vocab.size])]


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
        for unseen in _unseen_ids(vocab):
            for other in spec.model.inputs:  # one row with just this id unseen
                raw[other].append(unseen if other == col else raw[other][0])
    if "fill_missing" in spec.data.procs:
        for col in spec.model.inputs:
            if col in (prepared.stats or {}):
                for other in spec.model.inputs:  # one row with just this value missing
                    raw[other].append(float("nan") if other == col else raw[other][0])
    return raw


def _unseen_ids(vocab: Vocab) -> list[str]:
    """Ids never seen in training, one of each kind a lookup treats apart: for whole numbers, one
    above and one below the range, and a hole inside it when there is one."""
    if not vocab.integer:
        return ["<never seen>"]
    ids = sorted(int(v) for v in vocab.values)
    holes = [a + 1 for a, b in zip(ids, ids[1:]) if b > a + 1]
    return [str(i) for i in [ids[-1] + 1, ids[0] - 1, *holes[:1]]]


def reference_outputs(spec: Spec, model: torch.nn.Module, vocabs: dict[str, Vocab], raw: dict[str, list]) -> dict:
    """What the exported model should return, computed by torch from the same raw rows."""
    model = model.cpu().eval()
    with torch.no_grad():
        args = []
        for col in spec.model.inputs:
            if col in vocabs:
                args.append(torch.from_numpy(vocabs[col].lookup(raw[col])))
            else:
                args.append(torch.tensor(np.asarray(raw[col], dtype=np.float32)))
        out = model(*args)
    target = spec.data.target
    if target.kind == FLOAT:
        value = torch.sigmoid(out) if spec.train.loss == "bce_with_logits" else out
        return {target.name: value[:, 0].numpy()}
    probs = out.exp() if spec.train.loss == "nll" else torch.softmax(out, dim=-1)
    values = vocabs[target.name].values
    labels = [values[k] for k in out.argmax(dim=-1).tolist()]
    if vocabs[target.name].integer:
        labels = [int(v) for v in labels]
    return {PROBABILITIES: probs.numpy(), target.name: np.array(labels, dtype=object)}


def parity(spec: Spec, model: fx.GraphModule, onnx_bytes: bytes, vocabs: dict[str, Vocab],
           raw: dict[str, list]) -> float:
    """Max |onnxruntime - torch| over the numeric outputs on raw rows (labels must agree where the
    top class is clear); raises ExportError above the tolerance."""
    from specc.infer import Session

    n = len(next(iter(raw.values())))
    feed = raw_feed(spec, vocabs, raw, slice(0, n))
    got = Session(onnx_bytes, device="cpu").run(feed)
    want = reference_outputs(spec, model, vocabs, raw)
    target = spec.data.target.name
    numeric = target if spec.data.target.kind == FLOAT else PROBABILITIES
    diff = float(np.max(np.abs(got[numeric] - want[numeric]))) if n else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime and torch differ by {diff:.3g} on {n} rows "
                          f"(tolerance {PARITY_TOLERANCE:g})")
    if numeric == PROBABILITIES:
        top2 = np.sort(want[PROBABILITIES], axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 10 * PARITY_TOLERANCE  # ties may break either way
        mismatched = [k for k in np.flatnonzero(clear) if got[target][k] != want[target][k]]
        if mismatched:
            k = mismatched[0]
            raise ExportError(f"onnxruntime predicts '{got[target][k]}' where torch predicts '{want[target][k]}' "
                              f"(row {k})")
    return diff
