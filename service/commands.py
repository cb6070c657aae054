"""The service's `xray` commands: `serve`, `worker`, `score` and `keys new`. Torch-free: nothing here imports the
training side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str | None, typer.Option("--host", help="bind address (default: settings.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default: settings.port, 8000)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="CPU worker processes (default: settings.workers, 1); one per GPU when GPUs exist"
        ),
    ] = None,
) -> None:
    """Serve the registry's model set over HTTP (FastAPI + ONNX Runtime; no torch is imported)."""
    from service.config import get_settings
    from service.serve import limit_blas_threads
    from service.serve import serve as run_server

    settings = get_settings()
    limit_blas_threads(settings.blas_threads)  # before anything imports numpy

    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    run_server(settings, host or settings.host, port or settings.port, workers or settings.workers)


def _service_settings():
    """Settings, with numpy's BLAS threads capped before numpy loads and logging configured."""
    from service.config import get_settings
    from service.serve import limit_blas_threads

    settings = get_settings()
    limit_blas_threads(settings.blas_threads)

    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    return settings


def worker() -> None:
    """Score queued job items without serving HTTP: the runner of `xray serve` as its own process. Run several,
    on several machines, against one PostgreSQL database (XRAY_DATABASE_URL); SIGTERM finishes the chunks in flight."""
    import asyncio

    from service.jobs.worker import run_worker

    asyncio.run(run_worker(_service_settings()))


def score(
    inputs: Annotated[list[Path], typer.Argument(help="folders (walked recursively), zips and files to score")],
    output: Annotated[Path, typer.Option("-o", "--output", help="results file: .csv or .jsonl")],
    resume: Annotated[
        bool, typer.Option("--resume", help="skip files already in the output and append (default: overwrite)")
    ] = False,
) -> None:
    """Score files without a server (same models and results as /v1/predict), with a progress bar."""
    import asyncio

    from service.jobs.offline import score_offline
    from service.jobs.sources import SourceError

    settings = _service_settings()
    try:
        counts = asyncio.run(score_offline(inputs, output, settings, resume=resume))
    except SourceError as error:
        typer.secho(f"error: {error.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    rate = (counts["scored"] + counts["failed"]) / counts["seconds"] if counts.get("seconds") else 0.0
    typer.echo(
        f"{counts['scored']:.0f} scored, {counts['failed']:.0f} failed, {counts['skipped']:.0f} already in {output} "
        f"({rate:.1f} images/s)"
    )


keys_app = typer.Typer(
    help="API keys: XRAY_API_KEYS holds 'scope:sha256' entries, never the keys.", no_args_is_help=True
)


@keys_app.command("new")
def keys_new(
    scope: Annotated[str, typer.Option("--scope", help="user (predict, models) or admin (also reload)")] = "user",
) -> None:
    """Make a random API key; prints the key (give it to the client) and the entry for XRAY_API_KEYS."""
    from service.security import KeyConfigError, new_key

    try:
        key, entry = new_key(scope)  # type: ignore[arg-type]
    except KeyConfigError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"key (shown once, give it to the client): {key}")
    typer.echo(f"XRAY_API_KEYS entry (comma-separate several): {entry}")


def register(app: typer.Typer) -> None:
    """Add the service's commands to the `xray` command."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("score")(score)
    app.add_typer(keys_app, name="keys")
