"""The registry changed under a running server, badly: the last good set serves on, /readyz and the log say what is
wrong, an API reload is refused with 409, and the watcher switches to the first good set the registry holds again.

Each test runs a server on a copy of the shipped registry with a 0.2 s watcher. Faults are written atomically (a
temporary file, then a rename), so the watcher never sees a state in between and each fault is one distinct problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.state
from models.registry import Registry
from service.app import create_app
from tests.service.conftest import add_classifier_version, copy_registry, phantom_png, service_settings

POLL_S = 0.2
CLASSIFIER = "chest-classifier"
PROBLEM = "application/problem+json"


# ------------------------------------------------------------------------------------------------ helpers
def _until(condition: Callable[[], object], timeout: float = 30.0) -> object:
    """Poll until `condition()` is truthy (and return it): a deadline, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)
    return value


def _write(path: Path, data: bytes) -> None:
    """Atomically, like a careful writer (or a `mv`): the watcher sees the old bytes or the new, nothing between."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _point_alias(registry: Registry, version: int) -> None:
    """Point production at `version` without the registry's checks (as a hand edit or a foreign tool would)."""
    path = registry.root / CLASSIFIER / "aliases.json"
    state = json.loads(path.read_text())
    state["aliases"]["production"] = version
    _write(path, json.dumps(state).encode())


def _stage_version(registry: Registry, version: int, onnx: bytes | None, manifest: dict) -> None:
    """A version folder written in place (not through `add_version`'s staging): what a crashed copy leaves."""
    folder = registry.root / CLASSIFIER / str(version)
    folder.mkdir()
    if onnx is not None:
        _write(folder / "model.onnx", onnx)
    _write(folder / "manifest.json", json.dumps({**manifest, "version": version}).encode())


