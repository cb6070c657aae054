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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.classifier import ENCODER_STRIDE, ClassifierConfig, XRayClassifier
from models.onnx_runtime import session_options
from models.preprocessing import PreprocessSpec
from models.registry import BATCH_DIM, INT8_SUFFIX, INTENDED_USE, Registry, check_name, sha256_file
from models.settings import default_registry_dir
from training import checkpoints, metrics
from training.datasets import LabelledImages, preprocess_all
from training.sources import SPEC_HELP, SplitPolicy, load_splits, parse_spec

OPSET = 18
INPUT_NAME = "input"

# what the manifest says about a training source, by data-spec kind
PROVENANCE = {
    "nih": "NIH ChestX-ray14 (NIH Clinical Center): released without restriction, public domain / CC0.",
    "medmnist": (
        "MedMNIST v2 (Yang et al., Scientific Data 2023), e.g. PneumoniaMNIST from Kermany et al. (Cell 2018): "
        "CC BY 4.0 - attribution required."
    ),
    "chexpert": (
        "CheXpert (Stanford ML Group / AIMI): Stanford University CheXpert Dataset Research Use Agreement, "
        "non-commercial research only."
    ),
    "phantoms": "Synthetic phantoms from models.phantoms (no patient data): for tests and demos only.",
    "csv": "User-supplied images (csv table): licence not recorded - state it with --provenance.",
    "folder": "User-supplied images (image folder): licence not recorded - state it with --provenance.",
}


