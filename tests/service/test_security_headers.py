"""Security headers on every answer (a strict CSP on the clinician page), and CORS closed unless configured."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import service_settings


def test_the_page_gets_a_strict_policy_and_every_answer_nosniff(client: TestClient) -> None:
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text and " on" not in page.text.split("<body")[1].split(">")[0]  # no inline script
    assert "frame-ancestors 'none'" in client.get("/docs").headers["content-security-policy"]
    for answer in (client.get("/healthz"), client.get("/v1/jobs/nope"), client.get("/ui/app.js")):
        assert answer.headers["x-content-type-options"] == "nosniff"
    problem = client.get("/v1/jobs/nope")
    assert "Traceback" not in problem.text and problem.headers["content-type"] == "application/problem+json"


def test_cors_is_closed_by_default_and_opens_only_to_listed_origins(client: TestClient) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    settings = service_settings(cors_origins=["https://viewer.hospital.example"])
    with TestClient(create_app(settings)) as allowed:
        ok = allowed.options(
            "/v1/predict",
            headers={"Origin": "https://viewer.hospital.example", "Access-Control-Request-Method": "POST"},
        )
        assert ok.headers["access-control-allow-origin"] == "https://viewer.hospital.example"
        refused = allowed.options("/v1/predict", headers=preflight)
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
