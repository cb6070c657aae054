"""The API contract as OpenAPI: every 4xx/5xx documented as the Problem the service really answers
(application/problem+json), not FastAPI's HTTPValidationError. A test diffs the result against the committed
openapi.json, so a breaking change shows up as a diff in review. Added to what FastAPI sees: the response headers
(WWW-Authenticate, Retry-After, Location), /metrics' text answer, and links from a job to the operations on it."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import Problem, problems

SECURED_PREFIX = "/v1/"
JOB = "/v1/jobs/{job_id}"
JOB_ID = {"job_id": "$response.body#/id"}
FIRST_ITEM = "the first item, scored again for the viewer"
# OpenAPI links: the calls a job's answer leads to, with its id (clients and stateful API testers follow them).
# (source path, method, status) -> {link name: (target path, method, parameters, description)}
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, Any], str]]] = {
    ("/v1/jobs", "post", "202"): {
        "GetJob": (JOB, "get", JOB_ID, "the job's state, counts and ETA"),
        "CancelJob": (JOB, "delete", JOB_ID, "cancel the job"),
        "GetJobResults": (JOB + "/results", "get", JOB_ID, "the job's results so far"),
        "ViewJobFirstItem": (JOB + "/items/{position}/view", "get", {**JOB_ID, "position": 0}, FIRST_ITEM),
    },
    (JOB, "get", "200"): {
        "GetJobResults": (JOB + "/results", "get", JOB_ID, "the job's results so far"),
        "ViewJobFirstItem": (JOB + "/items/{position}/view", "get", {**JOB_ID, "position": 0}, FIRST_ITEM),
        "CancelJob": (JOB, "delete", JOB_ID, "cancel the job"),
    },
}
RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}
HEADERS: dict[str, dict[str, Any]] = {  # components/headers
    "WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}},
    "Retry-After": {**RETRY_AFTER, "required": True},
    "Retry-After-Optional": RETRY_AFTER,  # the overload answers carry it; /readyz's does not
}
# Response headers by status, on every operation that answers it: status -> {header: components/headers name}
STATUS_HEADERS = {
    "401": {"WWW-Authenticate": "WWW-Authenticate"},
    "429": {"Retry-After": "Retry-After"},
    "503": {"Retry-After": "Retry-After-Optional"},
}
# What the routes answer but FastAPI cannot see: (path, method, status) -> response fields to add
ANSWERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/v1/jobs", "post", "202"): {
        "headers": {"Location": {"description": "/v1/jobs/{job_id}", "required": True, "schema": {"type": "string"}}}
    },
    ("/metrics", "get", "200"): {
        "content": {"text/plain": {"schema": {"type": "string", "description": "Prometheus text format 0.0.4"}}}
    },
}


def contract(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["components"]["headers"] = copy.deepcopy(HEADERS)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:  # request validation: answered as a Problem by service.errors
                responses["422"] = problems(422)[422]
            if path.startswith(SECURED_PREFIX):  # keys are checked, and rate limited when XRAY_RATE_LIMIT_PER_MINUTE
                responses.setdefault("401", problems(401)[401])
                responses.setdefault("429", problems(429)[429])
            responses.setdefault("500", problems(500)[500])
            for status, headers in STATUS_HEADERS.items():
                if status in responses:
                    refs = {name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()}
                    responses[status] = {**responses[status], "headers": refs}
    for (path, method, status), fields in ANSWERS.items():
        response = schema["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is not None:
            response.update(copy.deepcopy(fields))
    add_links(schema["paths"])
    return schema


def add_links(paths: dict[str, Any]) -> None:
    """LINKS on the answers that exist (a link to an operation the app lacks is left out)."""
    for (path, method, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, (target, target_method, parameters, description) in links.items():
            if target_method in paths.get(target, {}):
                response.setdefault("links", {})[name] = {
                    "operationRef": "#/paths/" + target.replace("~", "~0").replace("/", "~1") + "/" + target_method,
                    "parameters": dict(parameters),
                    "description": description,
                }


def install_contract(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def main() -> None:
    """`python -m service.openapi > openapi.json`: the contract as this code states it (no models are loaded)."""
    import json

    from service.app import create_app
    from service.config import Settings

    print(json.dumps(contract(create_app(Settings(api_keys=[]))), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
