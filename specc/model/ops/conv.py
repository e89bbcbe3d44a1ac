"""The image ops, declared once (no torch): convolution, pooling, and reshaping a row of numbers
into an image. An image value's row shape is (channels, height, width), channels first as torch
has it; the shape rules below check every layer's map size before any data is read."""

from __future__ import annotations

import math

from specc.language.spec import Node, Op
from specc.model.ops.base import Arg, Bool, Dims, Int, OpDef, Problem, Tensor


def _shape_text(shape) -> str:
    return f"width {shape[0]}" if len(shape) == 1 else f"shape ({', '.join(str(d) for d in shape)})"


def _not_an_image(what: str, x: Arg) -> Problem:
    return Problem(f"{what} needs an image (channels, height, width), found {_shape_text(x.shape)}",
                   (f"make one first, e.g. {x.node} |> reshape((1, 28, 28)), or declare the column as "
                    "float(1, 28, 28)",))


def padding_of(op: Op) -> int:
    """The padding in pixels on each side: `same` keeps the map's size (odd kernels, stride 1)."""
    return op.kernel // 2 if op.padding == "same" else op.padding


def window_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """How many positions a window of `kernel` takes along `size` (torch's formula, rounding down)."""
    return (size + 2 * padding - kernel) // stride + 1


def _window_shape(what: str, channels):
    """The shape rule of a sliding window (conv2d, the pools): `channels` from the op, or None to
    keep the input's."""
    def infer(op: Op, args: tuple[Arg, ...]):
        x = args[0]
        if len(x.shape) != 3:
            return _not_an_image(what, x)
        c, h, w = x.shape
        stride = op.stride if op.stride is not None else op.kernel
        pad = padding_of(op)
        if channels is None and 2 * pad > op.kernel:  # torch's pools pad at most half the window
            return Problem(f"{what}: padding {pad} is more than half the {op.kernel}x{op.kernel} window")
        out = (window_out(h, op.kernel, stride, pad), window_out(w, op.kernel, stride, pad))
        if min(out) < 1:
            return Problem(f"{what}: its {op.kernel}x{op.kernel} window does not fit the {h}x{w} map"
                           f"{f' (padding {pad})' if pad else ''}",
                           (f"'{x.text}' has {_shape_text(x.shape)}",))
        return (channels(op) if channels else c, *out)
    return infer


def _same_needs(args: dict) -> Problem | None:
    if args["padding"] == "same" and (args["stride"] != 1 or args["kernel"] % 2 == 0):
        return Problem("padding=same needs stride 1 and an odd kernel", params=("kernel", "padding"))
    return None


def _conv_weights(op: Op, inputs, shape):
    found = {"weight": (op.channels, inputs[0][0], op.kernel, op.kernel)}
    return {**found, "bias": (op.channels,)} if op.bias else found


def _conv_multiply_adds(op: Op, inputs, shape) -> int:
    return math.prod(shape) * inputs[0][0] * op.kernel * op.kernel


def _window_text(op: Op, node: Node) -> str:
    """conv2d(x, 32, 3, stride=2, padding=same, bias=false): what differs from the defaults shown."""
    args = [node.inputs[0], *([str(op.channels)] if op.name == "conv2d" else []), str(op.kernel)]
    if op.stride is not None and op.stride != (1 if op.name == "conv2d" else op.kernel):
        args.append(f"stride={op.stride}")
    if op.padding:
        args.append(f"padding={op.padding}")
    if op.name == "conv2d" and not op.bias:
        args.append("bias=false")
    return f"{op.name}({', '.join(args)})"


def _global_pool_shape(op: Op, args: tuple[Arg, ...]):
    x = args[0]
    return (x.shape[0],) if len(x.shape) == 3 else _not_an_image("global_avg_pool", x)


def _reshape_shape(op: Op, args: tuple[Arg, ...]):
    x = args[0]
    if not all(isinstance(d, int) for d in x.shape) or math.prod(x.shape) != math.prod(op.shape):
        return Problem(f"reshape: {_shape_text(x.shape)} has {math.prod(d for d in x.shape if isinstance(d, int))} "
                       f"numbers a row, {_shape_text(op.shape)} holds {math.prod(op.shape)}")
    return tuple(op.shape)


X = Tensor("x")
PADDING = Int("padding", low=0, high=2**10, default=0, names=("same",), what="conv2d's padding")
POOL_PADDING = Int("padding", low=0, high=2**10, default=0, what="the pool's padding")

OPS = (
    OpDef("conv2d", "a 2-d convolution over an image (nn.Conv2d): `channels` maps from `kernel` x `kernel` "
          "windows, every `stride` pixels, the image padded with `padding` zeros (or `same`: as large as it was)",
          (X, Int("channels", what="conv2d's channels"), Int("kernel", high=2**10, what="conv2d's kernel"),
           Int("stride", high=2**10, default=1, what="conv2d's stride"), PADDING, Bool("bias", default=True)),
          infer=_window_shape("conv2d", lambda op: op.channels), weights=_conv_weights,
          multiply_adds=_conv_multiply_adds, validate=_same_needs, describe=_window_text,
          example="cv = img |> conv2d(4, 3, padding=same)"),
    OpDef("max_pool", "the largest value of each `kernel` x `kernel` window, every `stride` pixels (default: "
          "the kernel)", (X, Int("kernel", high=2**10, what="max_pool's kernel"),
                          Int("stride", high=2**10, optional=True, what="max_pool's stride"), POOL_PADDING),
          infer=_window_shape("max_pool", None), describe=_window_text, example="mp = cv |> max_pool(2)",
          kept=3),  # and the int64 index of each maximum, for the backward pass
    OpDef("avg_pool", "the mean of each `kernel` x `kernel` window, every `stride` pixels (default: the kernel)",
          (X, Int("kernel", high=2**10, what="avg_pool's kernel"),
           Int("stride", high=2**10, optional=True, what="avg_pool's stride"), POOL_PADDING),
          infer=_window_shape("avg_pool", None), describe=_window_text, example="ap = cv |> avg_pool(2, stride=1)"),
    OpDef("global_avg_pool", "the mean of each channel over the whole map: (channels, h, w) -> (channels)",
          (X,), infer=_global_pool_shape, example="gp = global_avg_pool(cv)"),
    OpDef("reshape", "the numbers of a row in another shape, e.g. 784 -> (1, 28, 28)", (X, Dims("shape")),
          infer=_reshape_shape, kept=0, example="rs = flatten(img) |> reshape((16, 1, 1))"),  # a view
)
