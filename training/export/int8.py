"""Static int8 (QDQ) quantisation and its evaluation: accuracy against fp32, side-by-side speed, accept or refuse."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import calibrate
from training import metrics
from training.export.data import ExportData
from training.export.onnx_check import INPUT_NAME, ort_session, run_ort


def _calibration_reader(images: np.ndarray, batch_size: int = 16):
    """An onnxruntime.quantization CalibrationDataReader over preprocessed images (N, 1, S, S)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return {INPUT_NAME: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

    return ArrayReader()


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: np.ndarray, method: str = "minmax", reduce_range: bool = True
) -> Path:
    """Static QDQ quantisation: shape inference + graph pre-processing, then per-channel int8 weights and uint8
    activations calibrated on `calibration` (real preprocessed training images).

    `reduce_range` quantises weights to 7 bits. Measured here: on an AVX2 CPU without VNNI, ONNX Runtime's U8S8
    kernels saturate with full-range weights (a phantom classifier's probabilities moved by up to 0.89 and its AUROC
    fell 0.86 -> 0.66, while the same QDQ graph run unfused was accurate); with reduce_range the drop was 0.002.
    Turn it off only for machines with VNNI (or GPUs); the AUROC check tells."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"expected a calibration method in {sorted(methods)}, got {method!r}")
    if len(calibration) == 0:
        raise ValueError("expected calibration images for int8 quantisation, got none")
    reader = _calibration_reader(calibration)
    fp32_path, out_path = fp32_path.resolve(), out_path.resolve()
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    # ORT's shape inference and calibrator write scratch files (sym_shape_infer_temp.onnx, <uuid>.data) into the
    # current directory: run them inside the output's folder so nothing lands in the user's working tree.
    with contextlib.chdir(out_path.parent):
        try:
            quant_pre_process(str(fp32_path), str(pre))
        except Exception as error:  # ORT's symbolic shape inference gives up on some graphs (e.g. the AE's Reshape)
            if "symbolic shape" not in str(error).lower():
                raise
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # ONNX shape inference suffices
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=reduce_range,
        )
    pre.unlink(missing_ok=True)
    return out_path


def time_sessions(sessions: dict[str, Any], x: np.ndarray, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median seconds per batch of each session on the same batch, runs interleaved (side by side)."""
    feed = {INPUT_NAME: x}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of `a` and `b` (NaN for fewer than two values)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v), dtype=np.float64)
        r[order] = np.arange(len(v))
        return r

    if len(a) < 2:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare_classifier(
    checkpoint: dict[str, Any], labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray, max_auroc_drop: float
) -> dict[str, Any]:
    """Per-label and mean AUROC of fp32 and int8 probabilities (N, K) against `labels` (N, K); accepted when the mean
    AUROC drops by at most `max_auroc_drop`."""
    names = list(checkpoint["labels"])
    per_fp32 = dict(zip(names, metrics.per_label_auroc(labels, fp32), strict=True))
    per_int8 = dict(zip(names, metrics.per_label_auroc(labels, int8), strict=True))
    mean_fp32, mean_int8 = metrics.mean_auroc(per_fp32.values()), metrics.mean_auroc(per_int8.values())
    thresholds = checkpoint.get("thresholds") or {}  # on the calibrated scale
    fp32, int8 = (calibrate(p, names, checkpoint.get("calibration")) for p in (fp32, int8))
    agreement = {
        name: float(np.mean((fp32[:, k] >= thresholds[name]) == (int8[:, k] >= thresholds[name])))
        for k, name in enumerate(names)
        if name in thresholds
    }
    result: dict[str, Any] = {
        "auroc_fp32": per_fp32,
        "auroc_int8": per_int8,
        "mean_auroc_fp32": mean_fp32,
        "mean_auroc_int8": mean_int8,
        "max_auroc_drop": max_auroc_drop,
        "max_probability_diff": float(np.abs(fp32 - int8).max()),
        "decision_agreement": agreement,
    }
    if mean_fp32 is None or mean_int8 is None:
        result.update(accepted=False, reason="no label has both classes in the evaluation images: AUROC undefined")
        return result
    drop = mean_fp32 - mean_int8
    result["auroc_drop"] = drop
    accepted = drop <= max_auroc_drop
    result["accepted"] = bool(accepted)
    result["reason"] = (
        f"mean AUROC fp32 {mean_fp32:.4f} -> int8 {mean_int8:.4f} (drop {drop:+.4f}, "
        f"{'within' if accepted else 'exceeds'} the allowed {max_auroc_drop:g})"
    )
    return result


