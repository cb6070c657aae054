"""Pydantic request/response models: the API contract OpenAPI shows (clients generate code from it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRequest(BaseModel):
    """A job over files the server can read: one folder, or a list of files and folders, under one of
    XRAY_ALLOWED_SOURCE_ROOTS. (An upload instead: POST the zip as multipart field `file` or as application/zip.)"""

    folder: str | None = Field(default=None, description="absolute path of a folder; every file in it, recursively")
    paths: list[str] | None = Field(default=None, description="absolute paths of files or folders", max_length=100_000)

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.folder is None) == (self.paths is None):
            raise ValueError("expected exactly one of 'folder' or 'paths'")
        return self


class JobCounts(BaseModel):
    total: int = Field(description="items in the job")
    done: int = Field(description="items finished: scored, or refused with a per-item problem")
    succeeded: int = Field(description="items scored")
    failed: int = Field(description="items refused with a problem (not an image, unreadable, ...)")
    skipped: int = Field(description="items not scored because the job was cancelled")
    remaining: int = Field(description="items queued or being scored")


class JobProgress(BaseModel):
    images_per_s: float | None = Field(description="items finished per second since the job started")
    eta_s: float | None = Field(description="seconds left at that rate (null until the rate is known)")


class JobSource(BaseModel):
    kind: Literal["zip", "folder", "paths"]
    name: str = Field(description="the zip's file name, the folder, or how many paths were given")


class JobStatus(BaseModel):
    id: str
    state: JobState
    owner: str = Field(description="the submitting API key's id (a hash prefix), or 'anonymous'")
    source: JobSource
    alias: str = Field(description="the registry alias the job is scored with")
    models: dict[str, Any] = Field(description="the models serving that alias when the job was submitted")
    counts: JobCounts
    progress: JobProgress
    error: str | None = None
    paused: str | None = Field(
        default=None, description="why an unfinished job is not progressing now (e.g. its database's disk is full)"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results_url: str


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    limit: int
    offset: int


# -- predictions ---------------------------------------------------------------------------------------------------
class ModelRef(BaseModel):
    name: str
    version: int
    sha256: str = Field(description="sha256 of the ONNX file that made the prediction")
    precision: str = Field(description="fp32 or int8")
    device: str = Field(description="cpu, cuda or tensorrt, as the session confirmed after creation")


class ImageFacts(BaseModel):
    """What the decoder found; never patient data."""

    format: str = Field(description="png, jpeg or dicom")
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    voi_source: str | None = Field(default=None, description="which VOI step set the display range")
    sop_instance_uid_hash: str | None = Field(
        default=None, description="DICOM: the SOP Instance UID's sha256, first 16 hex digits (never the UID)"
    )
    width: int
    height: int


class FilmChecks(BaseModel):
    statistics: dict[str, float] | None = Field(description="the full-resolution film's sanity statistics")
    failed: list[str] = Field(description="codes of the checks that failed")
    verdict: Literal["in_distribution", "outlier"]


class GateComponent(BaseModel):
    score: float
    threshold: float
    relative: float | None = Field(default=None, description="score / threshold")
    verdict: Literal["in_distribution", "outlier"]


class OutlierComponents(BaseModel):
    film_checks: FilmChecks
    reconstruction: GateComponent | None = None
    feature: GateComponent | None = None
    combined: GateComponent | None = None


class Outlier(BaseModel):
    score: float | None = Field(description="the autoencoder's reconstruction error (null without an autoencoder)")
    threshold: float | None
    verdict: Literal["in_distribution", "outlier", "not_checked"]
    components: OutlierComponents


class Reliability(BaseModel):
    status: Literal["reliable", "unreliable"]
    reasons: list[str] = Field(description="one sentence per reason the findings should not be trusted")


class Finding(BaseModel):
    label: str
    probability: float = Field(description="calibrated probability")
    threshold: float
    positive: bool


class Abnormal(Finding):
    source: Literal["abnormal_head", "max_finding"] = Field(
        description="a dedicated abnormality head, or the most probable finding standing in for one"
    )


class Timings(BaseModel):
    decode: float
    preprocess: float
    inference_incl_queue: float
    heatmaps: float
    total: float


class EncodedImage(BaseModel):
    media_type: Literal["image/png"]
    encoding: Literal["base64"]
    data: str


class Film(EncodedImage):
    width: int
    height: int


class Prediction(BaseModel):
    request_id: str
    models: dict[str, ModelRef] = Field(description="by role: classifier, and autoencoder when the gate has one")
    alias: str
    image: ImageFacts
    outlier: Outlier
    reliability: Reliability
    abnormal: Abnormal
    findings: list[Finding] = Field(description="every pathology, most probable first")
    intended_use: str
    timings_ms: Timings
    heatmaps: dict[str, EncodedImage] | None = Field(
        default=None, description="with ?heatmaps=true: an overlay PNG per label"
    )


class PredictionView(Prediction):
    film: Film = Field(description="the decoded film as an 8-bit grey PNG")
    heat_layers: dict[str, EncodedImage] = Field(description="a transparent RGBA heat layer per label, film-sized")


# -- models --------------------------------------------------------------------------------------------------------
class SessionInfo(BaseModel):
    """A loaded model as its ONNX Runtime session runs it."""

    name: str
    version: int
    alias: str | None = Field(description="the registry alias it was reached through")
    kind: str = Field(description="classifier or autoencoder")
    precision: str
    sha256: str
    labels: list[str] = Field(description="the classifier's outputs, in order (empty for an autoencoder)")
    input_size: int
    providers: list[str] = Field(description="as the session confirmed after creation; the first runs the graph")
    device: str
    warm: bool


class TrainingData(BaseModel):
    sources: list[str]
    train_images: int | None
    provenance: str = Field(description="data provenance and licences, in words")


class ServedModel(SessionInfo):
    thresholds: dict[str, float] = Field(description="per-label thresholds on calibrated probabilities")
    outlier_threshold: float | None
    metrics: dict[str, Any] = Field(description="held-out metrics from training and evaluation, as exported")
    intended_use: str
    training_data: TrainingData


class RegistryProblem(BaseModel):
    """Why the registry's current set was refused (the last good set still serves); gone after a good reload."""

    error: str = Field(description="the error's type, e.g. IntegrityError, ManifestError, EngineError")
    detail: str = Field(description="what is wrong, naming the model version and file")
    model: str | None = Field(description="the model at fault, when the error names one")
    version: int | None = Field(description="its version, when the error names one")
    since: str = Field(description="UTC ISO 8601: when this problem was first seen")
    last_attempt: str = Field(description="UTC ISO 8601: the latest reload that met it")
    attempts: int = Field(description="reloads refused for this problem")
    trigger: str = Field(description="who asked for the latest reload: watcher or api")


