"""Export: trained fx GraphModule -> a self-contained ONNX model.

The ONNX graph takes the raw input columns (ids as they appear in the data, as strings or int64)
and maps them to vocabulary indices (specc.export.ids); then it runs the model, translated node by
node from the fx graph through the op table (specc.export.ops), so that its node names are the
spec's; the output is named after the target."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper

from specc.data.prepare import Vocab, vocabs_to_json
from specc.data.sources import source_def
from specc.data.split import split_to_json
from specc.export.emitter import Emitter
from specc.export.ids import DenseIds, composes, dense_ids, id_type, lookup
from specc.export.ops import function as translate_function, module as translate_module
from specc.language.spec import CATEGORIES, CATEGORY, FLOAT, Spec
from specc.model.lower import column_of
from specc.training import losses

PROBABILITIES = "probabilities"

# What the exported model returns from the model's output, for each `returns` a loss declares
# (specc.training.losses): (emitter, the output, the name to give) -> the value's name.
RETURNS = {
    "value": lambda em, out, name, exact=False: out,
    "sigmoid": lambda em, out, name, exact=False: em.node("Sigmoid", [out], name, exact=exact),
    "softmax": lambda em, out, name, exact=False: em.node("Softmax", [out], name, exact=exact, axis=-1),
    "exp": lambda em, out, name, exact=False: em.node("Exp", [out], name, exact=exact),
}


def to_onnx(spec: Spec, model: fx.GraphModule, vocabs: dict[str, Vocab], sides: dict | None = None) -> onnx.ModelProto:
    """Translate the lowered model, with input lookups and output naming, into ONNX; a side table's column
    (`sides`: specc.data.side.SideColumn by name) looked up inside the graph by its key, which the model
    takes in its place. (A recommender's, a spec of implicit feedback, is specc.export.topk.to_onnx_topk:
    ValueError here.)"""
    if spec.data.feedback is not None:
        raise ValueError("a model of implicit feedback is exported by specc.export.topk.to_onnx_topk")
    target = spec.data.target
    em = Emitter(reserved=(*spec.graph_inputs(), target.name, *([PROBABILITIES] if target.kind != FLOAT else [])))
    names: dict[str, str] = {}
    dense: dict[str, DenseIds | None] = {}  # category placeholders -> their ids clipped for a table
    columns = {c.name: c for c in spec.data.inputs}
    modules = dict(model.named_modules())
    placeholders = {column_of(fnode): fnode for fnode in model.graph.nodes if fnode.op == "placeholder"}
    inputs = [_input(em, spec, columns[name], placeholders[name], vocabs, modules, names, dense)
              if name in placeholders else _key_input(name, vocabs[name]) for name in spec.graph_inputs()]
    for name, fnode in placeholders.items():
        if columns[name].table is not None:
            if not sides or name not in sides:  # a bug: the caller forgot the prepared data's side columns
                raise ValueError(f"side table column '{name}' without its values (to_onnx's `sides`)")
            names[fnode.name] = side_lookup(em, sides[name])
    result = translate_body(em, model, names, dense)
    outputs = _outputs(em, spec, vocabs, result)
    return finished(em, spec, inputs, outputs, metadata(spec, vocabs))


def translate_body(em: Emitter, model: fx.GraphModule, names: dict[str, str],
                   dense: dict[str, DenseIds | None]) -> str:
    """The model's nodes after its placeholders (`names` gives what each placeholder reads) in ONNX;
    the name of its output. An embedding of ids in `dense` is indexed by the raw id."""
    modules = dict(model.named_modules())
    result = None
    for fnode in model.graph.nodes:
        if fnode.op == "call_module":
            module, source = modules[fnode.target], dense.get(fnode.args[0].name)
            if source and composes(fnode, module, source):  # the embedding's rows in raw-id order
                rows = module.weight.detach().cpu()[torch.from_numpy(source.table)]
                names[fnode.name] = em.node("Gather", [em.weight(f"{fnode.target}.weight_by_id", rows),
                                                       source.clipped], fnode.name, axis=0)
            else:
                names[fnode.name] = translate_module(em, fnode, module, names[fnode.args[0].name])
        elif fnode.op == "call_function":
            names[fnode.name] = translate_function(em, fnode, names)
        elif fnode.op == "output":
            result = names[fnode.args[0].name]
    return result


def finished(em: Emitter, spec: Spec, inputs: list, outputs: list, props: dict[str, str]) -> onnx.ModelProto:
    """The emitted nodes as a checked ONNX model with its inputs, outputs and metadata."""
    graph = helper.make_graph(em.nodes, spec.name, inputs, outputs, em.initializers)
    onnx_model = helper.make_model(graph, producer_name="specc", opset_imports=em.opset_imports())
    onnx_model.ir_version = 8  # readable by onnxruntime 1.14 and later
    helper.set_model_props(onnx_model, props)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _input(em: Emitter, spec: Spec, col, fnode: fx.Node, vocabs: dict[str, Vocab], modules: dict,
           names: dict[str, str], dense: dict) -> onnx.ValueInfoProto:
    """The graph input of an input column, as the user has its values, and what the model reads of
    it (`names`): a category's vocabulary index (or, where only small embeddings read it, its ids
    clipped for tables in raw-id order: `dense`), an image's pixels as floats, a number as it is."""
    if col.kind == CATEGORY:
        vocab = vocabs[col.name]
        dtype = id_type(vocab)
        dense[fnode.name] = ids = dense_ids(em, col.name, vocab)
        if not ids or not all(composes(u, modules.get(u.target), ids) for u in fnode.users):
            # something other than a small embedding reads the index: look it up once
            names[fnode.name] = lookup(em, col.name, vocab, ids)
        return helper.make_tensor_value_info(col.name, dtype, ["N"])
    if col.kind == CATEGORIES:  # (N, L): each row's ids, padded with SET_PAD_ID or SET_PAD_TEXT
        vocab = vocabs[col.name]
        dtype = id_type(vocab)
        names[fnode.name] = distinct(em, col.name, lookup(em, col.name, vocab, dense_ids(em, col.name, vocab)))
        return helper.make_tensor_value_info(col.name, dtype, ["N", f"{col.name}_size"])
    if col.kind != FLOAT:
        raise KeyError(f"no ONNX input for a {col.kind} column")  # a bug: a kind the export lacks
    if takes_pixels(spec, col.name):  # the raw uint8 batch (N, C, H, W): floats from here on
        names[fnode.name] = em.node("Cast", [col.name], f"{col.name}_pixels", to=TensorProto.FLOAT)
        return helper.make_tensor_value_info(col.name, TensorProto.UINT8, ["N", *col.shape])
    names[fnode.name] = col.name
    return helper.make_tensor_value_info(col.name, TensorProto.FLOAT, ["N", *col.shape])


