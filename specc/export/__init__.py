"""Export: trained fx GraphModule -> a self-contained ONNX model, checked against torch.

graph.py walks the fx graph, ops.py is the op table (one translation per fx target or module
type), ids.py maps raw category ids to vocabulary indices inside the graph, compare.py runs the
exported model through onnxruntime against torch.

The names below are imported on first use (PEP 562): onnx and onnxruntime take half a second to import,
which a run pays at its export, after training, and a command that only names ExportError never pays."""

from __future__ import annotations

import importlib

_MODULE_OF = {"ML_OPSET": "emitter", "OPSET": "emitter", "PROBABILITIES": "graph", "to_onnx": "graph",
              "ExportError": "errors", "PARITY_ROWS": "compare", "PARITY_TOLERANCE": "compare", "parity": "compare",
              "parity_rows": "compare", "raw_feed": "compare", "reference_outputs": "compare"}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'specc.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"specc.export.{_MODULE_OF[name]}"), name)
