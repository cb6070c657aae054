"""The training side: data sources and splits, augmentation, the trainers, calibration, metrics, evaluation
(`xray eval`), export to ONNX (`xray export`) and the default model set.

Everything here may use torch. It builds on `models/` (the shared core, the registry contract included) and never
imports `service/`; the `xray` command (`xray/`) composes both sides (tests/test_import_hygiene.py checks this).
"""
