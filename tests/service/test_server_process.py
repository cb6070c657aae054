"""The real server: `xray serve` in its own process on a free loopback port.

- the serving process never loads torch (its memory maps hold no libtorch);
- 200 concurrent requests from 16 clients all come back correct, with batches larger than one in /metrics;
- a model reload under load fails no request, and new requests move to the new version.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from models.calibration import calibrate
from models.imaging import decode
from models.preprocessing import PreprocessSpec, preprocess
from service.engine import open_session
from service.security import new_key
from tests.conftest import SHARED_DATA
from tests.service.conftest import add_classifier_version, copy_registry, phantom_png
from tests.service.processes import READY_TIMEOUT_S, free_port, launch_xray, wait_ready


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    registry_dir: Path
    admin_key: str
    log_path: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    registry = copy_registry(root / "registry")
    admin_key, admin_entry = new_key("admin")
    port = free_port()
    env = {
        **os.environ,
        "XRAY_REGISTRY_DIR": str(registry.root),
        "XRAY_API_KEYS": admin_entry,
        "XRAY_INTRA_OP_THREADS": "1",
        "XRAY_DECODE_THREADS": "2",
        "XRAY_MAX_BATCH_SIZE": "16",
        "XRAY_MAX_BATCH_DELAY_MS": "5",
        "XRAY_GPUS": "none",
    }
    log_path = root / "server.log"
    process = launch_xray(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
    except BaseException:
        process.kill()
        raise
    yield Server(url, process, registry.root, admin_key, log_path)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _images(count: int) -> list[bytes]:
    """Real NIH films when the shared data is here, else phantoms; repeated to `count`."""
    real = sorted((SHARED_DATA / "nih1000" / "test").glob("*/*.png"))[:50]
    pool = [path.read_bytes() for path in real] or [phantom_png(seed, size=128) for seed in range(20)]
    return [pool[i % len(pool)] for i in range(count)]


def _expected_probabilities(server: Server, images: list[bytes]) -> list[dict[str, float]]:
    """Each image scored alone, in this process, by the model the server says it serves (calibrated as served)."""
    from models.registry import Registry

    served = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": server.admin_key}).json()
    registry = Registry(server.registry_dir)
    name, version = served["models"]["classifier"]["name"], served["models"]["classifier"]["version"]
    model = registry.get(name, version)
    session = open_session(model, providers="cpu", intra_op_threads=1)
    spec = PreprocessSpec.from_dict(model.manifest.preprocess)
    expected = []
    for data in images:
        raw = session.run(preprocess(decode(data), spec)[None])["probabilities"][0]
        probabilities = calibrate(raw, model.manifest.labels, model.manifest.calibration)
        expected.append(dict(zip(model.manifest.labels, probabilities.tolist(), strict=True)))
    return expected


def _batch_counts(metrics_text: str, model_prefix: str) -> tuple[float, float]:
    """(batches in total, batches of exactly one image) for the classifier's batcher."""
    total = single = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("xray_batch_size_") or f'model="{model_prefix}' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("xray_batch_size_count"):
            total += value
        elif line.startswith("xray_batch_size_bucket") and 'le="1.0"' in line:
            single += value
    return total, single


def test_the_serving_process_never_loads_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in maps  # the check can see the libraries that are loaded
    assert not re.search(r"libtorch|torch/lib|libc10", maps), "the serving process mapped torch libraries"


def test_200_concurrent_requests_from_16_clients(server: Server) -> None:
    images = _images(200)
    expected = _expected_probabilities(server, images)

    def send(index: int) -> tuple[int, dict]:
        with httpx.Client(timeout=60) as http:
            response = http.post(
                f"{server.url}/v1/predict",
                files={"file": (f"{index}.png", images[index], "image/png")},
                headers={"x-api-key": server.admin_key},
            )
        return index, response.json() if response.status_code == 200 else {"status": response.status_code}

    before_total, before_single = _batch_counts(httpx.get(f"{server.url}/metrics").text, "chest-classifier")
    with ThreadPoolExecutor(max_workers=16) as clients:
        answers = list(clients.map(send, range(200)))
    assert len(answers) == 200
    failures = [body for _, body in answers if "findings" not in body]
    assert not failures, failures[:3]
    for index, body in answers:
        got = {row["label"]: row["probability"] for row in [body["abnormal"], *body["findings"]]}
        assert got == pytest.approx(expected[index], abs=1e-4), index
    assert len({body["request_id"] for _, body in answers}) == 200
    total, single = _batch_counts(httpx.get(f"{server.url}/metrics").text, "chest-classifier")
    batches, singles = total - before_total, single - before_single
    assert batches < 200, "requests shared session runs"
    assert batches - singles > 0, "batches of more than one image were observed"


