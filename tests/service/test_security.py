"""API keys: stored hashed, user vs admin scope, 401/403 as problem+json."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.security import KeyConfigError, KeyRing, hash_key, new_key, presented_key
from tests.service.conftest import phantom_png, service_settings
from tests.service.test_app import assert_problem


def test_new_key_entry_holds_only_the_hash() -> None:
    key, entry = new_key("admin")
    scope, digest = entry.split(":")
    assert scope == "admin" and digest == hash_key(key) and key not in entry
    with pytest.raises(KeyConfigError, match="scope"):
        new_key("root")  # type: ignore[arg-type]


def test_keyring_scopes_and_malformed_entries() -> None:
    user, user_entry = new_key("user")
    admin, admin_entry = new_key("admin")
    ring = KeyRing.parse([user_entry, admin_entry])
    assert ring.scope_of(user) == "user" and ring.scope_of(admin) == "admin" and ring.scope_of("guess") is None
    assert not KeyRing.parse([]).enabled
    for bad in ("user:abc", "root:" + "0" * 64, "plain-key-without-scope", "admin:" + "g" * 64):
        with pytest.raises(KeyConfigError, match="xray keys new"):
            KeyRing.parse([bad])


def test_presented_key_from_bearer_or_header() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Basic dXNlcg==", None) is None
    assert presented_key(None, None) is None


def test_settings_read_comma_separated_keys_from_the_environment(monkeypatch) -> None:
    from service.config import Settings

    _, first = new_key("user")
    _, second = new_key("admin")
    monkeypatch.setenv("XRAY_API_KEYS", f"{first}, {second}")
    assert Settings().api_keys == [first, second]


def test_malformed_key_setting_stops_startup() -> None:
    with pytest.raises(KeyConfigError):
        create_app(service_settings(api_keys=["admin:not-a-hash"]))


def test_endpoints_enforce_scopes() -> None:
    user, user_entry = new_key("user")
    admin, admin_entry = new_key("admin")
    with TestClient(create_app(service_settings(api_keys=[user_entry, admin_entry]))) as client:
        png = {"content-type": "image/png"}
        body = assert_problem(client.post("/v1/predict", content=phantom_png(), headers=png), 401, "missing_api_key")
        assert "Bearer" in body["detail"]
        response = client.post("/v1/predict", content=phantom_png(), headers={**png, "authorization": "Bearer nope"})
        assert_problem(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/predict", content=phantom_png(), headers={**png, "x-api-key": user}).status_code == 200
        assert client.get("/v1/models", headers={"authorization": f"Bearer {user}"}).status_code == 200
        assert_problem(client.post("/v1/models/reload", headers={"x-api-key": user}), 403, "forbidden")
        assert_problem(client.post("/v1/models/reload"), 401, "missing_api_key")
        assert client.post("/v1/models/reload", headers={"x-api-key": admin}).json()["status"] == "reloaded"
        assert client.get("/v1/models", headers={"x-api-key": admin}).status_code == 200  # admin may do user things
        # probes and scrapes stay open for the orchestrator
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200
