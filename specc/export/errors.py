"""The export stage's error, in a module of its own: the commands name it before training without
importing onnx (specc.export's other modules import it)."""


class ExportError(Exception):
    """The exported model does not reproduce torch's outputs."""
