"""The serving side: FastAPI app, ONNX Runtime engine, micro-batching, `xray serve`. Reads models from the registry
(`models.registry`); never imports torch or `training/` (tests/test_import_hygiene.py checks both)."""
