"""ONNX Runtime session options, one recipe for the server (service.engine) and the exporter's checks (training.export).

Torch-free. Sequential execution with full graph optimisation; thread counts always explicit, because ONNX Runtime's
defaults take every core and a server that also decodes uploads must share them.
"""

from __future__ import annotations

import onnxruntime as ort


def session_options(
    *, intra_op_threads: int = 0, inter_op_threads: int = 1, spin: bool = False, quiet: bool = False
) -> ort.SessionOptions:
    """`intra_op_threads`/`inter_op_threads` 0 = ONNX Runtime's default; `spin` lets idle threads spin-wait."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        # idle intra-op threads otherwise spin-wait, burning the cores that decode uploads (measured: 2 threads
        # spinning cost the server 3.6x CPU per request on 2 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quiet:
        options.log_severity_level = 3  # errors only
    return options
