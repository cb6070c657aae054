"""POST /v1/predict (JSON, optional heatmaps) and POST /v1/predict/heatmap (one overlay PNG)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from models.imaging import sniff_format
from service.audit import audited
from service.dependencies import ManagerDep, SettingsDep, UserDep, form_file, multipart_form
from service.errors import ProblemError
from service.pipeline import encode_overlays
from service.schemas import Prediction, PredictionView, problems

router = APIRouter(prefix="/v1/predict", tags=["predict"], dependencies=[UserDep])
log = logging.getLogger("service.predict")

RAW_TYPES = {"application/dicom": "dicom", "image/png": "png", "image/jpeg": "jpeg", "application/octet-stream": None}
UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "the image: a multipart field `file`, or the raw bytes with their media type",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in RAW_TYPES},
        },
    }
}


async def read_upload(request: Request) -> bytes:
    """The image bytes from a multipart `file` field or a raw body; 415 for anything else."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with multipart_form(request) as form:
            data = await form_file(form).read()
    elif media in RAW_TYPES:
        data = await request.body()
        declared, sniffed = RAW_TYPES[media], sniff_format(data)
        if declared is not None and sniffed is not None and sniffed != declared:
            raise ProblemError(
                415, "content_type_mismatch", f"Content-Type says {media} but the bytes are {sniffed.upper()}"
            )
    else:
        raise ProblemError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data or a raw body of {', '.join(RAW_TYPES)}; got {media or 'no Content-Type'}",
        )
    if not data:
        raise ProblemError(400, "empty_input", "expected image bytes (PNG, JPEG or DICOM), got 0 bytes")
    return data


async def run_prediction(
    request: Request,
    manager,
    action: str,
    heatmap_labels: list[str] | None,
    all_heatmaps: bool = False,
    layers: bool = False,
) -> tuple[dict, dict[str, bytes]]:
    """Admission (before the body is read), then upload -> pipeline; errors map to problems in service.errors.
    Every attempt leaves an audit record, refused or answered."""
    async with audited(request, action) as entry, request.app.state.admission.slot():
        data = await read_upload(request)
        async with manager.acquire() as pipeline:
            labels = list(pipeline.labels) if all_heatmaps else heatmap_labels
            result, overlays = await pipeline.predict(
                data, request.app.state.decode_pool, heatmap_labels=labels, layers=layers
            )
        entry.prediction(result)
    request_id = request.state.request_id
    log.info(
        "prediction",
        extra={
            "request_id": request_id,
            "format": result["image"]["format"],
            "modality": result["image"]["modality"],
            "width": result["image"]["width"],
            "height": result["image"]["height"],
            "outlier": result["outlier"]["verdict"],
            "abnormal_positive": result["abnormal"]["positive"],
            "total_ms": result["timings_ms"]["total"],
        },
    )
    return {"request_id": request_id, **result}, overlays


@router.post(
    "",
    summary="score one radiograph (PNG, JPEG or DICOM)",
    openapi_extra=UPLOAD_DOC,
    response_model=Prediction,
    response_model_exclude_unset=True,
    responses=problems(400, 409, 413, 415, 422, 503),
)
async def predict(
    request: Request,
    manager: ManagerDep,
    heatmaps: Annotated[bool, Query(description="add a heatmap overlay PNG (base64) for every label")] = False,
) -> dict:
    result, overlays = await run_prediction(request, manager, "predict", None, all_heatmaps=heatmaps)
    if heatmaps:
        result["heatmaps"] = encode_overlays(overlays)
    return result


@router.post(
    "/view",
    summary="what a viewer shows: the prediction, the decoded film (8-bit PNG) and a transparent heat layer per label",
    openapi_extra=UPLOAD_DOC,
    response_model=PredictionView,
    response_model_exclude_unset=True,
    responses=problems(400, 413, 415, 422, 503),
)
async def predict_view(request: Request, manager: ManagerDep) -> dict:
    result, layers = await run_prediction(request, manager, "predict.view", None, layers=True)
    result["heat_layers"] = encode_overlays(layers)
    return result


@router.post(
    "/heatmap",
    summary="one label's heatmap overlay as a PNG",
    openapi_extra=UPLOAD_DOC,
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **problems(400, 406, 409, 413, 415, 422, 503)},
)
async def predict_heatmap(
    request: Request,
    manager: ManagerDep,
    settings: SettingsDep,
    label: Annotated[str, Query(min_length=1, description="the label whose class activation map to draw")],
) -> Response:
    accept = request.headers.get("accept", "*/*").lower()
    if not any(kind in accept for kind in ("image/png", "image/*", "*/*")):
        raise ProblemError(406, "not_acceptable", f"this endpoint answers image/png; Accept was {accept!r}")
    result, overlays = await run_prediction(request, manager, "predict.heatmap", [label])
    headers = {
        "X-Model": f"{result['models']['classifier']['name']}@{result['models']['classifier']['version']}",
        "X-Probability": str(
            next(r["probability"] for r in [result["abnormal"], *result["findings"]] if r["label"] == label)
        ),
        "X-Reliability": result["reliability"]["status"],
    }
    return Response(overlays[label], media_type="image/png", headers=headers)
