"""Settings both sides share (env prefix XRAY_): where the model registry lives.

`service.config.Settings` extends this with the serving settings; the trainer's commands (`xray export`) read the
registry root from here, so `XRAY_REGISTRY_DIR` means one folder for the exporter and the server. Nothing else
reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XRAY_", env_file=".env", extra="ignore")

    registry_dir: Path = Field(default=PROJECT_ROOT / "registry", description="model registry root")


def default_registry_dir() -> Path:
    """The registry root: XRAY_REGISTRY_DIR (or .env), else registry/ in the project."""
    return CoreSettings().registry_dir