class ParityError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model within tolerance; nothing was registered."""


# ------------------------------------------------------------------------------------------------- graph wrappers


class ClassifierGraph(nn.Module):
    """What the classifier ONNX graph computes: (probabilities (B, K), cam (B, K, h, w) in logit units)."""

    def __init__(self, model: XRayClassifier) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, cam = self.model.forward_with_cam(x)  # (B, K), (B, K, h, w)
        return torch.sigmoid(logits), cam


class AutoencoderGraph(nn.Module):
    """What the autoencoder ONNX graph computes: error (B,) [, reconstruction (B, 1, S, S)]."""

    def __init__(self, model: ConvAutoencoder, reconstruction: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.reconstruction = reconstruction

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        rec = self.model(x)  # (B, 1, S, S)
        diff = rec - x
        error = (diff * diff).flatten(1).mean(dim=1)  # (B,) == ConvAutoencoder.reconstruction_error
        return (error, rec) if self.reconstruction else error


def output_names(kind: str, reconstruction: bool = False) -> list[str]:
    if kind == "classifier":
        return ["probabilities", "cam"]
    return ["error", "reconstruction"] if reconstruction else ["error"]


def build_graph(checkpoint: dict[str, Any], reconstruction: bool = False) -> nn.Module:
    """The export wrapper around the checkpoint's network, weights loaded, in eval mode."""
    kind = checkpoint.get("kind")
    if kind == "classifier":
        model: nn.Module = XRayClassifier(ClassifierConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
        return ClassifierGraph(model).eval()
    if kind == "autoencoder":
        model = ConvAutoencoder(AutoencoderConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
        return AutoencoderGraph(model, reconstruction).eval()
    raise ValueError(f"expected a classifier or autoencoder checkpoint, got kind {kind!r}")


# --------------------------------------------------------------------------------------------------------- ONNX


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
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    _check_single_file(path, names)
    return path


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


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = session_options(intra_op_threads=threads, spin=True, quiet=True)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(session, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    parts = [session.run(None, {INPUT_NAME: x[i : i + batch_size]}) for i in range(0, len(x), batch_size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


@torch.no_grad()
def run_torch(graph: nn.Module, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    parts = []
    for i in range(0, len(x), batch_size):
        out = graph(torch.from_numpy(x[i : i + batch_size]))
        parts.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat([p[j] for p in parts]).numpy() for j in range(len(parts[0]))]


def parity_check(
    graph: nn.Module, session, x: np.ndarray, kind: str, names: list[str], tolerance: float = 1e-4
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
        report[name] = entry
        if not ok:
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


# --------------------------------------------------------------------------------------------------------- int8


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
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v), dtype=np.float64)
        r[order] = np.arange(len(v))
        return r

    if len(a) < 2:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


# --------------------------------------------------------------------------------------------------------- data


@dataclass
class ExportData:
    """Real images for parity, int8 calibration and the fp32/int8 comparison, preprocessed with the model's spec."""

    source: str  # "checkpoint" (its own validation/train splits) or "--calibration-data ..."
    specs: list[str]
    evaluation: np.ndarray  # (N, 1, S, S) validation images
    evaluation_labels: np.ndarray | None  # (N, K) classifier labels (NaN = missing)
    calibration: np.ndarray  # (M, 1, S, S) training images (int8 calibration)
    own_split: bool


def _split_policy(args: dict[str, Any]) -> SplitPolicy:
    return SplitPolicy(
        val_fraction=float(args.get("val_fraction", 0.1)),
        test_fraction=float(args.get("test_fraction", 0.2)),
        seed=int(args.get("split_seed", 0)),
        views=tuple(args.get("views") or ()),
        phantom_size=int(args.get("input_size", 128)),
        uncertain=str(args.get("uncertain", "ignore")),
        test_images_under=Path(args["test_images_under"]) if args.get("test_images_under") else None,
    )


def _sample(data: LabelledImages, n: int, seed: int) -> LabelledImages:
    if len(data) <= n:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False)))


def load_export_data(
    checkpoint: dict[str, Any],
    spec: PreprocessSpec,
    *,
    override: list[str] | None,
    evaluation_images: int,
    calibration_images: int,
    seed: int = 0,
) -> ExportData:
    """The checkpoint's validation (evaluation) and training (calibration) splits, or those of --calibration-data."""
    train_args = checkpoint.get("args") or {}
    specs = list(override or train_args.get("data") or [])
    if not specs:
        raise ValueError("the checkpoint records no training data (args.data); pass --calibration-data KIND:PATH")
    try:
        splits = load_splits(specs, _split_policy(train_args))
    except (FileNotFoundError, OSError) as error:
        hint = (
            "check the --calibration-data paths"
            if override
            else "run from the folder the model was trained in, or pass --calibration-data KIND:PATH"
        )
        raise FileNotFoundError(f"cannot rebuild the export's real images from {specs} ({error}); {hint}") from error
    evaluation = splits["val"] if len(splits["val"]) else splits["test"]
    if len(evaluation) == 0:
        raise ValueError(f"expected validation or test images in {specs} for the parity check, found none")
    calibration = splits["train"] if len(splits["train"]) else evaluation
    evaluation = _sample(evaluation, evaluation_images, seed)
    calibration = _sample(calibration, calibration_images, seed + 1)
    labels = None
    if checkpoint["kind"] == "classifier":
        labels = evaluation.select_labels(checkpoint["labels"]).labels
    return ExportData(
        source="--calibration-data" if override else "checkpoint",
        specs=specs,
        evaluation=preprocess_all(evaluation, spec),
        evaluation_labels=labels,
        calibration=preprocess_all(calibration, spec),
        own_split=not override,
    )


def provenance_text(specs: list[str], extra: str | None = None) -> str:
    kinds = []
    for spec in specs:
        try:
            kinds.append(parse_spec(spec)[0])
        except ValueError:
            continue
    lines = [PROVENANCE[k] for k in dict.fromkeys(kinds) if k in PROVENANCE]
    if extra:
        lines.append(extra)
    return " ".join(lines)


# ------------------------------------------------------------------------------------------------------- export


def _manifest_fields(
    checkpoint: dict[str, Any],
    checkpoint_sha: str,
    *,
    kind: str,
    spec: PreprocessSpec,
    names: list[str],
    shapes: dict[str, list[int | str]],
    provenance: str,
    max_batch_size: int,
    export_report: dict[str, Any],
) -> dict[str, Any]:
    train_args = checkpoint.get("args") or {}
    fields: dict[str, Any] = {
        "kind": kind,
        "precision": "fp32",
        "preprocess": spec.to_dict(),
        "inputs": [{"name": INPUT_NAME, "shape": [BATCH_DIM, 1, spec.size, spec.size], "dtype": "float32"}],
        "outputs": [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in names],
        "architecture": dict(checkpoint.get("config") or {}),
        "data": {
            "sources": list(train_args.get("data") or []),
            "split_policy": {
                key: train_args.get(key)
                for key in ("val_fraction", "test_fraction", "split_seed", "views", "uncertain")
                if key in train_args
            },
            "splits": checkpoint.get("data") or {},
            "input_size": spec.size,
        },
        "provenance": provenance,
        "intended_use": INTENDED_USE,
        "opset": OPSET,
        "max_batch_size": max_batch_size,
        "source_checkpoint_sha256": checkpoint_sha,
        "code_version": str(checkpoint.get("code_version") or "unknown"),
        "export_code_version": checkpoints.code_version(),
        "export": export_report,
    }
    if kind == "classifier":
        labels = list(checkpoint["labels"])
        thresholds = checkpoint.get("thresholds")
        if not thresholds:
            raise ValueError(
                "expected per-label thresholds in the checkpoint: export the calibrated model.ckpt written at the "
                "end of training, not best.ckpt/last.ckpt"
            )
        backbone = checkpoint["config"].get("backbone", "small_cnn")
        fields.update(
            labels=labels,
            thresholds={name: float(thresholds[name]) for name in labels},
            metrics=checkpoint.get("metrics") or {},
            cam={
                "output": "cam",
                "units": "logit",
                "stride": ENCODER_STRIDE.get(backbone),
                "shape": shapes["cam"][1:],
                "note": "the spatial mean of cam[:, k] is label k's logit; upsample bilinearly for a heatmap",
            },
        )
        fields["outputs"][0]["description"] = "per-label sigmoid probabilities, in the order of `labels`"
        fields["outputs"][1]["description"] = "class activation maps in logit units, one per label"
    else:
        outlier = checkpoint.get("outlier") or {}
        if "threshold" not in outlier:
            raise ValueError("expected an outlier threshold in the autoencoder checkpoint (outlier.threshold)")
        fields.update(
            outlier_threshold=float(outlier["threshold"]),
            outlier=outlier,
            metrics={"outlier": outlier, "final_val_error": (checkpoint.get("history") or [{}])[-1].get("val_error")},
        )
        fields["outputs"][0]["description"] = "mean squared reconstruction error per image (outlier score)"
    return fields


def export_checkpoint(
    checkpoint_path: str | Path,
    name: str,
    registry: Registry,
    *,
    int8: bool = False,
    reconstruction: bool = False,
    calibration_data: list[str] | None = None,
    parity_images: int = 64,
    parity_tolerance: float = 1e-4,
    evaluation_images: int = 2000,
    calibration_images: int = 128,
    calibration_method: str = "minmax",
    reduce_range: bool = True,
    max_auroc_drop: float = 0.005,
    min_error_correlation: float = 0.98,
    max_batch_size: int = 32,
    provenance: str | None = None,
    promote: str | None = None,
    threads: int = 1,
    benchmark_batch: int = 32,
    benchmark_repeats: int = 20,
    seed: int = 0,
    log=print,
) -> dict[str, Any]:
    """The whole export; returns the report (also stored in each manifest's `export` field)."""
    check_name(name)
    checkpoint_path = Path(checkpoint_path)
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
    checkpoint_sha = sha256_file(checkpoint_path)
    data = load_export_data(
        checkpoint,
        spec,
        override=calibration_data,
        evaluation_images=max(evaluation_images, parity_images),
        calibration_images=calibration_images,
        seed=seed,
    )
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": checkpoint_sha,
        "kind": kind,
        "name": name,
        "registry": str(registry.root),
        "data": {
            "source": data.source,
            "specs": data.specs,
            "evaluation_images": int(len(data.evaluation)),
            "calibration_images": int(len(data.calibration)),
        },
    }
    metadata = {
        "xray.kind": kind,
        "xray.labels": json.dumps(list(checkpoint.get("labels") or [])),
        "xray.preprocess": spec.to_json(),
        "xray.intended_use": INTENDED_USE,
    }
    with tempfile.TemporaryDirectory(prefix="xray-export-") as tmp:
        fp32_path = export_onnx(graph, Path(tmp) / "model.onnx", input_size=spec.size, names=names, metadata=metadata)
        session = ort_session(fp32_path, threads)
        parity = parity_check(graph, session, data.evaluation[:parity_images], kind, names, parity_tolerance)
        report["parity"] = parity
        main_output = "probabilities" if kind == "classifier" else "error"
        log(
            f"parity on {parity['images']} real images: max |torch - ORT| {main_output} "
            f"{parity[main_output]['max_abs_diff']:.2e} (limit {parity_tolerance:g})"
        )
        shapes = {n: parity[n]["shape"] for n in names}

        int8_result: dict[str, Any] | None = None
        int8_path = Path(tmp) / "model.int8.onnx"
        if int8:
            int8_result = _evaluate_int8(
                kind, checkpoint, session, fp32_path, int8_path, data, names,
                calibration_method=calibration_method, reduce_range=reduce_range, max_auroc_drop=max_auroc_drop,
                min_error_correlation=min_error_correlation, threads=threads, benchmark_batch=benchmark_batch,
                benchmark_repeats=benchmark_repeats, log=log,
            )  # fmt: skip
            report["int8"] = {k: v for k, v in int8_result.items() if not k.startswith("_")}

        text = provenance_text(list((checkpoint.get("args") or {}).get("data") or []), provenance)
        fields = _manifest_fields(
            checkpoint, checkpoint_sha, kind=kind, spec=spec, names=names, shapes=shapes, provenance=text,
            max_batch_size=max_batch_size, export_report=report,
        )  # fmt: skip
        manifest = registry.add_version(name, fp32_path, fields)
        report["fp32"] = {"name": manifest.name, "version": manifest.version, "sha256": manifest.onnx_sha256}
        log(f"registered {manifest.ref} ({manifest.onnx_bytes / 1e6:.2f} MB) in {registry.root}")

        if int8_result is not None and int8_result["accepted"]:
            int8_fields = {
                **fields,
                "precision": "int8",
                "variant_of": {"name": manifest.name, "version": manifest.version},
                "export": {**report, "int8": report["int8"]},
            }
            if kind == "classifier":  # the training metrics are the fp32 model's; say what was measured on int8
                int8_fields["metrics"] = {
                    "fp32_reference": fields["metrics"],
                    "int8_vs_fp32": {
                        key: report["int8"].get(key)
                        for key in ("evaluation_images", "mean_auroc_fp32", "mean_auroc_int8", "auroc_int8")
                    },
                }
            if int8_result.get("_outlier_threshold") is not None:
                int8_fields["outlier_threshold"] = int8_result["_outlier_threshold"]
            int8_manifest = registry.add_version(name + INT8_SUFFIX, int8_path, int8_fields)
            report["int8"]["registered"] = {"name": int8_manifest.name, "version": int8_manifest.version}
            log(f"registered {int8_manifest.ref} ({int8_manifest.onnx_bytes / 1e6:.2f} MB)")

    if promote:
        registry.promote(name, manifest.version, promote)
        report["promoted"] = promote
        log(f"promoted {manifest.ref} to {promote!r}")
    return report


