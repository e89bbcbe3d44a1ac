"""Lower: sized model (specc.model.sized) -> torch.fx GraphModule whose node and submodule names are the spec's.

One entry of LOWERINGS per op of specc.model.ops, registered by name with `@lowers`: it adds the op's
nodes (and its submodule, for an op with weights) to the graph. Every fx node keeps the name of the
op that made it (`node.meta["op"]`), so that later stages read the op's declared facts (`op_of`,
`declared_modules`) rather than guess them from torch module types."""

from __future__ import annotations

import dataclasses
import itertools
import keyword
import operator
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from specc.language.spec import Node
from specc.model import ops
from specc.model.ops.base import OpDef
from specc.model.ops.conv import padding_of
from specc.model.sized import SizedModel


def init_embedding(module: nn.Embedding) -> None:
    """fastai's collab initialisation: truncated normal, std 0.01 (torch's N(0, 1) is far too wide
    for a dot product of 40 factors)."""
    nn.init.trunc_normal_(module.weight, std=0.01, a=-0.02, b=0.02)


class Lowering:
    """The graph being built: its submodules, and the fx node of every value made so far."""

    def __init__(self, model: SizedModel, stats: dict | None, tables: dict | None = None):
        self.model = model
        self.stats = stats or {}  # column -> specc.data.prepare.ColumnStats, for the procs
        self.tables = tables or {}  # history column -> its table (key index -> item indices, 0-padded)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.raw: dict[str, fx.Node] = {}
        for col, argument in zip(model.inputs, argument_names(model.inputs)):
            self.raw[col] = self.graph.placeholder(argument)
            self.raw[col].meta["column"] = col  # what column_of reads
        self.env: dict[str, fx.Node] = dict(self.raw)
        self.attributes = attribute_names(n.name for n in model.nodes)

    def call(self, target: Callable, args, name: str, **kwargs) -> fx.Node:
        """A call_function node named `name`."""
        return self.graph.create_node("call_function", target, tuple(args), kwargs, name=_value_name(name))

    def module(self, node: Node, module: nn.Module, x: fx.Node | None = None) -> fx.Node:
        """`module` as the submodule named after the node (attribute_names), called on `x`, by
        default the node's (one) input."""
        target = self.attributes[node.name]
        self.root.add_module(target, module)
        x = self.env[node.inputs[0]] if x is None else x
        return self.graph.create_node("call_module", target, (x,), {}, name=_value_name(node.name))

    def width(self, node: Node) -> int:
        """The feature count of the node's first input."""
        return self.model.node(node.inputs[0]).shape[0]

    def x(self, node: Node) -> fx.Node:
        return self.env[node.inputs[0]]


_PROBE = fx.GraphModule(nn.Module(), fx.Graph())


def attribute_names(names) -> dict[str, str]:
    """The submodule attribute that holds the weights of each of the spec's values `names`: the
    name itself, unless torch's module already has an attribute of that name (`half`, `train`,
    `graph`, ...) or it is a Python keyword (`class`, which fx's code cannot write): then the name with `_` appended (as fx does for a keyword) until it is free,
    taken by no other value either. A spec may name its values anything check accepts."""
    names = list(names)
    taken, out = set(names), {}
    for name in names:
        attribute = name
        if hasattr(_PROBE, attribute) or keyword.iskeyword(attribute):
            attribute += "_"
            while hasattr(_PROBE, attribute) or attribute in taken:
                attribute += "_"
            taken.add(attribute)
        out[name] = attribute
    return out


def argument_names(columns) -> list[str]:
    """The forward's argument for each input column: the column's name, unless that is `self` (the module
    itself) or a Python keyword (`class`, a column of many UCI files), which fx's code cannot take as an
    argument: then the name with `_` appended until it is no other column's. Export and ranking find each
    argument's column by column_of."""
    taken, out = set(columns), []
    for col in columns:
        argument = col
        if col == "self" or keyword.iskeyword(col):
            argument += "_"
            while argument in taken:
                argument += "_"
            taken.add(argument)
        out.append(argument)
    return out


