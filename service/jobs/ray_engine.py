"""The Ray engine (XRAY_JOBS_ENGINE=ray, optional extra `ray`): a job's items scored by Ray Data.

The driver (this runner) claims a block of items from the store exactly as the embedded runner does, makes a
dataset of their references and runs `map_batches` over an actor pool: each actor opens the registry's ONNX sessions
once, reads, decodes and scores its batches (`Pipeline.predict_prepared`: the service's preprocessing and
postprocessing), `num_gpus=1` per actor when the cluster has GPUs. Output batches stream back and each is committed
in one token-checked transaction, so the exactly-once rules of `service.jobs.store` hold unchanged; a heartbeat
thread keeps the block's leases while Ray works. XRAY_RAY_ADDRESS joins a cluster; without it a local one starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import numpy as np
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.jobs.outage import DatabaseTrouble, retry_delay
from service.jobs.runner import HOUSEKEEPING_S, remove_finished_uploads
from service.jobs.store import ClaimedItem, JobStore, Outcome, new_runner_id

log = logging.getLogger("service.jobs.ray")
BLOCKS_PER_ACTOR = 64  # a claim holds this many chunks per actor: the actor pool starts once per block (seconds)


class ScoringActor:
    """One Ray actor: the model set's sessions, loaded once; a batch of item references in, outcomes out."""

    def __init__(self, settings_json: str) -> None:
        from models.registry import Registry
        from service.metrics import ServiceMetrics
        from service.pipeline import Pipeline

        self.settings = Settings.model_validate_json(settings_json)
        model_set = Registry(self.settings.registry_dir).model_set(self.settings.model_alias)
        self.pipeline = Pipeline.load(model_set, self.settings, ServiceMetrics())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from service.jobs.runner import item_problem, read_file

        prepared, ready, problems = [], [], {}
        for i, path in enumerate(batch["path"]):
            try:
                prepared.append(self.pipeline.prepare(read_file(str(path), self.settings.max_upload_bytes)))
                ready.append(i)
            except Exception as error:  # noqa: BLE001 - one bad file is that item's problem, not the batch's
                problems[i] = item_problem(error)
        results = dict(zip(ready, self.pipeline.predict_prepared(prepared), strict=True)) if prepared else {}
        count = len(batch["path"])
        return {
            "id": batch["id"],
            "token": batch["token"],
            "result": np.array([json.dumps(results[i]) if i in results else "" for i in range(count)], dtype=object),
            "problem": np.array([json.dumps(problems[i]) if i in problems else "" for i in range(count)], dtype=object),
        }


def outcomes_of(batch: dict[str, np.ndarray]) -> list[Outcome]:
    return [
        Outcome(
            int(item_id),
            str(token),
            result=json.loads(result) if result else None,
            problem=json.loads(problem) if problem else None,
        )
        for item_id, token, result, problem in zip(
            batch["id"], batch["token"], batch["result"], batch["problem"], strict=True
        )
    ]


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


class RayJobRunner:
    engine_name = "ray"

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.runner_id = new_runner_id()
        self.scored = 0
        self.trouble = DatabaseTrouble(self.runner_id)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._next_housekeeping = 0.0
        self._threads: list[threading.Thread] = []
        self._started_ray = False

    # -- life cycle (the JobEngine protocol of service.jobs.engines) ----------------------------------------------
    async def register(self) -> None:
        await asyncio.to_thread(self._connect)
        await asyncio.to_thread(self.store.register_runner, self.runner_id, self.engine_name)

    def _connect(self) -> None:
        import ray
        from ray.data import DataContext

        if not ray.is_initialized():
            if self.settings.ray_address:
                ray.init(address=self.settings.ray_address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.settings.ray_num_cpus, include_dashboard=False, logging_level=logging.WARNING)
                self._started_ray = True
        DataContext.get_current().enable_progress_bars = False
        log.info("ray connected", extra={"resources": ray.cluster_resources(), "local": self._started_ray})

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._beat, name="ray-jobs-heartbeat", daemon=True),
            threading.Thread(target=self._work, name="ray-jobs", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; the block in flight finishes (within `timeout_s`; else its leases bring it back)."""
        self._stopping.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout_s)
        await asyncio.to_thread(self.store.remove_runner, self.runner_id)
        if self._started_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)
        log.info("ray job runner stopped", extra={"runner": self.runner_id, "scored": self.scored})

    def wake(self) -> None:
        """Look for work now (a job was submitted) instead of at the next poll."""
        self._wake.set()

    # -- work ------------------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stopping.wait(self.settings.job_lease_s / 3):
            try:
                self.store.heartbeat(self.runner_id, self.settings.job_lease_s)
            except DBAPIError as error:
                self.trouble.failed(error)
            except Exception:  # noqa: BLE001 - the next beat retries
                log.exception("job heartbeat failed", extra={"runner": self.runner_id})

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                scored = self.run_block()
                self.trouble.recovered()
            except DBAPIError as error:  # the database is away or full: said once, retried at the next poll
                self.trouble.failed(error)
                scored = 0
            except Exception:  # noqa: BLE001 - logged; the block's leases expire and its items come back
                log.exception("ray block failed", extra={"runner": self.runner_id})
                scored = 0
            if not scored:
                self._wake.wait(self.settings.job_poll_s)
                self._wake.clear()

    def run_block(self) -> int:
        claimed = self.store.claim(
            self.runner_id,
            alias=self.settings.model_alias,
            limit=self.settings.job_chunk_size * self.settings.ray_actors * BLOCKS_PER_ACTOR,
            lease_s=self.settings.job_lease_s,
            max_attempts=self.settings.job_max_attempts,
        )
        if not claimed:
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S
                self.store.finish_jobs()
                remove_finished_uploads(self.store)
            return 0
        for batch in self.score(claimed):
            self.scored += self._commit(outcomes_of(batch))
        return len(claimed)

    def _commit(self, outcomes: list[Outcome]) -> int:
        """As the embedded runner's: results are kept and the commit retried while the database refuses it."""
        attempt = 0
        while True:
            try:
                written = self.store.complete(outcomes)
            except DBAPIError as error:
                self.trouble.failed(error)
                if self._stopping.wait(retry_delay(attempt)):
                    raise
                attempt += 1
                continue
            self.trouble.recovered()
            return written

    def score(self, claimed: list[ClaimedItem]):
        """Ray Data over the claimed references; yields output batches as the actors finish them."""
        import ray.data

        dataset = ray.data.from_items([{"id": c.id, "token": c.token, "path": c.path} for c in claimed])
        scored = dataset.map_batches(
            ScoringActor,
            fn_constructor_args=(self.settings.model_dump_json(),),
            batch_size=self.settings.job_chunk_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.settings.ray_actors),
            num_cpus=1,
            num_gpus=1 if cluster_gpus() else 0,
        )
        yield from scored.iter_batches(batch_size=None, batch_format="numpy")
