"""Expand: checked model + data sizes -> the same model in primitives only.

Higher-level blocks (`tabular(...)`) become the embeddings, dropouts, batchnorms and linear layers
they stand for, once the data has told the vocabulary sizes; `specc show` prints the result."""

from __future__ import annotations

from specc.spec import (
    Activation, BatchNorm, Concat, Dropout, Embedding, Linear, ModelSpec, Node, Tabular,
)


def emb_size(n: int) -> int:
    """fastai's rule for an embedding's width from the number of categories (unknown included)."""
    return min(600, round(1.6 * n ** 0.56))


def expand(model: ModelSpec, sizes: dict[str, int]) -> ModelSpec:
    """The model with every Tabular node replaced by primitives; other nodes unchanged."""
    if not any(isinstance(n.op, Tabular) for n in model.nodes):
        return model
    taken = {n.name for n in model.nodes} | set(model.inputs)
    nodes: list[Node] = []
    for node in model.nodes:
        if isinstance(node.op, Tabular):
            nodes.extend(_tabular(node, sizes, taken))
        else:
            nodes.append(node)
    return ModelSpec(tuple(nodes), model.output, model.inputs, model.groups)


def _tabular(node: Node, sizes: dict[str, int], taken: set[str]) -> list[Node]:
    t: Tabular = node.op
    prefix = "" if node.name == "out" else f"{node.name}_"
    out: list[Node] = []

    def new(base: str, op, inputs, shape) -> str:
        name, k = f"{prefix}{base}", 1
        while name in taken:
            name, k = f"{prefix}{base}_{k}", k + 1
        taken.add(name)
        out.append(Node(name, op, tuple(inputs), tuple(shape), node.span, node.group))
        return name

    given = dict(t.emb_sizes)
    parts = []
    embeds = []
    for col in t.cats:
        dim = given.get(col) or emb_size(sizes[col])
        embeds.append((new(f"emb_{col}", Embedding(col, dim), (), (dim,)), dim))
    if embeds:
        width = sum(d for _, d in embeds)
        x = new("embeds", Concat(), [n for n, _ in embeds], (width,)) if len(embeds) > 1 else embeds[0][0]
        if t.emb_drop:
            x = new("emb_drop", Dropout(t.emb_drop), [x], (width,))
        parts.append((x, width))
    if t.conts:
        width = len(t.conts)
        x = new("conts", Concat(), list(t.conts), (width,)) if width > 1 else t.conts[0]
        parts.append((new("bn_conts", BatchNorm(), [x], (width,)), width))
    width = sum(w for _, w in parts)
    x = new("features", Concat(), [n for n, _ in parts], (width,)) if len(parts) > 1 else parts[0][0]
    for k, (size, p) in enumerate(zip(t.layers, t.ps), start=1):
        x = new(f"layer{k}", Linear(size), [x], (size,))
        x = new(f"layer{k}_relu", Activation("relu"), [x], (size,))
        x = new(f"layer{k}_bn", BatchNorm(), [x], (size,))
        if p:
            x = new(f"layer{k}_drop", Dropout(p), [x], (size,))
    out.append(Node(node.name, Linear(t.out), (x,), (t.out,), node.span, node.group))
    return out
