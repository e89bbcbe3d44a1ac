"""Size: checked model + the data's sizes -> the sized model, every dimension a number.

Blocks such as `tabular(...)` expand into primitives, `classes` becomes the number of target
classes, each op takes what only the data tells (an embedding's row count), and every node's
weights are known. plan, summary and lower all read this one stage's output (no torch)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from specc.language.spec import ModelSpec, Node
from specc.model import ops
from specc.model.ops.base import numel, resolve


@dataclass(frozen=True, slots=True)
class Sizes:
    """What the data tells the model: each category column's lookup rows (its categories and the
    unknown row 0), and the number of target classes (None for a float target)."""

    vocab: dict[str, int]
    classes: int | None = None


@dataclass(frozen=True, slots=True)
class SizedModel:
    """The model in primitives with every size a number; `weights[node]` maps each learned
    tensor's state-dict suffix (`weight`, `bias`) to its shape, for the nodes that have some."""

    nodes: tuple[Node, ...]
    output: str
    inputs: tuple[str, ...]
    groups: tuple[str, ...]
    weights: dict[str, dict[str, tuple[int, ...]]] = field(compare=False)
    origin: dict[str, str] = field(compare=False, default_factory=dict)  # expanded node -> its block

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def params(self) -> dict[str, int]:
        """Parameter count of each node that has weights, in model order."""
        return {name: sum(numel(s) for s in shapes.values()) for name, shapes in self.weights.items()}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every learned tensor, by state-dict key (`linear.weight`)."""
        return {f"{name}.{key}": shape for name, shapes in self.weights.items() for key, shape in shapes.items()}

    def kept_numbers(self) -> dict[str, float]:
        """Numbers per row of the batch that a training step holds of each node until the backward
        pass (its output times its op's declared `kept`), in model order."""
        return {n.name: ops.get(n.op.name).kept * numel(n.shape) for n in self.nodes}

    def widest(self, learned: bool = False) -> Node | None:
        """The node whose output has the most numbers a row (None for a model without nodes);
        `learned`: of those computed from weights, which alone have gradients in the backward pass."""
        below = set(self.weights)
        for node in self.nodes:  # in model order: a node's inputs come before it
            if any(i in below for i in node.inputs):
                below.add(node.name)
        nodes = [n for n in self.nodes if not learned or n.name in below]
        return max(nodes, key=lambda n: numel(n.shape), default=None)

    def multiply_adds(self) -> int:
        """Multiply-adds of one row's forward pass in the layers that have them."""
        shapes = {n.name: n.shape for n in self.nodes}
        return sum(ops.get(n.op.name).multiply_adds(n.op, tuple(shapes[i] for i in n.inputs), n.shape)
                   for n in self.nodes)


def size_model(model: ModelSpec, sizes: Sizes) -> SizedModel:
    """The checked model with its blocks expanded and every size a number."""
    taken = {n.name for n in model.nodes} | set(model.inputs)
    nodes: list[Node] = []
    origin: dict[str, str] = {}
    written = {n.name: n.shape for n in model.nodes}  # row shapes as checked (`classes` unresolved)
    for node in model.nodes:
        expand = ops.get(node.op.name).expand
        made = expand(node, sizes, taken, written) if expand else [node]
        origin.update({m.name: node.name for m in made if m.name != node.name})
        nodes.extend(made)
    shapes: dict[str, tuple[int, ...]] = {}
    sized, weights = [], {}
    for node in nodes:
        defn = ops.get(node.op.name)
        # the op's arguments stay as written (`linear(h, classes)`); the shapes become numbers
        made = defn.sized(node.op, sizes) if defn.sized else node.op
        shape = tuple(resolve(d, sizes.classes) for d in node.shape)
        shapes[node.name] = shape
        found = defn.weights(made, tuple(shapes[i] for i in node.inputs), shape)
        if found:
            weights[node.name] = found
        sized.append(Node(node.name, made, node.inputs, shape, node.span, node.group))
    return SizedModel(tuple(sized), model.output, model.inputs, model.groups, weights, origin)


def with_weights(model: ModelSpec) -> set[str]:
    """The nodes of a checked model that will have weights whatever the data's sizes, before the
    data is read (sized with stand-in sizes); a block has weights when its expansion does."""
    stand_in = Sizes(collections.defaultdict(lambda: 2), classes=2)
    sized = size_model(model, stand_in)
    return {sized.origin.get(name, name) for name in sized.weights}


def model_sizes(spec, prepared) -> Sizes:
    """What the prepared data (specc.data.prepare.Prepared) tells the spec's model."""
    vocab = {c: v.size for c, v in prepared.vocabs.items() if c != spec.data.target.name}
    for column in spec.data.indicator_columns():
        vocab[column] = 3  # unknown (never used), present, missing
    feedback = spec.data.feedback
    if feedback is not None and feedback.per_user:  # the model scores every item: `classes` is the items
        return Sizes(vocab, vocab[feedback.item])
    target = prepared.vocabs.get(spec.data.target.name)
    return Sizes(vocab, target.size if target is not None else None)


def sized_model(spec, prepared) -> SizedModel:
    """The spec's model sized by its prepared data."""
    return size_model(spec.model, model_sizes(spec, prepared))


def known_params(model: ModelSpec) -> dict[str, int]:
    """Parameter counts of the nodes whose weights the checked model already fixes, before the
    data is read (every size a number, nothing taken from the data): a lower bound."""
    shapes = {n.name: n.shape for n in model.nodes}
    counts = {}
    for node in model.nodes:
        defn = ops.get(node.op.name)
        inputs = tuple(shapes[i] for i in node.inputs)
        if defn.sized or defn.expand or not all(isinstance(d, int) for s in (*inputs, node.shape) for d in s):
            continue
        found = defn.weights(node.op, inputs, node.shape)
        if found:
            counts[node.name] = sum(numel(s) for s in found.values())
    return counts
