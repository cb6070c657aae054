"""The models being served, and an atomic reload to the registry's current aliases."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import AdminDep, ManagerDep, UserDep
from service.errors import ProblemError
from service.schemas import Reloaded, ServedModels, problems
from service.state import ReloadRefusedError

router = APIRouter(prefix="/v1/models", tags=["models"])
RELOAD_PROBLEMS = problems(403, 409, 503)
RELOAD_PROBLEMS[409] = {
    **RELOAD_PROBLEMS[409],
    "description": "the registry's set could not be loaded (reload_refused); the previous set is still serving",
}


def training_summary(data: dict, provenance: str) -> dict:
    """What a clinician should know of a model's training data: its sources, how many training films, licences."""
    train = (data.get("splits") or {}).get("train") or {}
    return {"sources": data.get("sources", []), "train_images": train.get("n"), "provenance": provenance}


@router.get(
    "",
    summary="models served now (name, version, sha256, labels, thresholds, device)",
    dependencies=[UserDep],
    response_model=ServedModels,
    responses=problems(503),
)
async def list_models(manager: ManagerDep) -> dict:
    async with manager.acquire() as pipeline:
        described = pipeline.describe()
        for role, session in pipeline.sessions().items():
            manifest = session.model.manifest
            described["models"][role].update(
                thresholds=manifest.thresholds,
                outlier_threshold=manifest.outlier_threshold,
                metrics=manifest.metrics,
                intended_use=manifest.intended_use,
                training_data=training_summary(manifest.data, manifest.provenance),
            )
        return described


@router.post(
    "/reload",
    summary="load the registry's current aliases and swap atomically",
    dependencies=[AdminDep],
    response_model=Reloaded,
    responses=RELOAD_PROBLEMS,
)
async def reload_models(manager: ManagerDep) -> dict:
    """409 when the registry's set does not load (a half-written version, a corrupted or swapped ONNX file, a bad
    manifest, an alias to a missing version): the registry conflicts with a reload, the previous set serves on."""
    try:
        before, after = await manager.reload()
    except ReloadRefusedError as error:
        raise ProblemError(409, "reload_refused", str(error)) from error
    return {"status": "reloaded", "before": before, "after": after}
