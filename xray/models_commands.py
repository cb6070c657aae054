"""`xray models`: list registry versions, promote a version to an alias, roll an alias back, name the model set.

Torch-free: the registry (models.registry) reads manifests and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.registry import Registry, RegistryError
from models.settings import default_registry_dir

models_app = typer.Typer(
    help="The model registry: list versions, promote a version to an alias, roll an alias back.", no_args_is_help=True
)

RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="registry root (default: XRAY_REGISTRY_DIR, else registry/ in the project)"),
]
AliasOption = Annotated[str, typer.Option("--alias", help="alias to move")]


def _registry(root: Path | None) -> Registry:
    return Registry(root if root is not None else default_registry_dir())


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@models_app.command("list")
def models_list(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows instead of a table")] = False,
) -> None:
    """List every model version with its kind, precision, aliases, metrics and integrity status."""
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
    try:
        data = _registry(registry).set_model_set(classifier, autoencoder)
    except RegistryError as error:
        _fail(error)
    typer.echo(f"model set: classifier {data['classifier']}, autoencoder {data['autoencoder']}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