def _key_input(name: str, vocab: Vocab) -> onnx.ValueInfoProto:
    """The graph input of a side table's key that the model reads nothing else of."""
    return helper.make_tensor_value_info(name, id_type(vocab), ["N"])


def side_lookup(em: Emitter, side) -> str:
    """A side table's column for each row (specc.data.side.SideColumn): the key's raw id looked up among the
    table's keys (once per table), then the column's value of that row; a key the table lacks, its fill."""
    label = f"{side.table}_{side.key}"
    row = em.once(label, lambda: lookup(em, side.key, side.keys, dense_ids(em, side.key, side.keys, label), label))
    values = em.weight_array(f"{side.table}_{side.name}_by_key", side.values)
    return em.node("Gather", [values, row], f"{side.table}_{side.name}", axis=0)


def distinct(em: Emitter, col: str, index: str) -> str:
    """A set's vocabulary indices (N, L) with each repeat of an index made 0 (as padding is), so that an id
    given twice in a row counts once, as it did in training: each row sorted (largest first), then every index
    equal to the one before it dropped. The pad and unknown ids are already 0."""
    width = em.node("Shape", [index], f"{col}_width", start=1, end=2)
    ordered, _ = em.nodes_of("TopK", [index, width], [f"{col}_sorted", f"{col}_sorted_at"], axis=1, largest=1,
                             sorted=1)
    axis, big = em.const([1], np.int64), em.const([1 << 62], np.int64)
    first = em.node("Slice", [ordered, em.const([0], np.int64), em.const([1], np.int64), axis], f"{col}_first")
    before = em.node("Slice", [ordered, em.const([0], np.int64), em.const([-1], np.int64), axis], f"{col}_before")
    rest = em.node("Slice", [ordered, em.const([1], np.int64), big, axis], f"{col}_rest")
    repeat = em.node("Equal", [rest, before], f"{col}_repeat")
    kept = em.node("Where", [repeat, em.const(0, np.int64), rest], f"{col}_rest_distinct")
    return em.node("Concat", [first, kept], f"{col}_distinct", axis=1)


