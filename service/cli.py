"""The `xray` command. Training commands import torch lazily, so `xray serve` never loads it."""

from __future__ import annotations

import importlib

import typer

from service.config import get_settings

app = typer.Typer(help="X-ray abnormality detection: train, export and serve CNN models.", no_args_is_help=True)
train_app = typer.Typer(help="Train models (needs the `train` extra: torch, torchvision).", no_args_is_help=True)
app.add_typer(train_app, name="train")

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


@app.command("demo")
def demo() -> None:
    """Prepare the demo models (trains them when missing) and report what is ready."""
    settings = get_settings()
    demo_module = importlib.import_module("training.demo")
    demo_module.ensure_demo_models(settings.runs_dir / "demo", settings.shared_data_dir)


if __name__ == "__main__":
    app()
