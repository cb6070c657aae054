"""The whole export, step by step: checkpoint -> ONNX (parity-checked) [-> int8] -> registry [-> alias]."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models.preprocessing import PreprocessSpec
from models.registry import INT8_SUFFIX, INTENDED_USE, Manifest, Registry, check_name, sha256_file
from training import checkpoints
from training.export.data import ExportData, load_export_data
from training.export.graphs import build_graph, output_names
from training.export.int8 import evaluate_int8
from training.export.manifest import int8_manifest_fields, manifest_fields, provenance_text
from training.export.onnx_check import export_onnx, ort_session, parity_check

Log = Callable[..., Any]


@dataclass
class ExportOptions:
    """Every setting of an export (the `xray export` flags, less the registry, name and output ones)."""

    int8: bool = False  # also build and check a static QDQ int8 variant (NAME-int8)
    reconstruction: bool = False  # autoencoders: also output the reconstruction
    calibration_data: list[str] | None = None  # data specs replacing the checkpoint's own
    parity_images: int = 64
    parity_tolerance: float = 1e-4
    evaluation_images: int = 2000
    calibration_images: int = 128
    calibration_method: str = "minmax"
    reduce_range: bool = True  # 7-bit int8 weights (plain AVX2 kernels saturate with 8)
    max_auroc_drop: float = 0.005
    min_error_correlation: float = 0.98
    max_batch_size: int = 32
    provenance: str | None = None
    promote: str | None = None  # alias to point at the new fp32 version
    threads: int = 1
    benchmark_batch: int = 32
    benchmark_repeats: int = 20
    seed: int = 0


@dataclass
class _Source:
    """A loaded checkpoint and what the export derives from it."""

    path: Path
    checkpoint: dict[str, Any]
    kind: str
    spec: PreprocessSpec
    sha256: str
    names: list[str]
    graph: nn.Module


def _load_source(checkpoint_path: Path, reconstruction: bool) -> _Source:
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    kind = checkpoint.get("kind")
    spec = PreprocessSpec.from_dict(checkpoint["spec"])
    if kind == "classifier" and not checkpoint.get("thresholds"):
        raise ValueError(
            f"expected per-label thresholds in {checkpoint_path}: export the calibrated model.ckpt written at the "
            "end of training, not best.ckpt/last.ckpt"
        )
    names = output_names(kind, reconstruction)
    graph = build_graph(checkpoint, reconstruction)
    return _Source(checkpoint_path, checkpoint, kind, spec, sha256_file(checkpoint_path), names, graph)


def _start_report(source: _Source, name: str, registry: Registry, data: ExportData) -> dict[str, Any]:
    return {
        "checkpoint": str(source.path),
        "checkpoint_sha256": source.sha256,
        "kind": source.kind,
        "name": name,
        "registry": str(registry.root),
        "data": {
            "source": data.source,
            "specs": data.specs,
            "evaluation_images": int(len(data.evaluation)),
            "calibration_images": int(len(data.calibration)),
        },
    }


def _export_with_parity(
    source: _Source, fp32_path: Path, data: ExportData, options: ExportOptions, report: dict[str, Any], log: Log
) -> tuple[Any, dict[str, list[int | str]]]:
    """Write the fp32 graph, check it against torch on real images; (its ORT session, output shapes)."""
    metadata = {
        "xray.kind": source.kind,
        "xray.labels": json.dumps(list(source.checkpoint.get("labels") or [])),
        "xray.preprocess": source.spec.to_json(),
        "xray.intended_use": INTENDED_USE,
    }
    export_onnx(source.graph, fp32_path, input_size=source.spec.size, names=source.names, metadata=metadata)
    session = ort_session(fp32_path, options.threads)
    x = data.evaluation[: options.parity_images]
    parity = parity_check(source.graph, session, x, source.kind, source.names, options.parity_tolerance)
    report["parity"] = parity
    main_output = "probabilities" if source.kind == "classifier" else "error"
    log(
        f"parity on {parity['images']} real images: max |torch - ORT| {main_output} "
        f"{parity[main_output]['max_abs_diff']:.2e} (limit {options.parity_tolerance:g})"
    )
    return session, {n: parity[n]["shape"] for n in source.names}


def _int8(
    source: _Source, session: Any, fp32_path: Path, int8_path: Path, data: ExportData, options: ExportOptions, log: Log
) -> dict[str, Any]:
    return evaluate_int8(
        source.kind, source.checkpoint, session, fp32_path, int8_path, data,
        calibration_method=options.calibration_method, reduce_range=options.reduce_range,
        max_auroc_drop=options.max_auroc_drop, min_error_correlation=options.min_error_correlation,
        threads=options.threads, benchmark_batch=options.benchmark_batch,
        benchmark_repeats=options.benchmark_repeats, log=log,
    )  # fmt: skip


def _register_fp32(
    registry: Registry,
    name: str,
    fp32_path: Path,
    source: _Source,
    shapes: dict[str, list[int | str]],
    options: ExportOptions,
    report: dict[str, Any],
    log: Log,
) -> tuple[Manifest, dict[str, Any]]:
    """Add the fp32 model as a new version of `name`; (its manifest, the fields it was written with)."""
    text = provenance_text(list((source.checkpoint.get("args") or {}).get("data") or []), options.provenance)
    fields = manifest_fields(
        source.checkpoint, source.sha256, kind=source.kind, spec=source.spec, names=source.names, shapes=shapes,
        provenance=text, max_batch_size=options.max_batch_size, export_report=report,
    )  # fmt: skip
    manifest = registry.add_version(name, fp32_path, fields)
    report["fp32"] = {"name": manifest.name, "version": manifest.version, "sha256": manifest.onnx_sha256}
    log(f"registered {manifest.ref} ({manifest.onnx_bytes / 1e6:.2f} MB) in {registry.root}")
    return manifest, fields


def _register_int8(
    registry: Registry,
    name: str,
    int8_path: Path,
    fields: dict[str, Any],
    fp32: Manifest,
    source: _Source,
    int8_result: dict[str, Any],
    report: dict[str, Any],
    log: Log,
) -> None:
    int8_fields = int8_manifest_fields(
        fields,
        report,
        kind=source.kind,
        variant_of={"name": fp32.name, "version": fp32.version},
        outlier_threshold=int8_result.get("_outlier_threshold"),
    )
    manifest = registry.add_version(name + INT8_SUFFIX, int8_path, int8_fields)
    report["int8"]["registered"] = {"name": manifest.name, "version": manifest.version}
    log(f"registered {manifest.ref} ({manifest.onnx_bytes / 1e6:.2f} MB)")


def _promote(registry: Registry, name: str, manifest: Manifest, alias: str, report: dict[str, Any], log: Log) -> None:
    registry.promote(name, manifest.version, alias)
    report["promoted"] = alias
    log(f"promoted {manifest.ref} to {alias!r}")


def export_checkpoint(
    checkpoint_path: str | Path,
    name: str,
    registry: Registry,
    options: ExportOptions | None = None,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """The whole export; returns the report (also stored in each manifest's `export` field)."""
    options = options or ExportOptions()
    check_name(name)
    source = _load_source(Path(checkpoint_path), options.reconstruction)
    data = load_export_data(
        source.checkpoint,
        source.spec,
        override=options.calibration_data,
        evaluation_images=max(options.evaluation_images, options.parity_images),
        calibration_images=options.calibration_images,
        seed=options.seed,
    )
    report = _start_report(source, name, registry, data)
    with tempfile.TemporaryDirectory(prefix="xray-export-") as tmp:
        fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        session, shapes = _export_with_parity(source, fp32_path, data, options, report, log)
        int8_result = None
        if options.int8:
            int8_result = _int8(source, session, fp32_path, int8_path, data, options, log)
            report["int8"] = {k: v for k, v in int8_result.items() if not k.startswith("_")}

        manifest, fields = _register_fp32(registry, name, fp32_path, source, shapes, options, report, log)
        if int8_result is not None and int8_result["accepted"]:
            _register_int8(registry, name, int8_path, fields, manifest, source, int8_result, report, log)
    if options.promote:
        _promote(registry, name, manifest, options.promote, report, log)
    return report
