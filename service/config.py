"""One Settings object for the whole service; nothing else reads the environment (env prefix XRAY_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from models.settings import PROJECT_ROOT, CoreSettings


class Settings(CoreSettings):
    """The serving settings, on top of the shared ones (registry_dir) from `models.settings`."""

    # -- serving ---------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1, description="CPU worker processes (one per GPU when GPUs exist)")
    gpus: str = Field(
        default="auto",
        description="GPUs for `xray serve`: auto (nvidia-smi / CUDA_VISIBLE_DEVICES), none, or ids like 0,1",
    )
    model_alias: str = Field(default="production", description="registry alias the service serves")
    registry_poll_s: float = Field(
        default=10.0,
        ge=0,
        description="how often the server checks whether the alias now resolves to other model versions and reloads "
        "them (a broken set is refused and the last good one serves on); 0 = never, reload by API only",
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto", description="auto: the int8 variant on CPU when the registry has one, fp32 on GPU"
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto", description="auto tries CUDA then CPU; tensorrt tries TensorRT, CUDA, CPU"
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads per session (0 = its default)")
    inter_op_threads: int = Field(default=1, ge=0, description="ONNX Runtime inter-op threads (0 = its default)")
    ort_spinning: bool = Field(
        default=False, description="let idle ONNX Runtime threads spin-wait (faster only on cores nothing else uses)"
    )
    blas_threads: int = Field(
        default=1, ge=1, description="numpy's BLAS threads in `xray serve` (requests already run in parallel)"
    )
    decode_threads: int = Field(default=2, ge=1, description="threads that decode and preprocess uploads")
    max_batch_size: int = Field(default=16, ge=1, description="micro-batcher: largest batch sent to a session")
    max_batch_delay_ms: float = Field(default=5.0, ge=0, description="micro-batcher: longest wait to fill a batch")
    max_queue: int = Field(default=128, ge=1, description="micro-batcher: queued images before answering 503")
    max_active_uploads: int = Field(
        default=128, ge=1, description="uploads being received, decoded or scored at once; more get 503 unread"
    )
    drain_timeout_s: float = Field(
        default=30.0, gt=0, description="how long a reload or shutdown waits for requests still in flight"
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with 503 when the queue is full")
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, description="larger uploads are refused with 413")
    max_pixels: int = Field(default=50_000_000, description="pixel-count limit checked from the image header")
    ready_timeout_s: float = Field(default=5.0, gt=0, description="/readyz fails when a zero image takes longer")
    heatmap_max_side: int = Field(default=512, ge=32, description="longest side of heatmap overlay PNGs")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated 'scope:sha256hex' entries (scope admin or user); empty = no authentication. "
        "`xray keys new --scope admin` makes a key and its entry",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "XRAY_PROMETHEUS_MULTIPROC_DIR"),
        description="shared metrics folder of several worker processes (set by `xray serve --workers N`)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins allowed to call the API from a browser; empty = none (CORS closed)",
    )
    rate_limit_per_minute: float = Field(
        default=0, ge=0, description="requests per minute each API key may make to /v1 (per process); 0 = no limit"
    )
    rate_limit_burst: int = Field(default=30, ge=1, description="requests a key may make at once above its rate")
    log_level: str = "INFO"
    log_json: bool = Field(default=True, description="structured JSON log lines (false: plain text)")

    # -- batch jobs (service.jobs) ---------------------------------------------------------------------------
    data_dir: Path = Field(
        default=PROJECT_ROOT / "var", description="the embedded job database and uploaded job archives live here"
    )
    database_url: str | None = Field(
        default=None,
        description="job store: a postgresql+psycopg:// URL for several replicas; default: SQLite (WAL) at "
        "data_dir/jobs.sqlite",
    )
    allowed_source_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="comma-separated folders whose files jobs may read by server-side path; empty = none may",
    )
    jobs_engine: Literal["embedded", "ray", "off"] = Field(
        default="embedded", description="who scores job items in `xray serve`: its own runner, Ray Data, or nobody"
    )
    ray_address: str | None = Field(default=None, description="Ray cluster to join (default: start a local one)")
    ray_actors: int = Field(default=2, ge=1, description="Ray engine: scoring actors, each with its own sessions")
    ray_num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local Ray instance (default: all)")
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="`xray worker`: serve Prometheus /metrics on this port (0 = off)"
    )
    job_chunk_size: int = Field(default=64, ge=1, description="items a runner claims and commits at once")
    job_lease_s: float = Field(
        default=30.0, gt=0, description="claimed items return to the queue when their runner stops beating this long"
    )
    job_max_attempts: int = Field(
        default=3, ge=1, description="an item whose runner died this many times is marked failed, not retried"
    )
    job_poll_s: float = Field(default=1.0, gt=0, description="how often an idle runner looks for queued items")
    job_max_upload_bytes: int = Field(default=2 * 1024**3, ge=1, description="largest zip a job upload may be")
    job_max_uncompressed_bytes: int = Field(default=8 * 1024**3, ge=1, description="a job zip's unpacked size limit")
    job_max_entries: int = Field(default=50_000, ge=1, description="most entries a job zip may hold")
    job_max_zip_ratio: float = Field(default=200.0, gt=1, description="an entry packed tighter than this is a bomb")

    @field_validator("api_keys", "allowed_source_roots", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def job_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