def metadata(spec: Spec, vocabs: dict[str, Vocab]) -> dict[str, str]:
    """What the exported model records for predict, evaluate and serve: the spec, the target, the
    split, the loss and metrics, the inputs, the vocabularies, and how the data was read."""
    return {
        "specc.spec": spec.source.text,
        "specc.target": spec.data.target.name,
        "specc.target_kind": spec.data.target.kind,
        "specc.split": json.dumps(split_to_json(spec.data.valid)),
        "specc.loss": spec.train.loss,
        "specc.metrics": json.dumps(list(spec.train.metrics)),
        "specc.inputs": json.dumps([input_entry(c) for c in spec.data.inputs if c.name in spec.graph_inputs()]),
        "specc.vocabs": vocabs_to_json(vocabs),
        "specc.reading": json.dumps(source_def(spec.data.source.kind).reading(spec.data.source)),
    }


def input_entry(col) -> dict:
    """What the exported model records of an input column (specc.inputs), for the readers of new files: its kind
    and shape; a float column's columns in the file where it is read from several; a set column's separator and
    largest set."""
    entry = {"name": col.name, "kind": col.kind, "shape": list(col.shape)}
    if col.parts:
        entry["columns"] = list(col.parts)
    if col.kind == CATEGORIES:
        entry.update(sep=col.sep, max_size=col.max_size)
    return entry


def takes_pixels(spec: Spec, column: str) -> bool:
    """Whether the model's input `column` is the pixels of the spec's source (an image folder's
    `image`): it takes them as uint8."""
    return source_def(spec.data.source.kind).pixels == column


def _outputs(em: Emitter, spec: Spec, vocabs: dict[str, Vocab], result: str) -> list:
    """What a person wants back: the number for a float target; for classes, the probabilities
    (as the loss declares: softmax applied where it took logits) and the label as the user's class value."""
    target = spec.data.target
    returns = RETURNS[losses.loss(spec.train.loss).returns]
    if target.kind == FLOAT:
        value = returns(em, result, f"{target.name}_probability")  # bce_with_logits: the sigmoid of its logit
        em.node("Reshape", [value, em.const([-1], np.int64)], target.name, exact=True)
        return [helper.make_tensor_value_info(target.name, TensorProto.FLOAT, ["N"])]
    vocab = vocabs[target.name]
    returns(em, result, PROBABILITIES, exact=True)
    index = em.node("ArgMax", [result], f"{target.name}_index", axis=1, keepdims=0)
    if vocab.integer:
        classes = em.const([int(v) for v in vocab.values], np.int64)
    else:
        classes = em.const(np.array(vocab.values, dtype=object), object)
    em.node("Gather", [classes, index], target.name, exact=True, axis=0)
    return [helper.make_tensor_value_info(target.name, id_type(vocab), ["N"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", vocab.size])]
