"""Prometheus metrics, one registry per app (tests build many apps in one process).

With several worker processes (`xray serve --workers N`), prometheus_client's multiprocess mode keeps every
worker's values in a shared folder (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the workers start) and
/metrics aggregates them, whichever worker answers the scrape: counters and histograms are summed, the queue depth
is summed over live workers, and the model gauge shows each live worker's models.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        worker = {"worker": str(os.getpid())}
        self.requests = Counter(
            "xray_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xray_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "xray_batch_size", "images per session run", ["model"], buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference = Histogram(
            "xray_inference_seconds",
            "session run time per batch",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("xray_queue_depth", "images waiting for inference", ["model"], registry=self.registry)
        self.predictions = Counter(
            "xray_predictions", "predictions by outlier verdict", ["verdict"], registry=self.registry
        )
        self.rejected = Counter(
            "xray_rejections",
            "requests refused with 503 (queue_full or overloaded)",
            ["reason"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "xray_stage_seconds", "time per pipeline stage", ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.info = Gauge(
            "xray_worker_info", "worker processes", list(worker), registry=self.registry, multiprocess_mode="livemax"
        )
        self.info.labels(**worker).set(1)
        self.model_info = Gauge(
            "xray_model_loaded",
            "models the worker serves",
            ["role", "name", "version", "precision", "device"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        # batch jobs: the job store's numbers, read at scrape time (every replica reports the same database)
        self.jobs = Gauge(
            "xray_jobs",
            "jobs in the job store by state",
            ["state"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.job_items_open = Gauge(
            "xray_job_items_open",
            "job items queued or being scored, all jobs",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.job_items_written = Counter(
            "xray_job_items_written", "job item results this process's runner committed", registry=self.registry
        )
        self.job_runner_paused = Gauge(
            "xray_job_runner_paused",
            "1 while this process's runner cannot write to the job database (unreachable, disk full)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged)
