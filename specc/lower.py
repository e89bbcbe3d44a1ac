"""Lower: checked model -> torch.fx GraphModule whose node and submodule names are the spec's."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from specc.expand import expand
from specc.spec import (
    CLASSES, Activation, BatchNorm, Binary, Concat, Dot, Dropout, Embedding, Flatten, Input, Linear,
    MissingIndicator, ModelSpec, SigmoidRange,
)

_ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}

_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def init_embedding(module: nn.Embedding) -> None:
    """fastai's collab initialisation: truncated normal, std 0.01 (torch's N(0, 1) is far too wide
    for a dot product of 40 factors)."""
    nn.init.trunc_normal_(module.weight, std=0.01, a=-0.02, b=0.02)


def _size(dim, sizes: dict[str, int]) -> int:
    return sizes[CLASSES] if dim == CLASSES else dim


def lower(model: ModelSpec, vocab_sizes: dict[str, int], stats: dict | None = None,
          class_name: str = "SpecModel") -> fx.GraphModule:
    """Build the model as an fx graph. `vocab_sizes[column]` counts an input's unknown index 0 too;
    `vocab_sizes["classes"]` is the number of target classes, where the model uses it. `stats`
    holds each float column's training statistics (specc.data.prepare.ColumnStats) for the procs."""
    model = expand(model, vocab_sizes)
    root = nn.Module()
    graph = fx.Graph()
    raw: dict[str, fx.Node] = {col: graph.placeholder(col) for col in model.inputs}
    env: dict[str, fx.Node] = dict(raw)

    def emit(kind: str, target, args, kwargs=None, name=None) -> fx.Node:
        return graph.create_node(kind, target, tuple(args), kwargs or {}, name=name)

    for node in model.nodes:
        op = node.op
        if isinstance(op, Input):
            result = raw[op.column]
            if op.scale is not None:
                result = emit("call_function", operator.mul, [result, op.scale], name=f"{node.name}_scaled")
            if op.fill:  # fill_missing: NaN -> the training median
                missing = emit("call_function", torch.isnan, [result], name=f"{node.name}_missing")
                result = emit("call_function", torch.where, [missing, stats[op.column].median, result],
                              name=f"{node.name}_filled")
            if op.normalize:  # normalize: the training mean and standard deviation
                centred = emit("call_function", operator.sub, [result, stats[op.column].mean],
                               name=f"{node.name}_centred")
                result = emit("call_function", operator.truediv, [centred, stats[op.column].std],
                              name=f"{node.name}_normalized")
            if op.scalar:
                # one number per row arrives as (batch,); values are rows: (batch, 1)
                result = emit("call_function", torch.unsqueeze, [result, -1], name=f"{node.name}_column")
        elif isinstance(op, MissingIndicator):
            missing = emit("call_function", torch.isnan, [raw[op.column]], name=f"{node.name}_missing")
            result = emit("call_function", torch.where, [missing, 2, 1], name=node.name)
        elif isinstance(op, Embedding):
            module = nn.Embedding(vocab_sizes[op.column], op.dim)
            init_embedding(module)
            root.add_module(node.name, module)
            result = emit("call_module", node.name, [env[op.column]], name=node.name)
        elif isinstance(op, Dot):
            a, b = (env[n] for n in node.inputs)
            product = emit("call_function", operator.mul, [a, b], name=f"{node.name}_mul")
            result = emit("call_function", torch.sum, [product], {"dim": -1, "keepdim": True}, name=node.name)
        elif isinstance(op, Binary):
            fn = _BINARY[op.op]
            if op.constant is None:
                args = [env[n] for n in node.inputs]
            elif op.constant_first:
                args = [op.constant, env[node.inputs[0]]]
            else:
                args = [env[node.inputs[0]], op.constant]
            result = emit("call_function", fn, args, name=node.name)
        elif isinstance(op, SigmoidRange):
            squashed = emit("call_function", torch.sigmoid, [env[node.inputs[0]]], name=f"{node.name}_sigmoid")
            scaled = emit("call_function", operator.mul, [squashed, op.high - op.low],
                          name=node.name if op.low == 0 else f"{node.name}_scaled")
            result = scaled if op.low == 0 else emit("call_function", operator.add, [scaled, op.low], name=node.name)
        elif isinstance(op, Linear):
            src = model.node(node.inputs[0])
            root.add_module(node.name, nn.Linear(_size(src.shape[0], vocab_sizes), _size(op.out, vocab_sizes)))
            result = emit("call_module", node.name, [env[node.inputs[0]]], name=node.name)
        elif isinstance(op, BatchNorm):
            src = model.node(node.inputs[0])
            root.add_module(node.name, nn.BatchNorm1d(_size(src.shape[0], vocab_sizes)))
            result = emit("call_module", node.name, [env[node.inputs[0]]], name=node.name)
        elif isinstance(op, Dropout):
            root.add_module(node.name, nn.Dropout(op.p))
            result = emit("call_module", node.name, [env[node.inputs[0]]], name=node.name)
        elif isinstance(op, Activation):
            x = env[node.inputs[0]]
            if op.kind in _ACTIVATIONS:
                result = emit("call_function", _ACTIVATIONS[op.kind], [x], name=node.name)
            else:
                fn = torch.softmax if op.kind == "softmax" else torch.log_softmax
                result = emit("call_function", fn, [x], {"dim": -1}, name=node.name)
        elif isinstance(op, Flatten):
            result = emit("call_function", torch.flatten, [env[node.inputs[0]]], {"start_dim": 1}, name=node.name)
        elif isinstance(op, Concat):
            parts = tuple(env[n] for n in node.inputs)
            result = emit("call_function", torch.cat, [parts], {"dim": -1}, name=node.name)
        else:
            raise TypeError(f"no lowering for {op!r}")  # a checker/lowering mismatch: a bug
        result.meta["span"] = (node.span.source.path, node.span.line, node.span.column)
        result.meta["group"] = node.group
        env[node.name] = result
    graph.output(env[model.output])
    graph.lint()
    return fx.GraphModule(root, graph, class_name=class_name)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
