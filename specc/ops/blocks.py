"""Blocks: ops that stand for several primitives and expand into them once the data has told the
sizes (`tabular(...)`, fastai's TabularModel). `specc check` and `specc show` print the expansion."""

from __future__ import annotations

from specc.ops.base import Given, OpDef
from specc.spec import Node, Op, op


def emb_size(n: int) -> int:
    """fastai's rule for an embedding's width from the number of categories (unknown included)."""
    return min(600, round(1.6 * n ** 0.56))


def expand_tabular(node: Node, sizes, taken: set[str]) -> list[Node]:
    """fastai's tabular model in primitives: an embedding per category column (fastai's size rule
    unless given), embedding dropout, batchnorm over the float columns, then per layer linear,
    ReLU, batchnorm, dropout, and a final linear to `out` (classes, or 1). `sizes`: specc.sized.Sizes."""
    t: Op = node.op
    prefix = "" if node.name == "out" else f"{node.name}_"
    out: list[Node] = []

    def new(base: str, made: Op, inputs, width: int) -> str:
        name, k = f"{prefix}{base}", 1
        while name in taken:
            name, k = f"{prefix}{base}_{k}", k + 1
        taken.add(name)
        out.append(Node(name, made, tuple(inputs), (width,), node.span, node.group))
        return name

    given = dict(t.emb_sizes)
    parts = []
    embeds = []
    for col in t.cats:
        dim = given.get(col) or emb_size(sizes.vocab[col])
        embeds.append((new(f"emb_{col}", op("embedding", column=col, dim=dim), (), dim), dim))
    if embeds:
        width = sum(d for _, d in embeds)
        x = new("embeds", op("concat"), [n for n, _ in embeds], width) if len(embeds) > 1 else embeds[0][0]
        if t.emb_drop:
            x = new("emb_drop", op("dropout", p=t.emb_drop), [x], width)
        parts.append((x, width))
    if t.conts:
        width = len(t.conts)
        x = new("conts", op("concat"), list(t.conts), width) if width > 1 else t.conts[0]
        parts.append((new("bn_conts", op("batchnorm"), [x], width), width))
    width = sum(w for _, w in parts)
    x = new("features", op("concat"), [n for n, _ in parts], width) if len(parts) > 1 else parts[0][0]
    for k, (size, p) in enumerate(zip(t.layers, t.ps), start=1):
        x = new(f"layer{k}", op("linear", out=size), [x], size)
        x = new(f"layer{k}_relu", op("relu"), [x], size)
        x = new(f"layer{k}_bn", op("batchnorm"), [x], size)
        if p:
            x = new(f"layer{k}_drop", op("dropout", p=p), [x], size)
    out.append(Node(node.name, op("linear", out=t.out), (x,), (t.out,), node.span, node.group))
    return out


def _tabular_text(t: Op, node: Node) -> str:
    return f"tabular({len(t.cats)} cats, {len(t.conts)} conts, layers {list(t.layers)})"


OPS = (
    OpDef("tabular", "fastai's tabular model: embeddings of the category columns and the float columns, "
          "through layers of linear, ReLU, batchnorm and dropout, to `out`",
          (Given("layers", required=True, doc="the hidden layers' sizes, e.g. [200, 100]"),
           Given("cats", doc="category columns to embed (default: every category input)"),
           Given("conts", doc="float columns (default: every one-number float input)"),
           Given("ps", doc="dropout probability per layer, or one for all"),
           Given("emb_drop", doc="dropout over the embeddings"),
           Given("emb_sizes", doc="[(column, width)] in place of fastai's rule"),
           Given("out", doc="output size: classes for a category target, else 1")),
          describe=_tabular_text, expand=expand_tabular,
          example="tab = tabular(layers=[3], cats=[c], conts=[a], out=2)"),
)
