"""The ONNX being written: nodes, initializers (constants shared by value), the opsets used."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

OPSET = 17
ML_OPSET = 2  # LabelEncoder-2: int64 and string keys


class Emitter:
    """Collects the nodes and initializers of one ONNX graph. Every value it names is named once (ONNX's
    single assignment): a name already given, or one of `reserved` (the graph's inputs and outputs), gets
    `_1`, `_2`, ... appended, so that a spec's value named `rating`, `const_0` or `scores` is a value of its
    own; only an `exact` emission, a graph output's, takes a reserved name, once."""

    def __init__(self, reserved=()):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: dict[tuple, str] = {}
        self.uses_ml = False  # an ai.onnx.ml operator was emitted
        self.reserved = frozenset(reserved)
        self.taken: set[str] = set(self.reserved)  # every name given, and the reserved ones
        self.made: dict[str, str] = {}  # what `once` made, by its key
        self.outputs: set[str] = set()  # the reserved names made (graph outputs)

    def fresh(self, name: str, exact: bool = False) -> str:
        """A name for a new value: `name` itself where it is free, else with the first free `_k` appended; with
        `exact`, `name` (a reserved one, a graph output's) or a ValueError (a bug: an output made twice)."""
        if exact:
            if name not in self.reserved or name in self.outputs:
                raise ValueError(f"{name!r} is no graph output still to be made")
            self.outputs.add(name)
            return name
        out, k = name, 0
        while out in self.taken:
            k += 1
            out = f"{name}_{k}"
        self.taken.add(out)
        return out

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", exact: bool = False, **attrs) -> str:
        """A node of one output, named `output` (or as `fresh` names it); its output's name."""
        return self.nodes_of(op, inputs, [output], domain, exact_outputs=(output,) if exact else (), **attrs)[0]

    def nodes_of(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", exact_outputs=(),
                 **attrs) -> list[str]:
        """A node of several outputs (TopK's values and indices), each named as `fresh` names it (those in
        `exact_outputs` exactly); their names."""
        names = [self.fresh(o, exact=o in exact_outputs) for o in outputs]
        self.nodes.append(helper.make_node(op, inputs, names, name=names[0], domain=domain, **attrs))
        return names

    def once(self, key: str, make) -> str:
        """The name `make()` gave the first time it was asked for by `key` (a side table's key looked up once)."""
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes() if arr.dtype != object else repr(arr.tolist()))
        if key not in self.constants:
            name = self.fresh(f"const_{len(self.constants)}")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self.constants[key] = name
        return self.constants[key]

    def opset_imports(self) -> list[onnx.OperatorSetIdProto]:
        """The standard opset, and ai.onnx.ml's where a LabelEncoder was emitted."""
        ml = [helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if self.uses_ml else []
        return [helper.make_opsetid("", OPSET), *ml]

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        return self.weight_array(name, tensor.detach().cpu().float().numpy())

    def weight_array(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name
