"""Inference: exported ONNX model + rows -> predictions, through onnxruntime. session (onnxruntime),
columns (what input a model takes), read_text / read_arrays / read_parquet / read_images (the
readers), infer (predict), serve (the HTTP server), evaluate (metrics on a labelled file), inspect
(biases, PCA)."""
