"""The API contract: the generated OpenAPI equals the committed openapi.json (a breaking change is a visible diff),
and every error is documented as the Problem the service really answers."""

from __future__ import annotations

import json

from service.app import create_app
from service.config import Settings
from service.openapi import contract
from tests.conftest import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "openapi.json"


def _generated() -> dict:
    return json.loads(json.dumps(contract(create_app(Settings(api_keys=[]))), sort_keys=True))


def test_the_generated_schema_is_the_committed_one() -> None:
    generated, committed = _generated(), json.loads(COMMITTED.read_text())
    changed = sorted(
        f"{method.upper()} {path}"
        for path in set(generated["paths"]) | set(committed["paths"])
        for method in set(generated["paths"].get(path, {})) | set(committed["paths"].get(path, {}))
        if generated["paths"].get(path, {}).get(method) != committed["paths"].get(path, {}).get(method)
    )
    assert generated == committed, (
        f"the API contract changed ({changed or 'components'}); if on purpose, regenerate it with "
        "`python -m service.openapi > openapi.json` and review the diff"
    )


def test_every_error_is_a_problem_and_every_answer_is_typed() -> None:
    schema = _generated()
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "500" in responses, (method, path)
            if path.startswith("/v1/"):
                assert "401" in responses, (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    for path, method, model in [
        ("/v1/predict", "post", "Prediction"),
        ("/v1/predict/view", "post", "PredictionView"),
        ("/v1/models", "get", "ServedModels"),
        ("/v1/jobs", "post", "JobStatus"),
        ("/v1/jobs", "get", "JobList"),
        ("/healthz", "get", "Alive"),
    ]:
        ok = schema["paths"][path][method]["responses"]["200" if method == "get" or path != "/v1/jobs" else "202"]
        assert ok["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}, path
    prediction = schema["components"]["schemas"]["Prediction"]["properties"]
    assert {"models", "image", "outlier", "reliability", "abnormal", "findings", "timings_ms"} <= set(prediction)
    assert {"/v2/health/live", "/v2/health/ready", "/v1/predict/view", "/v1/jobs"} <= set(schema["paths"])