def _v1(registry: Registry) -> tuple[Path, bytes, dict]:
    folder = registry.root / CLASSIFIER / "1"
    return folder, (folder / "model.onnx").read_bytes(), json.loads((folder / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------------ the faults
@dataclass(frozen=True)
class Fault:
    """Breaks the registry; `error`, `version`: what /readyz must then name (model chest-classifier)."""

    name: str
    inject: Callable[[Registry], None]
    error: str
    version: int


def _half_written_without_model(registry: Registry) -> None:
    _, _, manifest = _v1(registry)
    _stage_version(registry, 2, None, manifest)
    _point_alias(registry, 2)


def _half_written_partial_model(registry: Registry) -> None:
    _, onnx, manifest = _v1(registry)
    _stage_version(registry, 2, onnx[: len(onnx) // 3], manifest)
    _point_alias(registry, 2)


def _corrupted_onnx_with_matching_sha(registry: Registry) -> None:
    _, _, manifest = _v1(registry)
    garbage = b"\x08\x07not an onnx graph" * 64
    fields = {**manifest, "onnx_sha256": hashlib.sha256(garbage).hexdigest(), "onnx_bytes": len(garbage)}
    _stage_version(registry, 2, garbage, fields)
    _point_alias(registry, 2)


def _sha256_mismatch_in_place(registry: Registry) -> None:
    folder, onnx, _ = _v1(registry)
    changed = bytearray(onnx)
    changed[len(changed) // 2] ^= 0xFF
    _write(folder / "model.onnx", bytes(changed))


def _manifest_not_json(registry: Registry) -> None:
    folder, _, _ = _v1(registry)
    _write(folder / "manifest.json", b'{"kind": "classifier", not json')


def _alias_to_missing_version(registry: Registry) -> None:
    _point_alias(registry, 9)


FAULTS = [
    Fault("half_written_version_without_model_onnx", _half_written_without_model, "IntegrityError", 2),
    Fault("half_written_version_with_partial_model_onnx", _half_written_partial_model, "IntegrityError", 2),
    Fault("corrupted_onnx_with_matching_sha256", _corrupted_onnx_with_matching_sha, "EngineError", 2),
    Fault("sha256_mismatch_in_the_serving_version", _sha256_mismatch_in_place, "IntegrityError", 1),
    Fault("manifest_that_is_not_json", _manifest_not_json, "ManifestError", 1),
    Fault("alias_to_a_missing_version", _alias_to_missing_version, "ModelNotFoundError", 9),
]


# ------------------------------------------------------------------------------------------------ fixtures
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self, level: int = logging.WARNING) -> list[dict]:
        return [r.registry_problem for r in self.records if r.levelno == level and hasattr(r, "registry_problem")]


@pytest.fixture
def state_log() -> Iterator[_Records]:
    """The manager's log records (the service's loggers do not propagate to pytest's caplog)."""
    handler = _Records()
    logger = logging.getLogger("service.state")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def fingerprints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the watcher's looks at the registry, so a test can wait for polls instead of sleeping."""
    calls: list[int] = []
    real = service.state.registry_fingerprint

    def counting(root: Path, alias: str):
        calls.append(1)
        return real(root, alias)

    monkeypatch.setattr(service.state, "registry_fingerprint", counting)
    return calls


def _classifier(client: TestClient) -> dict:
    response = client.post("/v1/predict", content=phantom_png(3), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    model = response.json()["models"]["classifier"]
    return {key: model[key] for key in ("name", "version", "sha256")}


def _readyz(client: TestClient) -> dict:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_a_broken_registry_is_refused_and_the_last_good_set_serves_on(
    fault: Fault, tmp_path: Path, state_log: _Records, fingerprints: list[int]
) -> None:
    registry = copy_registry(tmp_path / "registry")
    original = {path: path.read_bytes() for path in (registry.root / CLASSIFIER).rglob("*") if path.is_file()}
    settings = service_settings(registry_dir=registry.root, registry_poll_s=POLL_S)
    with TestClient(create_app(settings)) as client:
        before = _classifier(client)
        assert "registry_problem" not in _readyz(client)

        fault.inject(registry)
        problem = _until(lambda: _readyz(client).get("registry_problem"))
        assert (problem["error"], problem["model"], problem["version"]) == (fault.error, CLASSIFIER, fault.version)
        assert problem["trigger"] == "watcher" and problem["attempts"] == 1 and problem["since"]
        assert (
            f"{CLASSIFIER}@{fault.version}" in problem["detail"] or f"no version {fault.version}" in problem["detail"]
        )
        assert str(registry.root) not in problem["detail"]  # /readyz is open: paths relative to the registry
        assert _classifier(client) == before  # the last good set answers
        assert state_log.problems() == [problem]  # one structured warning

        polls = len(fingerprints)
        _until(lambda: len(fingerprints) >= polls + 3)  # the watcher looked again, three times...
        assert _readyz(client)["registry_problem"]["attempts"] == 1  # ...and did not retry the same broken state

        response = client.post("/v1/models/reload")
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        body = response.json()
        assert body["code"] == "reload_refused" and body["status"] == 409
        assert fault.error in body["detail"] and "the previous set is still serving" in body["detail"]
        assert f"{before['name']}@{before['version']}" in body["detail"]
        again = _readyz(client)["registry_problem"]
        assert (again["attempts"], again["trigger"], again["since"]) == (2, "api", problem["since"])
        assert len(state_log.problems()) == 1  # the same problem is logged once, however often it is met
        assert _classifier(client) == before

        # repair: the damaged files back, production on the last good version, then a new good version promoted
        for path, data in original.items():
            _write(path, data)
        version = add_classifier_version(registry, tmp_path)
        registry.promote(CLASSIFIER, version)
        served = _until(lambda: (model := _classifier(client))["version"] == version and model)
        assert served["name"] == CLASSIFIER and served["sha256"] == registry.resolve(CLASSIFIER).manifest.onnx_sha256
        _until(lambda: "registry_problem" not in _readyz(client))
        assert state_log.problems(logging.INFO)  # "registry problem cleared"
        assert client.post("/v1/models/reload").status_code == 200


def test_a_change_while_broken_is_tried_again_and_a_new_problem_is_logged_anew(
    tmp_path: Path, state_log: _Records
) -> None:
    registry = copy_registry(tmp_path / "registry")
    with TestClient(create_app(service_settings(registry_dir=registry.root, registry_poll_s=POLL_S))) as client:
        _alias_to_missing_version(registry)
        _until(lambda: _readyz(client).get("registry_problem"))
        _point_alias(registry, 8)
        problem = _until(lambda: (p := _readyz(client).get("registry_problem")) and p["version"] == 8 and p)
        assert problem["attempts"] == 1
        assert [p["version"] for p in state_log.problems()] == [9, 8]


def test_with_the_watcher_off_only_an_api_reload_loads_a_new_version(tmp_path: Path) -> None:
    registry = copy_registry(tmp_path / "registry")
    with TestClient(create_app(service_settings(registry_dir=registry.root, registry_poll_s=0))) as client:
        before = _classifier(client)
        version = add_classifier_version(registry, tmp_path)
        registry.promote(CLASSIFIER, version)
        assert _classifier(client) == before
        response = client.post("/v1/models/reload")
        assert response.status_code == 200, response.text
        assert response.json()["after"]["models"]["classifier"]["version"] == version
        assert _classifier(client)["version"] == version