def test_reload_under_load_fails_no_request(server: Server) -> None:
    from models.registry import Registry

    registry = Registry(server.registry_dir)
    admin = {"x-api-key": server.admin_key}
    new_version = add_classifier_version(registry, server.registry_dir.parent)  # probabilities halved in the graph
    stop = threading.Event()
    statuses: list[int] = []
    served: set[str] = set()
    abnormal: dict[tuple[str, int], float] = {}  # (model, worker's image) -> the Abnormal probability it answered
    lock = threading.Lock()
    images = _images(8)

    def load(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(
                    f"{server.url}/v1/predict", content=images[worker], headers={**admin, "content-type": "image/png"}
                )
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        body = response.json()
                        model = body["models"]["classifier"]
                        served.add(f"{model['name']}@{model['version']}")
                        abnormal[(f"{model['name']}@{model['version']}", worker)] = body["abnormal"]["probability"]

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()

    def answered_more(count: int = 10) -> None:
        """Until `count` more requests were answered (a count, not a sleep: the load is really flowing)."""
        with lock:
            target = len(statuses) + count
        for _ in range(1200):  # a hang guard, not a timing: 60 s
            with lock:
                if len(statuses) >= target:
                    return
            time.sleep(0.05)
        raise AssertionError(f"expected {count} more answers under load, got {len(statuses) - target + count}")

    try:
        answered_more()
        registry.promote("chest-classifier", new_version)
        first = httpx.post(f"{server.url}/v1/models/reload", headers=admin, timeout=60)
        answered_more()
        registry.rollback("chest-classifier")
        second = httpx.post(f"{server.url}/v1/models/reload", headers=admin, timeout=60)
        answered_more()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["after"]["models"]["classifier"]["version"] == new_version
    assert len(statuses) > 20
    assert set(statuses) == {200}, f"failed requests during reload: {sorted(set(statuses))}"
    assert f"chest-classifier@{new_version}" in served and "chest-classifier-int8@1" in served
    # the new version really answered: the same films got other probabilities from it than from the shipped one
    both = [
        w
        for w in range(8)
        if (f"chest-classifier@{new_version}", w) in abnormal and ("chest-classifier-int8@1", w) in abnormal
    ]
    assert both
    for worker in both:
        new, old = abnormal[(f"chest-classifier@{new_version}", worker)], abnormal[("chest-classifier-int8@1", worker)]
        assert abs(new - old) > 0.01, (worker, new, old)


def test_server_logs_are_json_lines(server: Server) -> None:
    import json

    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]
    assert any(entry.get("msg") == "models loaded" for entry in parsed)
    assert any(entry.get("msg") == "request" and entry.get("route") == "/v1/predict" for entry in parsed)


def test_two_cpu_workers_share_the_port_restart_after_a_crash_and_report_metrics_together(tmp_path) -> None:
    import signal

    port = free_port()
    env = {**os.environ, "XRAY_INTRA_OP_THREADS": "1", "XRAY_GPUS": "none", "XRAY_LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "server.log"
    metrics_dirs_before = set(Path(tempfile.gettempdir()).glob("xray-metrics-*"))
    process = launch_xray(["serve", "--port", str(port), "--workers", "2"], env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path)
        _wait_workers(url, 2)
        images = _images(40)
        png = {"content-type": "image/png"}
        # a new connection per request reaches either worker, and none is left on the worker killed below
        with httpx.Client(timeout=60, headers={"connection": "close"}) as http:
            for data in images[:20]:
                assert http.post(f"{url}/v1/predict", content=data, headers=png).is_success
            workers = _worker_pids(http.get(f"{url}/metrics").text)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)  # a crashed worker: the supervisor starts a new one
            for data in images[20:]:
                assert http.post(f"{url}/v1/predict", content=data, headers=png).is_success
            _wait_workers(url, 2, exclude=workers[0])
            text = http.get(f"{url}/metrics").text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("xray_http_requests_total{") and 'route="/v1/predict"' in line and 'status="200"' in line
        )
        assert counted == 40, "every worker's requests, the dead one's included, are in one /metrics answer"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    assert set(Path(tempfile.gettempdir()).glob("xray-metrics-*")) == metrics_dirs_before, (
        "the metrics folder is removed"
    )


def _worker_pids(metrics_text: str) -> list[int]:
    return sorted(
        int(re.search(r'worker="(\d+)"', line).group(1))
        for line in metrics_text.splitlines()
        if line.startswith("xray_worker_info{") and line.endswith(" 1.0")
    )


def _wait_workers(url: str, count: int, exclude: int | None = None) -> None:
    """Until /metrics lists `count` live workers (and not `exclude`); the restart backoff is about a second."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            pids = _worker_pids(httpx.get(f"{url}/metrics", timeout=5).text)
        except httpx.TransportError:
            pids = []
        if len(pids) == count and exclude not in pids:
            return
        time.sleep(0.3)
    pytest.fail(f"expected {count} live workers in /metrics, got {pids}")
