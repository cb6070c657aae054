"""The serving side: FastAPI app, ONNX Runtime engine, batch jobs, CLI. Never imports torch (see DESIGN.md)."""
