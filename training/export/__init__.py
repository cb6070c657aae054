"""Export a trained checkpoint to ONNX, check it against torch on real images, optionally quantise it, register it.

    xray export runs/nih/model.ckpt --name nih-classifier --int8 --promote

Classifier graphs: input "input" float32 [N, 1, S, S] -> "probabilities" [N, K] (sigmoid inside the graph) and
"cam" [N, K, h, w] (class activation maps in logit units: the spatial mean of cam[:, k] is the logit of label k).
Autoencoder graphs: "input" -> "error" [N] (mean squared reconstruction error per image), plus "reconstruction"
[N, 1, S, S] with --reconstruction. Opset 18, dynamic batch axis, one self-contained file (weights embedded).

Before anything is written, the ONNX Runtime outputs are compared with torch's on real images: a sample of the
checkpoint's validation split, rebuilt from the data specs and split policy stored in the checkpoint (or
--calibration-data). Probabilities must agree within --parity-tolerance (absolute), autoencoder errors within it
relative; otherwise the export fails with ParityError and the registry is untouched.

--int8 adds a static QDQ-quantised variant (per-channel int8 weights, uint8 activations calibrated on real training
images) under the model name `<name>-int8`. It is compared with fp32 on the validation images (classifiers: mean
AUROC; autoencoders: rank correlation of the errors) and refused when it loses more than allowed; its speed-up over
fp32 is measured side by side with fixed threads and reported, never assumed.

The package, by reason to change: graphs (what is exported), onnx_check (ONNX file, ORT sessions, parity), int8
(quantisation and its accept/refuse check), data (the real images), manifest (what the registry records), run (the
export steps, ExportOptions), cli (`xray export`).
"""

from training.export.cli import get_args_parser, main, options_from_args
from training.export.graphs import AutoencoderGraph, ClassifierGraph, build_graph, output_names
from training.export.int8 import evaluate_int8, quantize_int8
from training.export.onnx_check import ParityError, export_onnx, ort_session, parity_check, run_ort, run_torch
from training.export.run import ExportOptions, export_checkpoint

__all__ = [
    "AutoencoderGraph",
    "ClassifierGraph",
    "ExportOptions",
    "ParityError",
    "build_graph",
    "evaluate_int8",
    "export_checkpoint",
    "export_onnx",
    "get_args_parser",
    "main",
    "options_from_args",
    "ort_session",
    "output_names",
    "parity_check",
    "quantize_int8",
    "run_ort",
    "run_torch",
]
