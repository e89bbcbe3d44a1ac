"""The export op table: each fx call target or module type the lowering makes, as ONNX nodes.

One short function per entry, registered with `@translates(target, ...)`; it gets the emitter,
the fx node and its operands (ONNX value names) and returns the name of the value it made. The
coverage test (tests/test_ops.py) fails when an op of specc.model.ops lowers to something not here."""

from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import fx, nn

from specc.export.emitter import Emitter
from specc.model.lower import HistoryBag, SetBag

Translate = Callable[..., str]
FUNCTIONS: dict[object, Translate] = {}  # call_function target -> (em, fnode, operands) -> value
MODULES: dict[type, Translate] = {}  # call_module type -> (em, fnode, module, x) -> value


def translates(*targets) -> Callable[[Translate], Translate]:
    """Register the function as the translation of fx call targets (functions) or module types."""
    def register(fn: Translate) -> Translate:
        for target in targets:
            (MODULES if isinstance(target, type) and issubclass(target, nn.Module) else FUNCTIONS)[target] = fn
        return fn
    return register


def operand(em: Emitter, arg, names: dict) -> str:
    """An fx argument as an ONNX value: a node's output, or a constant."""
    if isinstance(arg, fx.Node):
        return names[arg.name]
    if isinstance(arg, int) and not isinstance(arg, bool):
        return em.const(arg, np.int64)  # e.g. the indices torch.where picks between
    return em.const(float(arg))


def operands(em: Emitter, args, names: dict) -> list:
    return [[operand(em, x, names) for x in a] if isinstance(a, (tuple, list)) else operand(em, a, names)
            for a in args]


# Targets whose arguments after the first are settings, not operands (an axis, a shape): their
# translation reads them from the fx node; made operands as well, they would leave initializers
# no node reads (onnxruntime warns on load).
SETTINGS_AFTER_FIRST = {torch.unsqueeze, torch.reshape}


def function(em: Emitter, fnode: fx.Node, names: dict) -> str:
    """One call_function node as ONNX."""
    if fnode.target not in FUNCTIONS:
        raise TypeError(f"no ONNX translation for {fnode.target}")  # a lowering without an export entry
    args = fnode.args[:1] if fnode.target in SETTINGS_AFTER_FIRST else fnode.args
    return FUNCTIONS[fnode.target](em, fnode, operands(em, args, names))


def module(em: Emitter, fnode: fx.Node, mod: nn.Module, x: str) -> str:
    """One call_module node as ONNX (modules in eval mode: dropout is the identity)."""
    if type(mod) not in MODULES:
        raise TypeError(f"no ONNX translation for module {type(mod).__name__}")  # lower/export mismatch
    return MODULES[type(mod)](em, fnode, mod, x)


def _simple(onnx_op: str) -> Translate:
    def translate(em: Emitter, fnode: fx.Node, args: list) -> str:
        return em.node(onnx_op, args, fnode.name)
    return translate


for _target, _op in ((operator.add, "Add"), (operator.sub, "Sub"), (operator.mul, "Mul"), (operator.truediv, "Div"),
                     (torch.sigmoid, "Sigmoid"), (torch.relu, "Relu"), (torch.tanh, "Tanh"),
                     (torch.isnan, "IsNaN"), (torch.where, "Where")):
    FUNCTIONS[_target] = _simple(_op)


# ---------------------------------------------------------------- functions