def compare_autoencoder(
    checkpoint: dict[str, Any], fp32: np.ndarray, int8: np.ndarray, min_error_correlation: float, own_split: bool
) -> dict[str, Any]:
    """Rank correlation of fp32 and int8 errors (N,), accepted when >= `min_error_correlation`; plus the int8 outlier
    threshold (recomputed at the checkpoint's percentile on its own validation split) and verdict agreement."""
    corr = spearman(fp32, int8)
    outlier = checkpoint.get("outlier") or {}
    result: dict[str, Any] = {
        "error_rank_correlation": corr,
        "min_error_correlation": min_error_correlation,
        "max_rel_error_diff": float(np.max(np.abs(fp32 - int8) / np.maximum(fp32, 1e-12))),
    }
    accepted = bool(np.isfinite(corr) and corr >= min_error_correlation)
    result["accepted"] = accepted
    result["reason"] = (
        f"rank correlation of fp32 and int8 errors {corr:.4f} "
        f"({'>=' if accepted else '<'} the required {min_error_correlation:g})"
    )
    if "threshold" in outlier:
        threshold = float(outlier["threshold"])
        if own_split and "percentile" in outlier:
            threshold = float(np.percentile(int8, float(outlier["percentile"])))
        result["_outlier_threshold"] = threshold
        result["outlier_threshold"] = threshold
        result["verdict_agreement"] = float(np.mean((fp32 > float(outlier["threshold"])) == (int8 > threshold)))
    return result


def compare_speed(
    fp32_session: Any, int8_session: Any, images: np.ndarray, batch: int, repeats: int, threads: int
) -> dict[str, Any]:
    """fp32 vs int8 milliseconds per batch of `batch` images (repeated to fill the batch), timed side by side."""
    bench = images[:batch]
    if len(bench) < batch:
        bench = np.resize(bench, (batch, *bench.shape[1:]))
    seconds = time_sessions({"fp32": fp32_session, "int8": int8_session}, bench, repeats=repeats)
    return {
        "batch": int(batch),
        "threads": int(threads),
        "fp32_ms": seconds["fp32"] * 1e3,
        "int8_ms": seconds["int8"] * 1e3,
        "speedup": seconds["fp32"] / seconds["int8"],
    }


def evaluate_int8(
    kind: str,
    checkpoint: dict[str, Any],
    session: Any,
    fp32_path: Path,
    int8_path: Path,
    data: ExportData,
    *,
    calibration_method: str = "minmax",
    reduce_range: bool = True,
    max_auroc_drop: float = 0.005,
    min_error_correlation: float = 0.98,
    threads: int = 1,
    benchmark_batch: int = 32,
    benchmark_repeats: int = 20,
    log: Callable[..., Any] = print,
) -> dict[str, Any]:
    """Quantise, compare with fp32 on the evaluation images, time both; decide whether the variant is accepted.

    Keys starting with "_" are for the exporter only (not part of the report)."""
    quantize_int8(fp32_path, int8_path, data.calibration, calibration_method, reduce_range)
    int8_session = ort_session(int8_path, threads)
    fp32_out = run_ort(session, data.evaluation)[0]
    int8_out = run_ort(int8_session, data.evaluation)[0]
    result: dict[str, Any] = {
        "calibration_images": int(len(data.calibration)),
        "calibration_method": calibration_method,
        "reduce_range": reduce_range,
        "evaluation_images": int(len(data.evaluation)),
        "bytes": {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
    }
    if kind == "classifier":
        result.update(compare_classifier(checkpoint, data.evaluation_labels, fp32_out, int8_out, max_auroc_drop))
    else:
        result.update(compare_autoencoder(checkpoint, fp32_out, int8_out, min_error_correlation, data.own_split))
    result["speed"] = speed = compare_speed(
        session, int8_session, data.evaluation, benchmark_batch, benchmark_repeats, threads
    )
    verdict = "accepted" if result["accepted"] else "REFUSED"
    log(
        f"int8 {verdict}: {result['reason']}; speed-up {speed['speedup']:.2f}x "
        f"(batch {benchmark_batch}, {threads} thread(s): fp32 {speed['fp32_ms']:.1f} ms, "
        f"int8 {speed['int8_ms']:.1f} ms)"
    )
    return result
