"""Execution backends (ONNX Runtime, TensorRT, torch), registered by name, imported lazily."""
