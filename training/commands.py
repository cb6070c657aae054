"""The trainer's `xray` commands: `train classifier|autoencoder|add-label|ensemble`, `eval`, `export`, `calibrate`.

Each hands its arguments to a script's own argparse parser (`get_args_parser()` + `main(args)`, as torchvision's
references do), so `xray train classifier --help` lists every flag with its default. Importing this module is
cheap: a script (and torch) is imported only when its command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import typer

# typer passes the arguments through untouched; the script's parser owns them (and --help)
PASSTHROUGH = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


@contextmanager
def training_extra() -> Iterator[None]:
    """Turn a missing training dependency into a clear message naming the extra to install."""
    try:
        yield
    except ModuleNotFoundError as error:
        raise typer.BadParameter(
            f"this command needs the training extra (missing {error.name}); install with: pip install -e '.[train]'"
        ) from error


def run_script(script: ModuleType, argv: list[str]) -> None:
    script.main(script.get_args_parser().parse_args(argv))


def fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


train_app = typer.Typer(help="Train models (needs the `train` extra: torch, torchvision).", no_args_is_help=True)


@train_app.command("classifier", **PASSTHROUGH)
def train_classifier(ctx: typer.Context) -> None:
    """Train a classifier (abnormal + pathology heads). `xray train classifier --help` lists every flag."""
    with training_extra():
        from training import train_classifier as script
    run_script(script, ctx.args)


@train_app.command("autoencoder", **PASSTHROUGH)
def train_autoencoder(ctx: typer.Context) -> None:
    """Train the outlier autoencoder (plain or denoising). `xray train autoencoder --help` lists every flag."""
    with training_extra():
        from training import train_autoencoder as script
    run_script(script, ctx.args)


@train_app.command("add-label", **PASSTHROUGH)
def train_add_label(ctx: typer.Context) -> None:
    """Add a label to a classifier: logistic regression on its frozen encoder from few examples (first K outputs
    unchanged). `xray train add-label --help` lists every flag."""
    with training_extra():
        from training import add_label as script
    run_script(script, ctx.args)


@train_app.command("ensemble", **PASSTHROUGH)
def train_ensemble(ctx: typer.Context) -> None:
    """Combine trained classifiers into one calibrated checkpoint (seed ensembles, one model per data source).
    `xray train ensemble --help` lists every flag."""
    with training_extra():
        from training import ensemble as script
    try:
        run_script(script, ctx.args)
    except (ValueError, FileNotFoundError) as error:
        fail(error)


def evaluate(ctx: typer.Context) -> None:
    """Evaluate a checkpoint: JSON + HTML report with ROC, calibration, curves, filters, baselines, AE plots.

    `xray eval --help` lists every flag."""
    with training_extra():
        from training import evaluate as script
    run_script(script, ctx.args)


def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX into the registry (parity-checked; --int8 adds a quantised variant).

    `xray export --help` lists every flag."""
    from models.registry import RegistryError

    with training_extra():
        from training import export as script
    try:
        run_script(script, ctx.args)
    except (RegistryError, ValueError, FileNotFoundError, RuntimeError) as error:  # ParityError is a RuntimeError
        fail(error)


def calibrate(ctx: typer.Context) -> None:
    """Refit a registered model's calibration and thresholds (or outlier threshold) on a site's own films, as a new
    version with the same ONNX file. `xray calibrate --help` lists every flag."""
    from models.registry import RegistryError

    with training_extra():
        from training import site_calibration as script
    try:
        run_script(script, ctx.args)
    except (RegistryError, ValueError, FileNotFoundError) as error:
        fail(error)


def register(app: typer.Typer) -> None:
    """Add the trainer's commands to the `xray` command."""
    app.add_typer(train_app, name="train")
    app.command("eval", **PASSTHROUGH)(evaluate)
    app.command("export", **PASSTHROUGH)(export)
    app.command("calibrate", **PASSTHROUGH)(calibrate)