def _evaluate_int8(
    kind, checkpoint, session, fp32_path, int8_path, data: ExportData, names, *, calibration_method, reduce_range,
    max_auroc_drop, min_error_correlation, threads, benchmark_batch, benchmark_repeats, log,
) -> dict[str, Any]:  # fmt: skip
    """Quantise, compare with fp32 on the evaluation images, time both; decide whether the variant is accepted."""
    quantize_int8(fp32_path, int8_path, data.calibration, calibration_method, reduce_range)
    int8_session = ort_session(int8_path, threads)
    fp32_out = run_ort(session, data.evaluation)
    int8_out = run_ort(int8_session, data.evaluation)
    result: dict[str, Any] = {
        "calibration_images": int(len(data.calibration)),
        "calibration_method": calibration_method,
        "reduce_range": reduce_range,
        "evaluation_images": int(len(data.evaluation)),
        "bytes": {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
    }
    if kind == "classifier":
        labels = list(checkpoint["labels"])
        per_fp32 = dict(zip(labels, metrics.per_label_auroc(data.evaluation_labels, fp32_out[0]), strict=True))
        per_int8 = dict(zip(labels, metrics.per_label_auroc(data.evaluation_labels, int8_out[0]), strict=True))
        mean_fp32, mean_int8 = metrics.mean_auroc(per_fp32.values()), metrics.mean_auroc(per_int8.values())
        thresholds = checkpoint.get("thresholds") or {}
        agreement = {
            name: float(np.mean((fp32_out[0][:, k] >= thresholds[name]) == (int8_out[0][:, k] >= thresholds[name])))
            for k, name in enumerate(labels)
            if name in thresholds
        }
        result.update(
            auroc_fp32=per_fp32,
            auroc_int8=per_int8,
            mean_auroc_fp32=mean_fp32,
            mean_auroc_int8=mean_int8,
            max_auroc_drop=max_auroc_drop,
            max_probability_diff=float(np.abs(fp32_out[0] - int8_out[0]).max()),
            decision_agreement=agreement,
        )
        if mean_fp32 is None or mean_int8 is None:
            result.update(accepted=False, reason="no label has both classes in the evaluation images: AUROC undefined")
        else:
            drop = mean_fp32 - mean_int8
            result["auroc_drop"] = drop
            accepted = drop <= max_auroc_drop
            result["accepted"] = bool(accepted)
            result["reason"] = (
                f"mean AUROC fp32 {mean_fp32:.4f} -> int8 {mean_int8:.4f} (drop {drop:+.4f}, "
                f"{'within' if accepted else 'exceeds'} the allowed {max_auroc_drop:g})"
            )
    else:
        corr = spearman(fp32_out[0], int8_out[0])
        outlier = checkpoint.get("outlier") or {}
        result.update(
            error_rank_correlation=corr,
            min_error_correlation=min_error_correlation,
            max_rel_error_diff=float(np.max(np.abs(fp32_out[0] - int8_out[0]) / np.maximum(fp32_out[0], 1e-12))),
        )
        accepted = bool(np.isfinite(corr) and corr >= min_error_correlation)
        result["accepted"] = accepted
        result["reason"] = (
            f"rank correlation of fp32 and int8 errors {corr:.4f} "
            f"({'>=' if accepted else '<'} the required {min_error_correlation:g})"
        )
        if "threshold" in outlier:
            threshold = float(outlier["threshold"])
            if data.own_split and "percentile" in outlier:
                threshold = float(np.percentile(int8_out[0], float(outlier["percentile"])))
            result["_outlier_threshold"] = threshold
            result["outlier_threshold"] = threshold
            result["verdict_agreement"] = float(
                np.mean((fp32_out[0] > float(outlier["threshold"])) == (int8_out[0] > threshold))
            )
    bench = data.evaluation[:benchmark_batch]
    if len(bench) < benchmark_batch:
        bench = np.resize(bench, (benchmark_batch, *bench.shape[1:]))
    seconds = time_sessions({"fp32": session, "int8": int8_session}, bench, repeats=benchmark_repeats)
    result["speed"] = {
        "batch": int(benchmark_batch),
        "threads": int(threads),
        "fp32_ms": seconds["fp32"] * 1e3,
        "int8_ms": seconds["int8"] * 1e3,
        "speedup": seconds["fp32"] / seconds["int8"],
    }
    verdict = "accepted" if result["accepted"] else "REFUSED"
    log(
        f"int8 {verdict}: {result['reason']}; speed-up {result['speed']['speedup']:.2f}x "
        f"(batch {benchmark_batch}, {threads} thread(s): fp32 {result['speed']['fp32_ms']:.1f} ms, "
        f"int8 {result['speed']['int8_ms']:.1f} ms)"
    )
    return result


# ---------------------------------------------------------------------------------------------------------- CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xray export",
        description="Export a checkpoint to ONNX (checked against torch on real images) into the model registry.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", type=Path, nargs="?", help="a model.ckpt written by `xray train classifier|autoencoder`"
    )
    parser.add_argument(
        "--from-torchxrayvision",
        metavar="XRV_NAME",
        default=None,
        help="convert a torchxrayvision model instead (e.g. densenet121-res224-all; needs the xrv extra)",
    )
    parser.add_argument(
        "--xrv-no-weights", action="store_true", help="build the xrv architecture without downloading its weights"
    )
    parser.add_argument("--name", required=True, help="registry model name (the int8 variant is NAME-int8)")
    parser.add_argument("--registry", type=Path, default=default_registry_dir(), help="registry root folder")
    parser.add_argument(
        "--promote",
        nargs="?",
        const="production",
        default=None,
        help="point this alias at the new version (bare --promote: production; default: do not promote)",
    )
    parser.add_argument("--int8", action="store_true", help="also build a static QDQ int8 variant (NAME-int8)")
    parser.add_argument(
        "--reconstruction", action="store_true", help="autoencoders: also output the reconstruction [N, 1, S, S]"
    )
    data = parser.add_argument_group("real images for parity, calibration and the int8 check")
    data.add_argument(
        "--calibration-data",
        action="append",
        default=None,
        help="use these data specs instead of the checkpoint's own (default: the checkpoint's); " + SPEC_HELP,
    )
    data.add_argument("--parity-images", type=int, default=64, help="validation images in the parity check")
    data.add_argument(
        "--parity-tolerance", type=float, default=1e-4, help="max |torch - ORT| of probabilities (AE: relative error)"
    )
    data.add_argument(
        "--evaluation-images", type=int, default=2000, help="at most this many validation images for fp32 vs int8"
    )
    data.add_argument("--calibration-images", type=int, default=128, help="training images that calibrate int8")
    data.add_argument(
        "--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax", help="int8 calibration"
    )
    data.add_argument(
        "--int8-full-range",
        action="store_true",
        help="8-bit instead of 7-bit int8 weights: only for CPUs with VNNI or GPUs (plain AVX2 kernels saturate)",
    )
    data.add_argument(
        "--max-auroc-drop", type=float, default=0.005, help="refuse the int8 classifier if mean AUROC drops more"
    )
    data.add_argument(
        "--min-error-correlation",
        type=float,
        default=0.98,
        help="refuse the int8 autoencoder if the rank correlation of its errors with fp32 is lower",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the image samples")
    serving = parser.add_argument_group("serving and provenance")
    serving.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size in config.pbtxt")
    serving.add_argument(
        "--provenance", default=None, help="extra provenance/licence text for the manifest (default: from data kinds)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (timing uses the same)")
    run.add_argument("--benchmark-batch", type=int, default=32, help="batch size of the fp32 vs int8 timing")
    run.add_argument("--benchmark-repeats", type=int, default=20, help="timed runs per precision")
    run.add_argument("--report", type=Path, default=None, help="also write the export report as JSON here")
    run.add_argument("--quiet", action="store_true", help="print only errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *_a, **_k: None) if args.quiet else print
    if (args.checkpoint is None) == (args.from_torchxrayvision is None):
        raise ValueError("expected either a CHECKPOINT or --from-torchxrayvision NAME, not both or neither")
    with tempfile.TemporaryDirectory(prefix="xray-xrv-") as tmp:
        checkpoint, provenance = args.checkpoint, args.provenance
        if args.from_torchxrayvision is not None:
            if not args.calibration_data:
                raise ValueError("--from-torchxrayvision needs --calibration-data: real images for the parity check")
            from training import xrv_import

            download = not args.xrv_no_weights
            checkpoint = xrv_import.convert(
                args.from_torchxrayvision, Path(tmp) / "xrv.ckpt", download_weights=download
            )
            provenance = " ".join(
                filter(None, [xrv_import.provenance(args.from_torchxrayvision, download), provenance])
            )
        return _export_and_report(args, checkpoint, provenance, log)


def _export_and_report(args: argparse.Namespace, checkpoint: Path, provenance: str | None, log) -> dict[str, Any]:
    report = export_checkpoint(
        checkpoint,
        args.name,
        Registry(args.registry),
        int8=args.int8,
        reconstruction=args.reconstruction,
        calibration_data=args.calibration_data,
        parity_images=args.parity_images,
        parity_tolerance=args.parity_tolerance,
        evaluation_images=args.evaluation_images,
        calibration_images=args.calibration_images,
        calibration_method=args.calibration_method,
        reduce_range=not args.int8_full_range,
        max_auroc_drop=args.max_auroc_drop,
        min_error_correlation=args.min_error_correlation,
        max_batch_size=args.max_batch_size,
        provenance=provenance,
        promote=args.promote,
        threads=max(1, args.threads),
        benchmark_batch=args.benchmark_batch,
        benchmark_repeats=args.benchmark_repeats,
        seed=args.seed,
        log=log,
    )
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


__all__ = [
    "AutoencoderGraph",
    "ClassifierGraph",
    "ParityError",
    "export_checkpoint",
    "export_onnx",
    "get_args_parser",
    "main",
    "parity_check",
    "quantize_int8",
]


if __name__ == "__main__":
    main(get_args_parser().parse_args())
