"""The API contract as OpenAPI: every 4xx/5xx documented as the Problem the service really answers
(application/problem+json), not FastAPI's HTTPValidationError. A test diffs the result against the committed
openapi.json, so a breaking change shows up as a diff in review."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import Problem, problems

SECURED_PREFIX = "/v1/"


def contract(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:  # request validation: answered as a Problem by service.errors
                responses["422"] = problems(422)[422]
            if path.startswith(SECURED_PREFIX):
                responses.setdefault("401", problems(401)[401])
            responses.setdefault("500", problems(500)[500])
    return schema


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
