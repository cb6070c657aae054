"""The `xray` command. Training commands import torch lazily, so `xray serve` never loads it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer

from service.config import get_settings

app = typer.Typer(help="X-ray abnormality detection: train, export and serve CNN models.", no_args_is_help=True)
train_app = typer.Typer(help="Train models (needs the `train` extra: torch, torchvision).", no_args_is_help=True)
app.add_typer(train_app, name="train")
models_app = typer.Typer(
    help="The model registry: list versions, promote a version to an alias, roll an alias back.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

# argparse-based entry points (get_args_parser + main, as in torchvision's references); typer passes the args through.
_PASSTHROUGH = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _run_training_module(module_name: str, argv: list[str]) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise typer.BadParameter(
            f"{module_name} needs the training extra (missing {error.name}); install with: pip install -e '.[train]'"
        ) from error
    module.main(module.get_args_parser().parse_args(argv))


@train_app.command("classifier", **_PASSTHROUGH)
def train_classifier(ctx: typer.Context) -> None:
    """Train a classifier (abnormal + pathology heads). `xray train classifier --help` lists every flag."""
    _run_training_module("training.train_classifier", ctx.args)


@train_app.command("autoencoder", **_PASSTHROUGH)
def train_autoencoder(ctx: typer.Context) -> None:
    """Train the outlier autoencoder (plain or denoising). `xray train autoencoder --help` lists every flag."""
    _run_training_module("training.train_autoencoder", ctx.args)


@train_app.command("add-label", **_PASSTHROUGH)
def train_add_label(ctx: typer.Context) -> None:
    """Add a label to a classifier: logistic regression on its frozen encoder from few examples (first K outputs
    unchanged). `xray train add-label --help` lists every flag."""
    _run_training_module("training.add_label", ctx.args)


@app.command("eval", **_PASSTHROUGH)
def evaluate(ctx: typer.Context) -> None:
    """Evaluate a checkpoint: JSON + HTML report with ROC, calibration, curves, filters, baselines, AE plots.

    `xray eval --help` lists every flag."""
    _run_training_module("training.report", ctx.args)


@app.command("export", **_PASSTHROUGH)
def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX into the registry (parity-checked; --int8 adds a quantised variant).

    `xray export --help` lists every flag."""
    from models.registry import RegistryError

    try:
        _run_training_module("training.export", ctx.args)
    except (RegistryError, ValueError, FileNotFoundError, RuntimeError) as error:  # ParityError is a RuntimeError
        _fail(error)


# ------------------------------------------------------------------------------------------------ xray models
# torch-free: models.registry reads manifests and JSON only.

RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="registry root (default: settings.registry_dir, env XRAY_REGISTRY_DIR)"),
]
AliasOption = Annotated[str, typer.Option("--alias", help="alias to move")]


def _registry(root: Path | None):
    from models.registry import Registry

    return Registry(root if root is not None else get_settings().registry_dir)


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@models_app.command("list")
def models_list(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows instead of a table")] = False,
) -> None:
    """List every model version with its kind, precision, aliases, metrics and integrity status."""
    from models.registry import RegistryError

    reg = _registry(registry)
    try:
        rows = reg.describe()
    except RegistryError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no models in {reg.root}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models in {reg.root}")
    for column in (
        "name",
        "version",
        "aliases",
        "kind",
        "precision",
        "labels",
        "size",
        "mean AUROC",
        "sha256",
        "status",
    ):
        table.add_column(column)
    for row in rows:
        auroc = row.get("mean_auroc")
        table.add_row(
            row["name"],
            str(row["version"]),
            ",".join(row["aliases"]),
            row.get("kind", "?"),
            row.get("precision", "?"),
            str(row.get("labels", "")),
            str(row.get("input_size", "")),
            f"{auroc:.3f}" if isinstance(auroc, float) else "",
            (row.get("sha256") or "")[:12],
            row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]",
        )
    Console().print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(help="version number to promote")],
    alias: AliasOption = "production",
    registry: RegistryOption = None,
) -> None:
    """Point ALIAS (default production) at NAME's VERSION, after checking the ONNX file's sha256."""
    from models.registry import RegistryError

    try:
        previous = _registry(registry).promote(name, version, alias)
    except RegistryError as error:
        _fail(error)
    before = f" (was {previous})" if previous not in (None, version) else ""
    typer.echo(f"{name} {alias} -> version {version}{before}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="model name")],
    alias: AliasOption = "production",
    registry: RegistryOption = None,
) -> None:
    """Point ALIAS (default production) back at the version it was promoted to before the current one."""
    from models.registry import RegistryError

    reg = _registry(registry)
    try:
        current = reg.aliases(name).get(alias)
        version = reg.rollback(name, alias)
    except RegistryError as error:
        _fail(error)
    typer.echo(f"{name} {alias} -> version {version} (rolled back from {current})")


@models_app.command("use")
def models_use(
    classifier: Annotated[str, typer.Option("--classifier", help="classifier model name the service serves")],
    autoencoder: Annotated[
        str | None, typer.Option("--autoencoder", help="outlier autoencoder model name (default: none)")
    ] = None,
    registry: RegistryOption = None,
) -> None:
    """Name the models the service serves (registry/model_set.json); versions come from their aliases."""
    from models.registry import RegistryError

    try:
        data = _registry(registry).set_model_set(classifier, autoencoder)
    except RegistryError as error:
        _fail(error)
    typer.echo(f"model set: classifier {data['classifier']}, autoencoder {data['autoencoder']}")


@app.command("serve")
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
    from service.serve import limit_blas_threads
    from service.serve import serve as run_server

    settings = get_settings()
    limit_blas_threads(settings.blas_threads)  # before anything imports numpy

    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    run_server(settings, host or settings.host, port or settings.port, workers or settings.workers)


keys_app = typer.Typer(
    help="API keys: XRAY_API_KEYS holds 'scope:sha256' entries, never the keys.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    scope: Annotated[str, typer.Option("--scope", help="user (predict, models) or admin (also reload)")] = "user",
) -> None:
    """Make a random API key; prints the key (give it to the client) and the entry for XRAY_API_KEYS."""
    from service.security import KeyConfigError, new_key

    try:
        key, entry = new_key(scope)  # type: ignore[arg-type]
    except KeyConfigError as error:
        _fail(error)
    typer.echo(f"key (shown once, give it to the client): {key}")
    typer.echo(f"XRAY_API_KEYS entry (comma-separate several): {entry}")


@app.command("demo")
def demo() -> None:
    """Prepare the demo models (trains them when missing) and report what is ready."""
    settings = get_settings()
    demo_module = importlib.import_module("training.demo")
    demo_module.ensure_demo_models(settings.runs_dir / "demo", settings.shared_data_dir)


if __name__ == "__main__":
    app()
