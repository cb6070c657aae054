"""decode -> preprocess -> micro-batched sessions -> postprocess (thresholds, outlier gate, CAM -> heatmap).

A `Pipeline` is one loaded model set. Requests enter it through `ModelManager.acquire()` (service.state), which
counts them, so a reload can retire an old pipeline only after its last request has finished.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from models.calibration import calibrate
from models.film_checks import FilmStatistics, film_check_reasons, film_statistics
from models.imaging import Radiograph, decode
from models.labels import ABNORMAL
from models.outlier_gate import FEATURE_OUTPUT, combined_threshold, component_scores
from models.preprocessing import PreprocessSpec, preprocess
from models.registry import INTENDED_USE, ModelSet, ResolvedModel
from service import heatmaps
from service.batching import MicroBatcher
from service.config import Settings
from service.engine import CPU, ModelSession, open_session, requested_providers
from service.metrics import ServiceMetrics

log = logging.getLogger("service.pipeline")
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "DR"})  # projection radiography; DR is a legacy value


class UnknownLabelError(ValueError):
    pass


class NoHeatmapsError(ValueError):
    """Heatmaps were asked of a classifier exported without class activation maps."""


@dataclass
class Prepared:
    film: Radiograph | None  # None for the readiness probe
    inputs: dict[str, np.ndarray]  # spec JSON -> (1, S, S)
    decode_ms: float
    preprocess_ms: float
    film_stats: FilmStatistics | None = None  # the input sanity checks' statistics (full resolution)


def _choose_model(
    fp32: ResolvedModel, int8: ResolvedModel | None, settings: Settings, wanted_first: str
) -> ResolvedModel:
    """int8 when asked for, or on CPU under "auto" (about 2x faster at the same AUROC, see the manifests)."""
    if settings.precision == "int8":
        if int8 is None:
            raise FileNotFoundError(f"XRAY_PRECISION=int8 but the registry has no int8 variant of {fp32.ref}")
        return int8
    if settings.precision == "auto" and int8 is not None and wanted_first == CPU:
        return int8
    return fp32


def _load_session(fp32: ResolvedModel, int8: ResolvedModel | None, settings: Settings) -> ModelSession:
    kwargs = {
        "providers": settings.providers,
        "intra_op_threads": settings.intra_op_threads,
        "inter_op_threads": settings.inter_op_threads,
        "spin": settings.ort_spinning,
    }
    wanted_first = requested_providers(settings.providers)[0]
    session = open_session(_choose_model(fp32, int8, settings, wanted_first), **kwargs)
    # asked for a GPU but the session fell back to the CPU: the int8 variant is the better CPU model
    if session.device == "cpu" and wanted_first != CPU and settings.precision == "auto" and int8 is not None:
        session = open_session(int8, **kwargs)
    session.warm_up()
    return session


class Pipeline:
    def __init__(
        self,
        model_set: ModelSet,
        classifier: ModelSession,
        autoencoder: ModelSession | None,
        settings: Settings,
        metrics: ServiceMetrics,
    ) -> None:
        self.model_set = model_set
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.settings = settings
        self.metrics = metrics
        manifest = classifier.model.manifest
        self.labels: list[str] = list(manifest.labels)
        self.thresholds = {label: float(manifest.thresholds.get(label, 0.5)) for label in self.labels}
        self.calibration = manifest.calibration  # per-label Platt parameters; thresholds are on that scale
        self.cam_output: str | None = (manifest.cam or {}).get("output")
        self.specs = {"classifier": PreprocessSpec.from_dict(manifest.preprocess)}
        if autoencoder is not None:
            self.specs["autoencoder"] = PreprocessSpec.from_dict(autoencoder.model.manifest.preprocess)
        self.spec_keys = {role: spec.to_json() for role, spec in self.specs.items()}  # inputs keyed by spec
        self.gate = self._gate_parameters(autoencoder)
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._batchers: dict[str, MicroBatcher] = {}

    @staticmethod
    def _gate_parameters(autoencoder: ModelSession | None) -> dict | None:
        """The autoencoder manifest's gate, with the feature mean and precision as arrays once (converting the
        k x k list on every request cost more than the rest of postprocessing)."""
        if autoencoder is None:
            return None
        manifest = autoencoder.model.manifest
        gate = {**manifest.outlier, "threshold": manifest.outlier_threshold}
        if "feature" in gate:
            feature = dict(gate["feature"])
            feature["mean"] = np.asarray(feature["mean"], dtype=np.float64)
            feature["precision"] = np.asarray(feature["precision"], dtype=np.float64)
            gate["feature"] = feature
        return gate

    # -- life cycle -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_set: ModelSet, settings: Settings, metrics: ServiceMetrics) -> Pipeline:
        """Open and warm every session (blocking: call it from a thread)."""
        classifier = _load_session(model_set.classifier, model_set.classifier_int8, settings)
        autoencoder = None
        if model_set.autoencoder is not None:
            autoencoder = _load_session(model_set.autoencoder, model_set.autoencoder_int8, settings)
        return cls(model_set, classifier, autoencoder, settings, metrics)

    def sessions(self) -> dict[str, ModelSession]:
        found = {"classifier": self.classifier}
        if self.autoencoder is not None:
            found["autoencoder"] = self.autoencoder
        return found

    def start(self) -> None:
        for role, session in self.sessions().items():
            ref = session.model.ref

            def observe(size: int, seconds: float, ref: str = ref) -> None:
                self.metrics.observe_batch(ref, size, seconds)

            batcher = MicroBatcher(
                ref,
                session.run,
                max_batch_size=min(self.settings.max_batch_size, session.model.manifest.max_batch_size),
                max_delay_s=self.settings.max_batch_delay_ms / 1000.0,
                max_queue=self.settings.max_queue,
                observe=observe,
            )
            batcher.start()
            self._batchers[role] = batcher

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Wait (at most `drain_timeout_s`) for the requests inside this pipeline to finish, then stop its batchers."""
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning("requests still in flight after the drain timeout", extra={"inflight": self.inflight})
        for batcher in self._batchers.values():
            await batcher.close()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def queue_depths(self) -> dict[str, int]:
        return {self.sessions()[role].model.ref: b.depth for role, b in self._batchers.items()}

    def describe(self) -> dict:
        return {
            "alias": self.model_set.alias,
            "models": {role: session.describe() for role, session in self.sessions().items()},
        }

    # -- request path -----------------------------------------------------------------------------------------
    def prepare(self, data: bytes) -> Prepared:
        """Decode and preprocess once per distinct spec (blocking: runs in the decode thread pool)."""
        start = time.perf_counter()
        film = decode(data, max_pixels=self.settings.max_pixels)
        decoded = time.perf_counter()
        stats = film_statistics(film.pixels)  # before any resize: noise and blank films average away later
        inputs: dict[str, np.ndarray] = {}
        for role, spec in self.specs.items():
            key = self.spec_keys[role]
            if key not in inputs:
                inputs[key] = preprocess(film, spec)
        done = time.perf_counter()
        return Prepared(film, inputs, (decoded - start) * 1e3, (done - decoded) * 1e3, stats)

    async def infer(self, prepared: Prepared) -> dict[str, dict[str, np.ndarray]]:
        """Submit the image to every model's batcher at once; all or nothing."""
        tasks = {
            role: asyncio.ensure_future(self._batchers[role].submit(prepared.inputs[self.spec_keys[role]]))
            for role in self._batchers
        }
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        return {role: task.result() for role, task in tasks.items()}

    async def probe(self) -> None:
        """A zero image through every batcher and session, exactly as an upload travels (for /readyz)."""
        inputs = {
            key: np.zeros((1, self.specs[role].size, self.specs[role].size), np.float32)
            for role, key in self.spec_keys.items()
        }
        await self.infer(Prepared(film=None, inputs=inputs, decode_ms=0.0, preprocess_ms=0.0))

    async def predict(
        self,
        data: bytes,
        decode_pool: ThreadPoolExecutor,
        *,
        heatmap_labels: list[str] | None = None,
        layers: bool = False,
    ) -> tuple[dict, dict[str, bytes]]:
        """-> (the JSON-able prediction, {label: overlay PNG} for the labels asked for). With `layers` (a viewer's
        request): the prediction also carries the decoded film as an 8-bit PNG (`film`), and the PNGs are every
        label's transparent heat layer at the film's size (none for a classifier without CAMs)."""
        for label in heatmap_labels or []:
            if label not in self.labels:
                raise UnknownLabelError(f"expected a heatmap label in {self.labels}, got {label!r}")
        if heatmap_labels and self.cam_output is None:
            raise NoHeatmapsError(f"{self.classifier.model.ref} was exported without class activation maps")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        prepared = await loop.run_in_executor(decode_pool, self.prepare, data)
        self.metrics.stage.labels("decode").observe(prepared.decode_ms / 1e3)
        self.metrics.stage.labels("preprocess").observe(prepared.preprocess_ms / 1e3)
        inferred_at = time.perf_counter()
        outputs = await self.infer(prepared)
        infer_ms = (time.perf_counter() - inferred_at) * 1e3
        self.metrics.stage.labels("inference").observe(infer_ms / 1e3)
        overlays: dict[str, bytes] = {}
        film_png = None
        heat_start = time.perf_counter()
        cams = outputs["classifier"][self.cam_output] if self.cam_output else None
        if layers:
            film_png, overlays = await loop.run_in_executor(decode_pool, self._render_layers, prepared.film, cams)
        elif heatmap_labels:
            overlays = await loop.run_in_executor(decode_pool, self._render, prepared.film, cams, heatmap_labels)
        heatmap_ms = (time.perf_counter() - heat_start) * 1e3 if layers or heatmap_labels else 0.0
        result = self._postprocess(prepared, outputs)
        if film_png is not None:
            height, width = heatmaps.display_size(*prepared.film.pixels.shape, self.settings.heatmap_max_side)
            result["film"] = {**encode_png(film_png), "width": width, "height": height}
        result["timings_ms"] = {
            "decode": round(prepared.decode_ms, 2),
            "preprocess": round(prepared.preprocess_ms, 2),
            "inference_incl_queue": round(infer_ms, 2),
            "heatmaps": round(heatmap_ms, 2),
            "total": round((time.perf_counter() - start) * 1e3, 2),
        }
        self.metrics.predictions.labels(result["outlier"]["verdict"]).inc()
        return result, overlays

    def predict_prepared(self, prepared: list[Prepared]) -> list[dict]:
        """Synchronous batch scoring without the micro-batcher: one session run per model for the whole list, then
        the same postprocessing as `predict` (the Ray engine's actors score this way; blocking)."""
        start = time.perf_counter()
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for role, session in self.sessions().items():
            batch = np.stack([item.inputs[self.spec_keys[role]] for item in prepared])  # (N, 1, S, S)
            outputs[role] = session.run(batch)
        infer_ms = (time.perf_counter() - start) * 1e3 / max(len(prepared), 1)  # each image's share of the batch
        results = []
        for i, item in enumerate(prepared):
            result = self._postprocess(item, {role: {k: v[i] for k, v in out.items()} for role, out in outputs.items()})
            result["timings_ms"] = {
                "decode": round(item.decode_ms, 2),
                "preprocess": round(item.preprocess_ms, 2),
                "inference_incl_queue": round(infer_ms, 2),
                "heatmaps": 0.0,
                "total": round(item.decode_ms + item.preprocess_ms + infer_ms, 2),
            }
            results.append(result)
        return results

    def _render(self, film: Radiograph, cams: np.ndarray, labels: list[str]) -> dict[str, bytes]:
        display = heatmaps.film_for_display(film.pixels, self.settings.heatmap_max_side)
        spec = self.specs["classifier"]
        film_shape = film.pixels.shape  # the geometry the model saw is the original film's, not the display's
        return {
            label: heatmaps.render_overlay(display, cams[self.labels.index(label)], spec, film_shape)
            for label in labels
        }

    def _render_layers(self, film: Radiograph, cams: np.ndarray | None) -> tuple[bytes, dict[str, bytes]]:
        """The film as the service decoded it (display size, 8-bit) and each label's heat layer at that size."""
        display = heatmaps.film_for_display(film.pixels, self.settings.heatmap_max_side)
        film_png = heatmaps.png_bytes(heatmaps.grey_8bit(display))
        if cams is None:
            return film_png, {}
        spec = self.specs["classifier"]
        return film_png, {
            label: heatmaps.png_bytes(
                heatmaps.heat_layer(heatmaps.evidence_map(cams[i], film.pixels.shape, spec, display.shape))
            )
            for i, label in enumerate(self.labels)
        }

    def _postprocess(self, prepared: Prepared, outputs: dict[str, dict[str, np.ndarray]]) -> dict:
        raw = outputs["classifier"]["probabilities"]  # (K,), as the graph computes them
        probabilities = calibrate(raw, self.labels, self.calibration)
        rows = [
            {
                "label": label,
                "probability": round(float(probabilities[i]), 6),
                "threshold": round(self.thresholds[label], 6),
                "positive": bool(probabilities[i] >= self.thresholds[label]),
            }
            for i, label in enumerate(self.labels)
        ]
        findings = sorted((r for r in rows if r["label"] != ABNORMAL), key=lambda r: -r["probability"])
        abnormal = next((r for r in rows if r["label"] == ABNORMAL), None)
        if abnormal is None:  # no dedicated head: the most probable finding stands in, positive if any finding is
            top = findings[0]
            abnormal = {
                "label": top["label"],
                "probability": top["probability"],
                "threshold": top["threshold"],
                "positive": any(r["positive"] for r in findings),
                "source": "max_finding",
            }
        else:
            abnormal = {**abnormal, "source": "abnormal_head"}
        outlier, reasons = self._outlier(prepared, outputs)
        meta = prepared.film.meta
        if meta.modality and meta.modality.upper() not in RADIOGRAPH_MODALITIES:
            reasons.append(
                f"DICOM Modality is {meta.modality}; the models were trained on projection radiographs (CR/DX)"
            )
        image = {
            key: getattr(meta, key)
            for key in (
                "format",
                "modality",
                "view_position",
                "body_part",
                "photometric",
                "bits_stored",
                "transfer_syntax",
                "voi_source",
                "sop_instance_uid_hash",
            )
        }
        image.update(width=meta.width, height=meta.height)
        return {
            "models": {role: self._model_ref(session) for role, session in self.sessions().items()},
            "alias": self.model_set.alias,
            "image": image,
            "outlier": outlier,
            "reliability": {"status": "unreliable" if reasons else "reliable", "reasons": reasons},
            "abnormal": abnormal,
            "findings": findings,
            "intended_use": INTENDED_USE,
        }

    def _outlier(self, prepared: Prepared, outputs: dict[str, dict[str, np.ndarray]]) -> tuple[dict, list[str]]:
        """The gate: input sanity checks on the full-resolution film, then the autoencoder's reconstruction error and
        code distance (models.outlier_gate). Returns the outlier block (verdict, the reconstruction score and threshold
        as before, every component) and one reason per component kind that tripped."""
        failed = film_check_reasons(prepared.film_stats) if prepared.film_stats is not None else []
        checks = {
            "statistics": prepared.film_stats.to_dict() if prepared.film_stats is not None else None,
            "failed": [code for code, _ in failed],
            "verdict": "outlier" if failed else "in_distribution",
        }
        reasons = [reason for _, reason in failed]
        components = {"film_checks": checks}
        verdict = "outlier" if failed else "not_checked"
        score = threshold = None
        if self.autoencoder is not None:
            network_components, network_reasons = self._network_components(outputs["autoencoder"])
            components.update(network_components)
            reasons += network_reasons
            network = components["combined"]
            score, threshold = components["reconstruction"]["score"], components["reconstruction"]["threshold"]
            verdict = "outlier" if failed or network["verdict"] == "outlier" else "in_distribution"
        outlier = {"score": score, "threshold": threshold, "verdict": verdict, "components": components}
        return outlier, reasons

    def _network_components(self, outputs: dict[str, np.ndarray]) -> tuple[dict[str, dict], list[str]]:
        """Reconstruction error and code distance, each over its own threshold, and their combined verdict; and the
        reason naming the components that tripped (none when the combined score is within its threshold)."""
        manifest = self.autoencoder.model.manifest
        gate = self.gate
        error = float(np.asarray(outputs[manifest.outputs[0].name]).reshape(-1)[0])
        codes = outputs.get(FEATURE_OUTPUT) if "feature" in gate else None
        scores = component_scores(np.array([error]), None if codes is None else np.asarray(codes).reshape(1, -1), gate)
        relative = {name: float(values[0]) for name, values in scores.items()}  # component / its own threshold
        limit = combined_threshold(gate)
        thresholds = {"reconstruction": float(manifest.outlier_threshold)}
        if "feature" in relative:
            thresholds["feature"] = float(gate["feature"]["threshold"])
        components = {
            name: {
                "score": round(relative[name] * threshold, 6),
                "threshold": threshold,
                "relative": round(relative[name], 4),
                "verdict": "outlier" if relative[name] > limit else "in_distribution",
            }
            for name, threshold in thresholds.items()
        }
        components["combined"] = {
            "score": round(relative["combined"], 4),
            "threshold": limit,
            "verdict": "outlier" if relative["combined"] > limit else "in_distribution",
        }
        what = {"reconstruction": "reconstruction error", "feature": "distance of its features"}
        tripped = [
            f"{what[name]} {part['score']:.4g} is {part['relative']:.2f}x its threshold {part['threshold']:.4g} "
            f"(gate at {limit:.2f}x)"
            for name, part in components.items()
            if name in what and part["verdict"] == "outlier"
        ]
        unlike = "the image is unlike the chest radiographs the models were trained on: "
        return components, [unlike + "; ".join(tripped)] if tripped else []

    @staticmethod
    def _model_ref(session: ModelSession) -> dict:
        manifest = session.model.manifest
        return {
            "name": session.model.name,
            "version": session.model.version,
            "sha256": manifest.onnx_sha256,
            "precision": manifest.precision,
            "device": session.device,
        }


def encode_png(png: bytes) -> dict[str, str]:
    return {"media_type": "image/png", "encoding": "base64", "data": base64.b64encode(png).decode("ascii")}


def encode_overlays(overlays: dict[str, bytes]) -> dict[str, dict]:
    return {label: encode_png(png) for label, png in overlays.items()}
