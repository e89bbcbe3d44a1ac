"""specc: a declarative model-spec compiler (spec text -> torch training -> ONNX)."""

__version__ = "0.1.0"