@translates(torch.unsqueeze)
def _unsqueeze(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Unsqueeze", [args[0], em.const([fnode.args[1]], np.int64)], fnode.name)


@translates(torch.sum)
def _sum(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("ReduceSum", [args[0], em.const([fnode.kwargs["dim"]], np.int64)], fnode.name,
                   keepdims=int(fnode.kwargs["keepdim"]))


@translates(torch.softmax)
def _softmax(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Softmax", args, fnode.name, axis=fnode.kwargs["dim"])


@translates(torch.log_softmax)
def _log_softmax(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("LogSoftmax", args, fnode.name, axis=fnode.kwargs["dim"])


@translates(torch.flatten)
def _flatten(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Flatten", args, fnode.name, axis=fnode.kwargs["start_dim"])


@translates(torch.cat)
def _cat(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Concat", args[0], fnode.name, axis=fnode.kwargs["dim"])


@translates(F.leaky_relu)
def _leaky_relu(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("LeakyRelu", args, fnode.name, alpha=float(fnode.kwargs["negative_slope"]))


@translates(F.gelu)
def _gelu(em: Emitter, fnode: fx.Node, args: list) -> str:
    # opset 17 has no Gelu: x * (1 + erf(x / sqrt(2))) / 2, torch's exact form
    x, name = args[0], fnode.name
    erf = em.node("Erf", [em.node("Div", [x, em.const(2 ** 0.5)], f"{name}_scaled")], f"{name}_erf")
    half = em.node("Mul", [em.node("Add", [erf, em.const(1.0)], f"{name}_cdf2"), em.const(0.5)], f"{name}_cdf")
    return em.node("Mul", [x, half], name)


@translates(F.silu)
def _silu(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Mul", [args[0], em.node("Sigmoid", args, f"{fnode.name}_sigmoid")], fnode.name)


# ---------------------------------------------------------------- modules


@translates(nn.Embedding)
def _embedding(em: Emitter, fnode: fx.Node, mod: nn.Embedding, x: str) -> str:
    return em.node("Gather", [em.weight(f"{fnode.target}.weight", mod.weight), x], fnode.name, axis=0)


@translates(HistoryBag)
def _history_bag(em: Emitter, fnode: fx.Node, mod: HistoryBag, x: str) -> str:
    """The key's set from the table, then reduced as a set column's is (_set_bag)."""
    table = em.weight_array(f"{fnode.target}.table", mod.table.cpu().numpy())
    return _set_bag(em, fnode, mod, em.node("Gather", [table, x], f"{fnode.name}_items", axis=0))


@translates(SetBag)
def _set_bag(em: Emitter, fnode: fx.Node, mod: SetBag, items: str) -> str:
    """The set's rows masked where there is no id (index 0), summed, then divided by the count (mean) or its
    square root (sqrtn), the count at least 1 (an empty set gives zeros)."""
    name = fnode.name
    present = em.node("Cast", [em.node("Greater", [items, em.const(0, np.int64)], f"{name}_present_bool")],
                      f"{name}_present", to=onnx.TensorProto.FLOAT)
    present = em.node("Unsqueeze", [present, em.const([-1], np.int64)], f"{name}_present_column")
    rows = em.node("Gather", [em.weight(f"{fnode.target}.weight", mod.weight), items], f"{name}_rows", axis=0)
    total = em.node("ReduceSum", [em.node("Mul", [rows, present], f"{name}_kept"), em.const([1], np.int64)],
                    name if mod.mode == "sum" else f"{name}_total", keepdims=0)
    if mod.mode == "sum":
        return total
    count = em.node("ReduceSum", [present, em.const([1], np.int64)], f"{name}_count", keepdims=0)
    count = em.node("Max", [count, em.const(1.0)], f"{name}_count_at_least_1")
    if mod.mode == "sqrtn":
        count = em.node("Sqrt", [count], f"{name}_count_sqrt")
    return em.node("Div", [total, count], name)


@translates(nn.Linear)
def _linear(em: Emitter, fnode: fx.Node, mod: nn.Linear, x: str) -> str:
    name = fnode.target
    return em.node("Gemm", [x, em.weight(f"{name}.weight", mod.weight), em.weight(f"{name}.bias", mod.bias)],
                   fnode.name, transB=1)


@translates(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(em: Emitter, fnode: fx.Node, mod: nn.BatchNorm1d, x: str) -> str:
    params = [em.weight(f"{fnode.target}.{k}", getattr(mod, k)) for k in ("weight", "bias", "running_mean",
                                                                          "running_var")]
    return em.node("BatchNormalization", [x, *params], fnode.name, epsilon=float(mod.eps))


@translates(nn.LayerNorm)
def _layer_norm(em: Emitter, fnode: fx.Node, mod: nn.LayerNorm, x: str) -> str:
    scale, shift = (em.weight(f"{fnode.target}.{k}", getattr(mod, k)) for k in ("weight", "bias"))
    return em.node("LayerNormalization", [x, scale, shift], fnode.name, axis=-1, epsilon=float(mod.eps))


@translates(nn.Dropout)
def _dropout(em: Emitter, fnode: fx.Node, mod: nn.Dropout, x: str) -> str:
    return em.node("Identity", [x], fnode.name)


# ---------------------------------------------------------------- images


@translates(nn.Conv2d)
def _conv2d(em: Emitter, fnode: fx.Node, mod: nn.Conv2d, x: str) -> str:
    name = fnode.target
    inputs = [x, em.weight(f"{name}.weight", mod.weight)] + ([em.weight(f"{name}.bias", mod.bias)] if mod.bias is not
                                                               None else [])
    pad = list(mod.padding) * 2  # (top, left, bottom, right): the same on both sides
    return em.node("Conv", inputs, fnode.name, kernel_shape=list(mod.kernel_size), strides=list(mod.stride), pads=pad)


def _window(mod) -> dict:
    """kernel, strides and pads of a pool module, as ONNX writes them."""
    k, s, p = (v if isinstance(v, tuple) else (v, v) for v in (mod.kernel_size, mod.stride, mod.padding))
    return {"kernel_shape": list(k), "strides": list(s), "pads": list(p) * 2}


@translates(nn.MaxPool2d)
def _max_pool(em: Emitter, fnode: fx.Node, mod: nn.MaxPool2d, x: str) -> str:
    return em.node("MaxPool", [x], fnode.name, **_window(mod))


@translates(nn.AvgPool2d)
def _avg_pool(em: Emitter, fnode: fx.Node, mod: nn.AvgPool2d, x: str) -> str:
    # torch divides by the whole window, the padded zeros counted (count_include_pad=True)
    return em.node("AveragePool", [x], fnode.name, count_include_pad=1, **_window(mod))


@translates(torch.mean)
def _mean(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("ReduceMean", args, fnode.name, axes=list(fnode.kwargs["dim"]), keepdims=0)


@translates(torch.reshape)
def _reshape(em: Emitter, fnode: fx.Node, args: list) -> str:
    return em.node("Reshape", [args[0], em.const(list(fnode.args[1]), np.int64)], fnode.name)
