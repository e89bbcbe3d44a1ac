"""The primitive ops of the model block, each declared once (no torch): a spec calls them by name,
`check` binds and shapes them from these declarations, lower and export translate them by name."""

from __future__ import annotations

from specc.language.spec import CLASSES, Node, Op
from specc.model.ops.base import Arg, CategoryColumn, Int, Named, OpDef, Problem, Real, SetColumn, Size, Tensor, shown


def _shape_text(shape) -> str:
    return f"width {shape[0]}" if len(shape) == 1 else f"shape ({', '.join(str(d) for d in shape)})"


# ---------------------------------------------------------------- shape rules


def _embedding_shape(op: Op, args: tuple[Arg, ...]):
    return (op.dim,)


def _dot_shape(op: Op, args: tuple[Arg, ...]):
    a, b = args
    if a.shape != b.shape or len(a.shape) != 1:
        return Problem(f"dot needs two rows of the same width, found {_shape_text(a.shape)} and "
                       f"{_shape_text(b.shape)}",
                       (f"'{a.text}' has {_shape_text(a.shape)}, '{b.text}' has {_shape_text(b.shape)}",))
    return (1,)


def _linear_shape(op: Op, args: tuple[Arg, ...]):
    if args[0].shape[0] == CLASSES:
        return Problem("linear of a value sized by 'classes' is not supported")
    return (op.out,)


def _features_or_channels(op: Op, args: tuple[Arg, ...]):
    """batchnorm: one row of features, or an image (channels, height, width), normalised per channel."""
    x = args[0]
    if len(x.shape) not in (1, 3):
        return Problem(f"batchnorm needs one row of features, found {_shape_text(x.shape)}",
                       (f"flatten it first: {x.node} |> flatten |> batchnorm(...)",))
    return x.shape


def _flatten_shape(op: Op, args: tuple[Arg, ...]):
    total = 1
    for d in args[0].shape:
        total = total * d if isinstance(d, int) else d  # `classes` stays symbolic
    return (total,)


def _concat_shape(op: Op, args: tuple[Arg, ...]):
    widths = [a.shape[0] for a in args]
    if CLASSES in widths:
        return Problem("concat of a value sized by 'classes' is not supported")
    return (sum(widths),)


def _sigmoid_range_rule(args: dict) -> Problem | None:
    low, high = args["low"], args["high"]
    if high <= low:
        return Problem(f"sigmoid_range: high ({high:g}) must be above low ({low:g})", params=("low", "high"))
    return None


# ---------------------------------------------------------------- weights


def _embedding_weights(op: Op, inputs, shape):
    return {"weight": (op.rows, shape[0])}  # the row's size: its `dim`, resolved (an embedding_bag's may be classes)


def _linear_weights(op: Op, inputs, shape):
    return {"weight": (shape[0], inputs[0][0]), "bias": (shape[0],)}


def _linear_multiply_adds(op: Op, inputs, shape) -> int:
    return shape[0] * inputs[0][0]


def _per_feature_weights(op: Op, inputs, shape):
    """A scale and a shift per feature (batchnorm, layer_norm)."""
    return {"weight": (shape[0],), "bias": (shape[0],)}


# ---------------------------------------------------------------- the ops

# Each op's `example` is one model-block line that may read `c` (a category input column), `a` (a
# float input column), `img` (a float(1, 4, 4) image column) and `h` (a value of width 4); it names a
# value of its own. tests/test_ops.py puts every example in one spec.

X = Tensor("x")
BAG_MODES = ("mean", "sum", "sqrtn")  # embedding_bag's reductions of a set's rows
FLAT_X = Tensor("x", flat=True)

