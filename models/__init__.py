"""The shared core that training and serving both build on: labels, the torch-free imaging path (decode, preprocess,
phantoms), the model registry contract (`models.registry`), ONNX Runtime session options, the shared settings, and
the torch network definitions.

This package must stay light: importing it (or `labels`, `imaging`, `preprocessing`, `phantoms`, `registry`,
`onnx_runtime`, `settings`) never imports torch. Modules that need torch (`classifier`, `autoencoder`) import it
themselves. Nothing here imports `training/`, `service/` or `xray/`.
"""
