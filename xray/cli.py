"""The `xray` command: the one place that composes the trainer's and the service's commands.

Dependencies run one way: `models/` (shared core) <- `training/`, `service/` <- `xray/`. Each side contributes its
own commands module; heavy imports (torch, onnxruntime, uvicorn) happen only inside the command that needs them.
"""

from __future__ import annotations

import typer

from service import commands as service_commands
from training import commands as training_commands
from xray import models_commands

app = typer.Typer(help="X-ray abnormality detection: train, export and serve CNN models.", no_args_is_help=True)
training_commands.register(app)
models_commands.register(app)
service_commands.register(app)