def column_of(placeholder: fx.Node) -> str:
    """The input column a forward argument (an fx placeholder) takes."""
    return placeholder.meta.get("column", placeholder.target)


def _value_name(name: str) -> str:
    """A value's fx name: its own, but for `self`, which the forward's code already names (fx renames a
    keyword itself)."""
    return "self_" if name == "self" else name


Lower = Callable[[Lowering, Node], fx.Node]
LOWERINGS: dict[str, Lower] = {}


def lowers(*names: str) -> Callable[[Lower], Lower]:
    """Register the function as the lowering of the ops `names`."""
    def register(fn: Lower) -> Lower:
        for name in names:
            LOWERINGS[name] = fn
        return fn
    return register


def lower(model: SizedModel, stats: dict | None = None, class_name: str = "SpecModel",
          tables: dict | None = None) -> fx.GraphModule:
    """Build the model as an fx graph. `stats` holds each float column's training statistics
    (specc.data.prepare.ColumnStats) for the procs; `tables` each history column's table
    (specc.data.prepare.history_table), which its embedding_bag keeps as a buffer."""
    g = Lowering(model, stats, tables)
    for node in model.nodes:
        before = len(g.graph.nodes)
        result = LOWERINGS[node.op.name](g, node)
        for made in itertools.islice(reversed(g.graph.nodes), len(g.graph.nodes) - before):
            made.meta["op"] = node.op.name  # the op whose declared facts hold for this node
        # where a runtime error in this value is reported (at_spec_line)
        result.meta["span"] = (node.span.source.path, node.span.line, node.span.column)
        result.meta["group"] = node.group  # the layer group its weights train and freeze with
        g.env[node.name] = result
    g.graph.output(g.env[model.output])
    g.graph.lint()
    return fx.GraphModule(g.root, g.graph, class_name=class_name)


FACTS = frozenset(f.name for f in dataclasses.fields(OpDef) if isinstance(f.default, bool))  # OpDef's flags


def op_of(fnode: fx.Node) -> OpDef | None:
    """The declaration of the op whose lowering made `fnode` (None for an input or the output)."""
    name = fnode.meta.get("op")
    return None if name is None else ops.get(name)


def declared_modules(model: fx.GraphModule, fact: str) -> list[nn.Module]:
    """The submodules made by ops that declare `fact` (a flag of OpDef: "random_per_row",
    "lookup", "batch_statistics"), in graph order."""
    if fact not in FACTS:  # a misspelt fact would find nothing, quietly
        raise KeyError(f"OpDef has no flag {fact!r}")
    return [model.get_submodule(n.target) for n in model.graph.nodes
            if n.op == "call_module" and getattr(op_of(n), fact, False)]


class _Failed(Exception):
    def __init__(self, node: fx.Node):
        self.node = node


class _Locate(fx.Interpreter):
    """Runs the graph node by node; the first node that raises is reported by name."""

    def run_node(self, n: fx.Node):
        try:
            return super().run_node(n)
        except Exception as err:
            raise _Failed(n) from err


def at_spec_line(model: fx.GraphModule, inputs, err: Exception) -> Exception:
    """A forward pass of `model` on `inputs` raised `err`: the same error, its message prefixed
    with the spec line (node.meta["span"]) of the value that failed, found by running the graph
    again node by node. `err` itself where no node fails again (or the model is not lowered)."""
    if not isinstance(model, fx.GraphModule):
        return err
    try:
        with torch.no_grad():
            _Locate(model).run(*inputs)
    except _Failed as failed:
        span = failed.node.meta.get("span")
        if span is not None:
            path, line, column = span
            return RuntimeError(f"{path}:{line}:{column}: computing '{failed.node.name}': {err}")
    return err


