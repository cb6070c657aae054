"""torch -> one self-contained ONNX file, ONNX Runtime sessions, and the torch vs ONNX Runtime parity check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.onnx_runtime import session_options
from models.registry import BATCH_DIM

if TYPE_CHECKING:
    import onnxruntime

OPSET = 18
INPUT_NAME = "input"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


class ParityError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model within tolerance; nothing was registered."""


def export_onnx(
    graph: nn.Module, path: Path, *, input_size: int, names: list[str], metadata: dict[str, str] | None = None
) -> Path:
    """torch.onnx.export (dynamo) at opset 18 with a dynamic batch axis, saved as ONE file with embedded weights."""
    import onnx

    example = torch.zeros(2, 1, input_size, input_size)  # batch 2: a batch of 1 would be specialised away
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    drop_source_locations(proto)
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    _check_single_file(path, names)
    return path


def drop_source_locations(proto) -> None:
    """Remove the exporter's per-node Python stack traces ("File /home/.../graphs.py, line 23"): they name the
    folders of the machine that exported the model, and a registry file must not (nor does serving need them)."""
    graphs = [proto.graph, *proto.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            node.doc_string = ""
            kept = [entry for entry in node.metadata_props if entry.key != STACK_TRACE_KEY]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            graphs += [attribute.g for attribute in node.attribute if attribute.HasField("g")]
            graphs += [g for attribute in node.attribute for g in attribute.graphs]


def _check_single_file(path: Path, names: list[str]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"expected all weights inside {path}, but {len(external)} are external: {external[:3]}")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        raise RuntimeError(f"expected opset {OPSET}, {path} imports {opsets}")
    got = [o.name for o in model.graph.output]
    if got != names or [i.name for i in model.graph.input] != [INPUT_NAME]:
        raise RuntimeError(f"expected input {INPUT_NAME!r} and outputs {names}, got {got}")


def ort_session(path: Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session with the shared options and `threads` intra-op threads."""
    import onnxruntime as ort

    options = session_options(intra_op_threads=threads, spin=True, quiet=True)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session: onnxruntime.InferenceSession, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Every output of `session` on `x`, run in batches and concatenated."""
    parts = [session.run(None, {INPUT_NAME: x[i : i + batch_size]}) for i in range(0, len(x), batch_size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


@torch.no_grad()
def run_torch(graph: nn.Module, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Every output of the torch `graph` on `x`, run in batches and concatenated."""
    parts = []
    for i in range(0, len(x), batch_size):
        out = graph(torch.from_numpy(x[i : i + batch_size]))
        parts.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat([p[j] for p in parts]).numpy() for j in range(len(parts[0]))]


def _compare_output(name: str, want: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, Any]:
    """One output's parity entry: shape, max difference, limit and whether it is within the limit."""
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
    entry: dict[str, Any] = {"shape": [BATCH_DIM, *want.shape[1:]], "max_abs_diff": float(diff.max(initial=0))}
    if name == "error":
        rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-12)
        entry["max_rel_diff"] = float(rel.max(initial=0))
        entry["limit"] = tolerance
        ok = entry["max_rel_diff"] <= tolerance
    elif name == "probabilities":
        entry["limit"] = tolerance
        ok = entry["max_abs_diff"] <= tolerance
    else:
        entry["limit"] = 10 * tolerance * max(1.0, float(np.abs(want).max(initial=0)))
        ok = entry["max_abs_diff"] <= entry["limit"]
    entry["ok"] = bool(ok)
    return entry


def parity_check(
    graph: nn.Module,
    session: onnxruntime.InferenceSession,
    x: np.ndarray,
    kind: str,
    names: list[str],
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Compare torch and ONNX Runtime outputs on `x`; ParityError when the main output disagrees.

    Classifier: max |torch - ORT| of the probabilities <= tolerance; CAMs (logit units) <= 10 * tolerance * max(1,
    max |cam|). Autoencoder: max relative error difference <= tolerance; reconstruction like the CAMs.
    """
    expected = run_torch(graph, x)
    actual = run_ort(session, x)
    report: dict[str, Any] = {"images": int(len(x)), "tolerance": tolerance}
    failures = []
    for name, want, got in zip(names, expected, actual, strict=True):
        if want.shape != got.shape:
            failures.append(f"{name}: torch shape {want.shape}, ONNX Runtime shape {got.shape}")
            continue
        entry = report[name] = _compare_output(name, want, got, tolerance)
        if not entry["ok"]:
            failures.append(
                f"{name}: max difference {entry.get('max_rel_diff', entry['max_abs_diff']):.3g} "
                f"exceeds {entry['limit']:.3g}"
            )
    if failures:
        raise ParityError(
            f"ONNX export does not reproduce the torch model on {len(x)} real images: "
            + "; ".join(failures)
            + ". Nothing was written to the registry."
        )
    return report