class ServedModels(BaseModel):
    alias: str
    models: dict[str, ServedModel] = Field(description="by role: classifier, autoencoder")


class Reloaded(BaseModel):
    status: Literal["reloaded"]
    before: dict[str, Any] = Field(description="the alias and models (by role) that served before the swap")
    after: dict[str, Any] = Field(description="the alias and models (by role) serving now")


MAX_ROW_INDEX = 2**31 - 1  # offsets and positions: within every database's INTEGER (larger ones answer 422)
PROBLEM_MEDIA_TYPE = "application/problem+json"
STATUS_MEANINGS = {
    400: "the request carried no usable body",
    401: "no API key, or an unknown one",
    403: "the key's scope does not allow this",
    404: "no such resource for this key",
    406: "the Accept header excludes what this endpoint answers",
    409: "the request conflicts with the served models (e.g. heatmaps from a model without CAMs)",
    410: "the resource existed but is gone",
    413: "the body (or an entry in it) is over the size limit",
    415: "not a media type or image format this endpoint reads",
    422: "the request or its image did not validate",
    429: "this key is over its rate limit; retry after Retry-After seconds",
    500: "the server failed; the answer carries a request id to quote",
    503: "overloaded or not ready; retry after Retry-After seconds",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the statuses a route can answer, each a Problem as application/problem+json."""
    return {
        status: {
            "description": STATUS_MEANINGS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


class Problem(BaseModel):
    """RFC 9457 problem details: every 4xx and 5xx answer, as application/problem+json."""

    type: str = Field(description="a URI naming the problem kind")
    title: str
    status: int
    detail: str = Field(description="what was expected and what arrived, in a sentence")
    code: str = Field(description="a stable snake_case code for clients")
    request_id: str | None = Field(default=None, description="on 500s: the id the server's logs carry")


# -- audit ---------------------------------------------------------------------------------------------------------
class AuditRecord(BaseModel):
    """One prediction or job action, as the append-only audit trail keeps it: no key, no UID, no patient field."""

    id: int
    at: datetime
    key_id: str = Field(description="the API key's id (a sha256 prefix), 'anonymous' when authentication is off")
    action: str = Field(description="predict, predict.view, predict.heatmap, job.submit, job.cancel, job.item_view")
    endpoint: str = Field(description="method and route, e.g. 'POST /v1/predict'")
    status: int = Field(description="the HTTP status answered")
    problem: str | None = Field(description="the problem's code when the answer was not a success")
    request_id: str
    job_id: str | None
    models: dict[str, dict[str, Any]] | None = Field(description="by role: name, version, sha256")
    sop_uid_hash: str | None = Field(description="the DICOM SOP Instance UID's sha256, first 16 hex digits")
    verdicts: dict[str, Any] | None = Field(
        description="a prediction: reliability, outlier, abnormal, positive labels; a job: state and item count"
    )


class AuditPage(BaseModel):
    records: list[AuditRecord] = Field(description="newest first")
    total: int
    limit: int
    offset: int
