"""The ONNX being written: nodes, initializers (constants shared by value), the opsets used."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

OPSET = 17
ML_OPSET = 2  # LabelEncoder-2: int64 and string keys


class Emitter:
    """Collects the nodes and initializers of one ONNX graph."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: dict[tuple, str] = {}
        self.uses_ml = False  # an ai.onnx.ml operator was emitted

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes() if arr.dtype != object else repr(arr.tolist()))
        if key not in self.constants:
            name = f"const_{len(self.constants)}"
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
        self.initializers.append(numpy_helper.from_array(array, name))
        return name
