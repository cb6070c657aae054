"""The models being served, and an atomic reload to the registry's current aliases."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import AdminDep, ManagerDep, UserDep
from service.errors import ProblemError
from service.schemas import ServedModels, problems
from service.state import NotReadyError

router = APIRouter(prefix="/v1/models", tags=["models"])


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
    responses=problems(403, 503),
)
async def reload_models(manager: ManagerDep) -> dict:
    try:
        before, after = await manager.reload()
    except NotReadyError:
        raise
    except Exception as error:  # a broken registry is the server's problem, not the caller's; the old set serves on
        raise ProblemError(
            500, "reload_failed", f"the registry's models could not be loaded; still serving the previous set: {error}"
        ) from error
    return {"status": "reloaded", "before": before, "after": after}
