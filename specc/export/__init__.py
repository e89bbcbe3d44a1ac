"""Export: trained fx GraphModule -> a self-contained ONNX model, checked against torch.

graph.py walks the fx graph, ops.py is the op table (one translation per fx target or module
type), ids.py maps raw category ids to vocabulary indices inside the graph, parity.py runs the
exported model through onnxruntime against torch."""

from specc.export.emitter import ML_OPSET, OPSET
from specc.export.graph import PROBABILITIES, to_onnx
from specc.export.parity import (
    PARITY_ROWS, PARITY_TOLERANCE, ExportError, parity, parity_rows, raw_feed, reference_outputs,
)

__all__ = ["ML_OPSET", "OPSET", "PARITY_ROWS", "PARITY_TOLERANCE", "PROBABILITIES", "ExportError", "parity",
           "parity_rows", "raw_feed", "reference_outputs", "to_onnx"]
