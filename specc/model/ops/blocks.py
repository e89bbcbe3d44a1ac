"""Blocks: ops that stand for several primitives and expand into them once the data has told the
sizes (`tabular(...)`, fastai's TabularModel). `specc check` and `specc show` print the expansion."""

from __future__ import annotations

from specc.language.spec import Node, Op, op
from specc.model.ops import conv, layers
from specc.model.ops.base import Arg, Given, OpDef, Problem, Tensor


def emb_size(n: int) -> int:
    """fastai's rule for an embedding's width from the number of categories (unknown included)."""
    return min(600, round(1.6 * n ** 0.56))


def expand_tabular(node: Node, sizes, taken: set[str], shapes: dict) -> list[Node]:
    """fastai's tabular model in primitives: an embedding per category column (fastai's size rule
    unless given), embedding dropout, batchnorm over the float columns, then per layer linear,
    ReLU, batchnorm, dropout, and a final linear to `out` (classes, or 1). `sizes`: specc.model.sized.Sizes."""
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


# ---------------------------------------------------------------- resnet

RESNET_WIDTHS = (64, 128, 256, 512)
STEMS = ("imagenet", "small")


def resnet_nodes(node: Node, in_shape: tuple, taken: set[str]) -> list[Node] | Problem:
    """ResNet's body in primitives, torchvision's BasicBlock layout: a stem (imagenet: a 7x7
    convolution of stride 2 and a 3x3 max pool of stride 2; small: a 3x3 convolution), then per
    stage `layers[i]` blocks of two 3x3 convolutions with batchnorm, the block's input added back
    (through a 1x1 convolution of stride 2 where the first block of a stage halves the map), ReLU.
    No bias where a batchnorm follows. A Problem where the image is too small for it."""
    r = node.op
    out: list[Node] = []
    shapes = {node.inputs[0]: in_shape}

    def new(base: str, made: Op, inputs: tuple[str, ...], final: bool = False):
        name, k = (node.name, 0) if final else (f"{node.name}_{base}", 1)
        while not final and name in taken:
            name, k = f"{node.name}_{base}_{k}", k + 1
        taken.add(name)
        defn = _PRIMITIVES[made.name]
        shape = defn.infer(made, tuple(Arg(i, i, shapes[i]) for i in inputs)) if defn.infer else shapes[inputs[0]]
        if isinstance(shape, Problem):
            raise _TooSmall(shape)
        shapes[name] = shape
        out.append(Node(name, made, inputs, tuple(shape), node.span, node.group))
        return name

    def conv(base, x, width, kernel, stride):
        return new(base, op("conv2d", channels=width, kernel=kernel, stride=stride, padding=kernel // 2, bias=False),
                   (x,))

    def bn(base, x):
        return new(base, op("batchnorm"), (x,))

    def relu(base, x, final=False):
        return new(base, op("relu"), (x,), final)

    try:
        x = node.inputs[0]
        if r.stem == "imagenet":
            x = relu("stem_relu", bn("stem_bn", conv("stem", x, r.widths[0], 7, 2)))
            x = new("stem_pool", op("max_pool", kernel=3, stride=2, padding=1), (x,))
        else:
            x = relu("stem_relu", bn("stem_bn", conv("stem", x, r.widths[0], 3, 1)))
        for i, (blocks, width) in enumerate(zip(r.layers, r.widths), start=1):
            for j in range(blocks):
                stride = 2 if i > 1 and j == 0 else 1
                at = f"layer{i}_{j}"
                y = relu(f"{at}_relu1", bn(f"{at}_bn1", conv(f"{at}_conv1", x, width, 3, stride)))
                y = bn(f"{at}_bn2", conv(f"{at}_conv2", y, width, 3, 1))
                if stride != 1 or shapes[x][0] != width:
                    x = bn(f"{at}_down_bn", conv(f"{at}_down", x, width, 1, stride))
                added = new(f"{at}_add", op("add", constant=None, constant_first=False), (y, x))
                x = relu(f"{at}_relu", added, final=i == len(r.layers) and j == blocks - 1)
    except _TooSmall as small:
        return small.problem
    return out


_PRIMITIVES = {d.name: d for d in (*layers.OPS, *conv.OPS, *layers.INTERNAL)}  # what a resnet is made of


class _TooSmall(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def expand_resnet(node: Node, sizes, taken: set[str], shapes: dict) -> list[Node]:
    made = resnet_nodes(node, shapes[node.inputs[0]], taken)
    if isinstance(made, Problem):  # the checker ran the same rules: a mismatch is a bug
        raise RuntimeError(f"resnet expansion of '{node.name}': {made.message}")
    return made


def _resnet_text(r: Op, node: Node) -> str:
    return f"resnet({node.inputs[0]}, layers={list(r.layers)}, widths={list(r.widths)}, stem={r.stem})"


OPS += (
    OpDef("resnet", "ResNet's body (torchvision's BasicBlock layout) over an image: a stem, then stages of "
          "residual blocks; layers=[3, 4, 6, 3] is ResNet34's",
          (Tensor("x"), Given("layers", required=True, doc="blocks per stage, e.g. [3, 4, 6, 3]"),
           Given("widths", doc="channels per stage (default 64, 128, 256, 512)"),
           Given("stem", doc="imagenet (7x7 stride 2 and a max pool) or small (3x3, stride 1)")),
          describe=_resnet_text, expand=expand_resnet,
          example="rn = img |> resnet(layers=[1, 1], widths=[2, 4], stem=small)"),
)