OPS = (
    OpDef("embedding", "a learned row of `dim` numbers per category of a category input column (row 0: "
          "unknown), initialised as fastai does (truncated normal, std 0.01)",
          (CategoryColumn("column"), Int("dim", what="embedding size")),
          infer=_embedding_shape, weights=_embedding_weights,
          sized=lambda op, sizes: op.with_args(rows=sizes.vocab[op.column]),
          unsized_params=lambda op: f"(n_{op.column} + 1) x {op.dim}",  # its rows are the column's categories
          lookup=True, example="emb = embedding(c, 3)"),
    OpDef("embedding_bag", "the learned rows of the ids of a set column's set (a categories column, `tags: "
          "categories(sep=\"|\")`, or a history column, `rated: history(user, item)`: the items each row's user has "
          "in the training rows), reduced to one row: their `mean`, `sum`, or `sqrtn` (the sum over the square root "
          "of their count, as SVD++ normalises); ids never seen in training are left out; an empty set gives zeros. "
          "While training, `p` drops each id of the set with probability p and scales the rest by 1/(1-p), the "
          "reduction's count still the whole set's (Mult-DAE's dropout of its normalised input)",
          (SetColumn("column"), Size("dim", what="embedding size"),
           Named("mode", BAG_MODES, "mean", "how the set's rows are reduced: mean, sum or sqrtn"),
           Real("p", 0.0, 1.0, high_open=True, default=0.0, what="the probability of dropping an id")),
          infer=_embedding_shape, weights=_embedding_weights, random_per_row=True,
          sized=lambda op, sizes: op.with_args(rows=sizes.vocab[op.items]),
          unsized_params=lambda op: f"(n_{op.items} + 1) x {op.dim}",
          example="bag = embedding_bag(hc, 3, mode=sqrtn, p=0.5)"),
    OpDef("dot", "row-wise dot product of two values of the same width", (Tensor("a"), Tensor("b")),
          infer=_dot_shape, grid=True, example="dt = dot(h, h)"),
    OpDef("sigmoid_range", "`sigmoid(x) * (high - low) + low`: squashes into (low, high)",
          (X, Real("low"), Real("high")), validate=_sigmoid_range_rule, grid=True,
          kept=2,  # the sigmoid, kept for backward
          example="sr = sigmoid_range(h, 0, 5.5)"),
    OpDef("linear", "an affine layer `x W^T + b` to `out` features (torch's nn.Linear and its initialisation)",
          (FLAT_X, Size("out", what="linear's output size")),
          infer=_linear_shape, weights=_linear_weights, multiply_adds=_linear_multiply_adds, grid=True,
          example="lin = h |> linear(3)"),
    OpDef("relu", "max(x, 0), element-wise", (X,), grid=True, example="rl = relu(h)"),
    OpDef("sigmoid", "1 / (1 + exp(-x)), element-wise", (X,), grid=True, example="sg = sigmoid(h)"),
    OpDef("tanh", "the hyperbolic tangent, element-wise", (X,), grid=True, example="th = tanh(h)"),
    OpDef("leaky_relu", "x where x > 0, else slope * x, element-wise",
          (X, Real("slope", 0.0, 1.0, high_open=True, default=0.01, what="leaky_relu's slope")),
          grid=True, example="lr = leaky_relu(h, 0.1)"),
    OpDef("gelu", "x * Phi(x), Phi the standard normal's distribution function (exact, not tanh's "
          "approximation), element-wise", (X,), grid=True, example="ge = gelu(h)"),
    OpDef("silu", "x * sigmoid(x) (also called swish), element-wise", (X,), grid=True, example="si = silu(h)"),
    OpDef("softmax", "exp(x) / sum(exp(x)) over the features of a row", (FLAT_X,), grid=True,
          example="sm = softmax(h)"),
    OpDef("log_softmax", "log(softmax(x)) over the features of a row, computed stably", (FLAT_X,),
          grid=True, example="lsm = log_softmax(h)"),
    OpDef("dropout", "zeroes each number with probability p while training, the rest scaled by 1/(1-p); "
          "nothing in evaluation or export",
          (X, Real("p", 0.0, 1.0, high_open=True, what="dropout probability")),
          random_per_row=True, kept=1.25, grid=True, example="dr = dropout(h, 0.5)"),  # and its mask, a byte a number
    OpDef("batchnorm", "normalises each feature (or each channel of an image) over the batch while training "
          "(nn.BatchNorm1d, nn.BatchNorm2d), with running statistics in evaluation and export", (X,),
          infer=_features_or_channels, weights=_per_feature_weights, batch_statistics=True,
          example="bn = batchnorm(h)"),
    OpDef("layer_norm", "normalises each row over its features, then a learned scale and shift per "
          "feature (nn.LayerNorm, eps 1e-5); the same in training and evaluation", (FLAT_X,),
          weights=_per_feature_weights, grid=True, example="ln = layer_norm(h)"),
    OpDef("flatten", "all the numbers of a row in one dimension: an image row (28, 28) becomes (784)", (X,),
          infer=_flatten_shape, kept=0, example="fl = flatten(img)"),  # a view of its input
    OpDef("concat", "features of several values side by side", (Tensor("values", flat=True, many=True),),
          infer=_concat_shape, example="cc = concat(h, a)"),
)


# ---------------------------------------------------------------- made by the syntax and the checker


def _input_text(op: Op, node: Node) -> str:
    steps = [f"* {op.scale:.6g}"] if op.scale is not None else []
    steps += ["missing -> median"] if op.fill else []
    steps += ["normalized"] if op.normalize else []
    return f"input column {op.column}" + (f" ({', '.join(steps)})" if steps else "")


def _arithmetic_text(op: Op, node: Node) -> str:
    symbol = ARITHMETIC[op.name]
    if op.constant is None:
        return f" {symbol} ".join(node.inputs)
    parts = [shown(op.constant), node.inputs[0]]
    return f" {symbol} ".join(parts if op.constant_first else parts[::-1])


ARITHMETIC = {"add": "+", "sub": "-", "mul": "*", "div": "/"}  # op name -> the operator a spec writes

INTERNAL = (
    # A float input column: its scale, then (with those procs) missing values filled with the
    # training median and the result normalised with the training mean and standard deviation.
    # `scalar`: one number per row arrives as (batch,) and becomes a (batch, 1) value.
    # kept: the batch as drawn from the data, and as scaled, filled and normalised.
    OpDef("input", "a float input column", (), describe=_input_text, callable=False, kept=2),
    # `<column>_na`: a category per row, index 1 where the value is there, 2 where it is missing.
    OpDef("missing", "whether a float column's value is missing",
          (), describe=lambda op, node: f"is {op.column} missing? (1 no, 2 yes)", callable=False,
          kept=2),  # an int64 index
    # `a + b` and the others; a width-1 operand broadcasts; `constant` replaces one operand
    # (`constant_first`: it is the left one, as in `1 - a`; `-a` is `0 - a`).
    *(OpDef(name, f"element-wise `{symbol}`", (), describe=_arithmetic_text, callable=False, grid=True)
      for name, symbol in ARITHMETIC.items()),
)