# ---------------------------------------------------------------- made by the checker


@lowers("input")
def _input(g: Lowering, node: Node) -> fx.Node:
    op, name = node.op, node.name
    result = g.raw[op.column]
    if op.scale is not None:
        result = g.call(operator.mul, [result, op.scale], f"{name}_scaled")
    if op.fill:  # fill_missing: NaN -> the training median
        missing = g.call(torch.isnan, [result], f"{name}_missing")
        result = g.call(torch.where, [missing, g.stats[op.column].median, result], f"{name}_filled")
    if op.normalize:  # normalize: the training mean and standard deviation
        centred = g.call(operator.sub, [result, g.stats[op.column].mean], f"{name}_centred")
        result = g.call(operator.truediv, [centred, g.stats[op.column].std], f"{name}_normalized")
    if op.scalar:
        # one number per row arrives as (batch,); values are rows: (batch, 1)
        result = g.call(torch.unsqueeze, [result, -1], f"{name}_column")
    return result


@lowers("missing")
def _missing(g: Lowering, node: Node) -> fx.Node:
    missing = g.call(torch.isnan, [g.raw[node.op.column]], f"{node.name}_missing")
    return g.call(torch.where, [missing, 2, 1], node.name)


_ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


@lowers(*_ARITHMETIC)
def _arithmetic(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    if op.constant is None:
        args = [g.env[n] for n in node.inputs]
    elif op.constant_first:
        args = [op.constant, g.x(node)]
    else:
        args = [g.x(node), op.constant]
    return g.call(_ARITHMETIC[op.name], args, node.name)


# ---------------------------------------------------------------- layers


@lowers("embedding")
def _embedding(g: Lowering, node: Node) -> fx.Node:
    module = nn.Embedding(node.op.rows, node.op.dim)
    init_embedding(module)
    return g.module(node, module, g.env[node.op.column])


class SetBag(nn.Module):
    """embedding_bag of a set column: each row's set as vocabulary indices padded with 0 (no id: padding, or an
    id never seen in training), whose rows of `weight` are reduced to one: their mean, sum, or sum over the
    square root of their count (sqrtn). An empty set gives zeros. While training, each id is dropped with
    probability `p` and the rest scaled by 1/(1-p); the count that divides is the whole set's."""

    def __init__(self, rows: int, dim: int, mode: str, p: float = 0.0):
        super().__init__()
        self.mode, self.p = mode, p
        self.weight = nn.Parameter(torch.empty(rows, dim))
        nn.init.trunc_normal_(self.weight, std=0.01, a=-0.02, b=0.02)  # as an embedding's (init_embedding)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        count = (items > 0).sum(dim=1, keepdim=True).clamp(min=1)
        dropping = self.training and self.p > 0
        if dropping:  # a dropped id becomes index 0, which the bag skips
            items = items * (torch.rand(items.shape, device=items.device) >= self.p)
        # torch's bag kernel sums the rows but those of index 0 (padding_idx), never holding [rows, set, dim]
        total = F.embedding_bag(items, self.weight, mode="sum", padding_idx=0)
        if dropping:
            total = total / (1 - self.p)
        if self.mode == "sum":
            return total
        count = count.to(total.dtype)
        return total / (count if self.mode == "mean" else count.sqrt())


class HistoryBag(SetBag):
    """embedding_bag of a history column: each row's key index picks its set of item indices from `table`
    (0: no item), reduced as SetBag reduces a set. An unknown key has the empty set: zeros."""

    def __init__(self, table, rows: int, dim: int, mode: str, p: float = 0.0):
        super().__init__(rows, dim, mode, p)
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.int64))

    def forward(self, key: torch.Tensor) -> torch.Tensor:
        return super().forward(self.table[key])  # [rows, set size]


