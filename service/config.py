"""One Settings object for the whole service; nothing else reads the environment (env prefix XRAY_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XRAY_", env_file=".env", extra="ignore")

    registry_dir: Path = Field(default=PROJECT_ROOT / "registry", description="model registry root")
    runs_dir: Path = Field(default=PROJECT_ROOT / "runs", description="training outputs (checkpoints, reports)")
    shared_data_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data", description="real data sets used by the demo and tests"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, description="larger uploads are refused with 413")
    max_pixels: int = Field(default=50_000_000, description="pixel-count limit checked from the image header")
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
