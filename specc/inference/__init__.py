"""Inference: exported ONNX model + rows -> predictions, through onnxruntime. infer (sessions,
predict), serve (the HTTP server), evaluate (metrics on a labelled file), inspect (biases, PCA)."""