@lowers("embedding_bag")
def _embedding_bag(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    if op.column in g.tables:  # a history column: its sets looked up by the key column
        return g.module(node, HistoryBag(g.tables[op.column], op.rows, node.shape[0], op.mode, op.p), g.env[op.key])
    return g.module(node, SetBag(op.rows, node.shape[0], op.mode, op.p), g.raw[op.column])


@lowers("linear")
def _linear(g: Lowering, node: Node) -> fx.Node:
    return g.module(node, nn.Linear(g.width(node), node.shape[0]))


@lowers("batchnorm")
def _batchnorm(g: Lowering, node: Node) -> fx.Node:
    image = len(node.shape) == 3  # per channel over the batch and the map
    return g.module(node, (nn.BatchNorm2d if image else nn.BatchNorm1d)(g.width(node)))


@lowers("dropout")
def _dropout(g: Lowering, node: Node) -> fx.Node:
    return g.module(node, nn.Dropout(node.op.p))


@lowers("dot")
def _dot(g: Lowering, node: Node) -> fx.Node:
    a, b = (g.env[n] for n in node.inputs)
    product = g.call(operator.mul, [a, b], f"{node.name}_mul")
    return g.call(torch.sum, [product], node.name, dim=-1, keepdim=True)


@lowers("sigmoid_range")
def _sigmoid_range(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    squashed = g.call(torch.sigmoid, [g.x(node)], f"{node.name}_sigmoid")
    scaled = g.call(operator.mul, [squashed, op.high - op.low], node.name if op.low == 0 else f"{node.name}_scaled")
    return scaled if op.low == 0 else g.call(operator.add, [scaled, op.low], node.name)


@lowers("relu")
def _relu(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.relu, [g.x(node)], node.name)


@lowers("sigmoid")
def _sigmoid(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.sigmoid, [g.x(node)], node.name)


@lowers("tanh")
def _tanh(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.tanh, [g.x(node)], node.name)


@lowers("leaky_relu")
def _leaky_relu(g: Lowering, node: Node) -> fx.Node:
    return g.call(F.leaky_relu, [g.x(node)], node.name, negative_slope=node.op.slope)


@lowers("gelu")
def _gelu(g: Lowering, node: Node) -> fx.Node:
    return g.call(F.gelu, [g.x(node)], node.name)


@lowers("silu")
def _silu(g: Lowering, node: Node) -> fx.Node:
    return g.call(F.silu, [g.x(node)], node.name)


@lowers("layer_norm")
def _layer_norm(g: Lowering, node: Node) -> fx.Node:
    return g.module(node, nn.LayerNorm(g.width(node)))


@lowers("softmax")
def _softmax(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.softmax, [g.x(node)], node.name, dim=-1)


@lowers("log_softmax")
def _log_softmax(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.log_softmax, [g.x(node)], node.name, dim=-1)


@lowers("flatten")
def _flatten(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.flatten, [g.x(node)], node.name, start_dim=1)


@lowers("concat")
def _concat(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.cat, [tuple(g.env[n] for n in node.inputs)], node.name, dim=-1)


# ---------------------------------------------------------------- images


@lowers("conv2d")
def _conv2d(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    return g.module(node, nn.Conv2d(g.width(node), op.channels, op.kernel, stride=op.stride,
                                    padding=padding_of(op), bias=op.bias))


@lowers("max_pool")
def _max_pool(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    return g.module(node, nn.MaxPool2d(op.kernel, stride=op.stride, padding=op.padding))


@lowers("avg_pool")
def _avg_pool(g: Lowering, node: Node) -> fx.Node:
    op = node.op
    return g.module(node, nn.AvgPool2d(op.kernel, stride=op.stride, padding=op.padding))


@lowers("global_avg_pool")
def _global_avg_pool(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.mean, [g.x(node)], node.name, dim=(-2, -1))


@lowers("reshape")
def _reshape(g: Lowering, node: Node) -> fx.Node:
    return g.call(torch.reshape, [g.x(node), (-1, *node.op.shape)], node.name)
