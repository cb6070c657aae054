"""`xray score DIR|ZIP|FILE... -o results.csv|.jsonl`: score files without a server, on the same path as the service
(Pipeline: decode -> preprocess -> micro-batched sessions -> postprocess), with a progress bar.

Rows are written in input order as they finish and flushed, so an interrupted run keeps what it scored;
`--resume` reads the output back and skips every reference already in it.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from models.registry import Registry
from service.config import Settings
from service.jobs.intake import source_limits
from service.jobs.results import csv_header, csv_line, csv_values, jsonl_line
from service.jobs.runner import score_file
from service.jobs.sources import SourceError, SourceItem, extract_zip, folder_items
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline

log = logging.getLogger("service.jobs.offline")
IN_FLIGHT = 64  # images being read, decoded or inferred at once: enough to fill batches of 16 on both sessions


def output_format(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise SourceError("unsupported_output", f"expected an output ending in .csv or .jsonl, got {output.name!r}")
    return suffix[1:]


def collect(inputs: Sequence[Path], unpack_dir: Path, settings: Settings) -> list[SourceItem]:
    """Every file to score, in order: folders walked, zips unpacked (with the job limits), files as given."""
    found: list[SourceItem] = []
    for given in inputs:
        path = given.resolve()
        if path.is_dir():
            found += folder_items(path, [path])
        elif path.is_file() and path.suffix.lower() == ".zip":
            unpacked = extract_zip(path, unpack_dir / f"{len(found)}-{path.stem}", source_limits(settings))
            found += [SourceItem(f"{given}:{item.reference}", item.path) for item in unpacked]
        elif path.is_file():
            found.append(SourceItem(str(path), path))
        else:
            raise SourceError("path_not_found", f"expected a folder, a zip or a file; {str(given)!r} is none of those")
    return found


def already_scored(output: Path, fmt: str) -> set[str]:
    if not output.exists():
        return set()
    with output.open(newline="") as handle:
        if fmt == "csv":
            return {row["reference"] for row in csv.DictReader(handle)}
        return {json.loads(line)["reference"] for line in handle if line.strip()}


async def scored_in_order(
    pipeline: Pipeline, items: Sequence[SourceItem], pool: ThreadPoolExecutor, limit: int
) -> AsyncIterator[tuple[SourceItem, dict[str, Any] | None, dict[str, str] | None]]:
    """Keep IN_FLIGHT images moving through the pipeline; yield their outcomes in input order."""
    pending: deque[tuple[SourceItem, asyncio.Task]] = deque()
    queue = iter(items)
    try:
        while True:
            while len(pending) < IN_FLIGHT and (item := next(queue, None)) is not None:
                pending.append((item, asyncio.ensure_future(score_file(pipeline, str(item.path), pool, limit))))
            if not pending:
                return
            item, task = pending.popleft()
            result, problem = await task
            yield item, result, problem
    finally:
        for _, task in pending:
            task.cancel()


async def score_offline(
    inputs: Sequence[Path], output: Path, settings: Settings, *, resume: bool, progress: bool = True
) -> dict[str, float]:
    """Score `inputs` into `output`; returns counts (scored, failed, skipped as already in the output) and the
    seconds spent scoring (models loaded; for throughput comparisons)."""
    fmt = output_format(output)
    done = already_scored(output, fmt) if resume else set()
    with tempfile.TemporaryDirectory(prefix="xray-score-") as unpack_dir:
        items = await asyncio.to_thread(collect, inputs, Path(unpack_dir), settings)
        todo = [item for item in items if item.reference not in done]
        model_set = Registry(settings.registry_dir).model_set(settings.model_alias)
        pipeline = await asyncio.to_thread(Pipeline.load, model_set, settings, ServiceMetrics())
        labels = list(pipeline.labels)
        pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        pipeline.start()
        counts: dict[str, float] = {"scored": 0, "failed": 0, "skipped": len(items) - len(todo), "seconds": 0.0}
        append = resume and output.exists() and output.stat().st_size > 0
        try:
            with output.open("a" if append else "w", newline="") as handle, ProgressBar(progress, len(todo)) as bar:
                if fmt == "csv" and not append:
                    handle.write(csv_line(csv_header(labels)))
                position = {item.reference: i for i, item in enumerate(items)}
                started = time.perf_counter()
                async for item, result, problem in scored_in_order(pipeline, todo, pool, settings.max_upload_bytes):
                    row = {
                        "position": position[item.reference],
                        "reference": item.reference,
                        "state": "succeeded" if problem is None else "failed",
                        "result": result,
                        "problem": problem,
                    }
                    handle.write(csv_line(csv_values(row, labels)) if fmt == "csv" else jsonl_line(row))
                    handle.flush()
                    counts["scored" if problem is None else "failed"] += 1
                    bar(1)
                counts["seconds"] = round(time.perf_counter() - started, 3)
        finally:
            await pipeline.close()
            pool.shutdown(wait=True)
    return counts


class ProgressBar:
    """A rich progress bar (or nothing): `with ProgressBar(on, total) as advance: advance(1)`."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda _n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("scoring", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *_exc: object) -> None:
        if self.enabled:
            self.bar.stop()
