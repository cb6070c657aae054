"""FastAPI dependencies shared by the routers: settings, the model manager, the decode pool, API-key scopes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, UploadFile
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.errors import ProblemError
from service.rate_limit import RateLimiter
from service.security import KeyRing, Scope, hash_key, presented_key
from service.state import ModelManager

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (a sha256 prefix, never the key) and scope; anonymous admin when auth is off."""

    id: str
    scope: Scope

    def may_see(self, owner: str) -> bool:
        return self.scope == "admin" or self.id == owner


async def get_app_settings(request: Request) -> Settings:  # async: sync deps hop to a thread
    return request.app.state.settings


async def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]


def _require(needed: Scope):
    async def check(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
        x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = request.state.principal = _authenticate(request, needed, authorization, x_api_key)
        limiter: RateLimiter | None = request.app.state.rate_limiter
        if limiter is not None:
            client = request.client.host if request.client else "unknown"
            limiter.take(principal.id if principal.id != ANONYMOUS else f"{ANONYMOUS}@{client}")
        return principal

    return check


def _authenticate(request: Request, needed: Scope, authorization: str | None, x_api_key: str | None) -> Principal:
    ring: KeyRing = request.app.state.keyring
    if not ring.enabled:
        return Principal(ANONYMOUS, "admin")
    key = presented_key(authorization, x_api_key)
    if key is None:
        raise ProblemError(
            401,
            "missing_api_key",
            "expected an API key in 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scope = ring.scope_of(key)
    if scope is None:
        raise ProblemError(401, "invalid_api_key", "the API key is not known", headers={"WWW-Authenticate": "Bearer"})
    if needed == "admin" and scope != "admin":
        raise ProblemError(403, "forbidden", "this endpoint needs an admin key; the key presented is a user key")
    return Principal("key-" + hash_key(key)[:16], scope)


UserDep = Depends(_require("user"))
AdminDep = Depends(_require("admin"))
PrincipalDep = Annotated[Principal, UserDep]


@asynccontextmanager
async def multipart_form(request: Request) -> AsyncIterator[FormData]:
    """The request's multipart form (one file, a few fields); a body the parser rejects is a 400 saying why."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except StarletteHTTPException as error:
        raise ProblemError(
            400,
            "invalid_multipart",
            f"expected a multipart/form-data body with one file field 'file'; the parser said: {error.detail}",
        ) from error
    try:
        yield form
    finally:
        await form.close()  # the spooled upload files


def form_file(form: FormData) -> UploadFile:
    """The multipart field `file` of an upload (predict and jobs alike); 422 when it is missing or not a file."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ProblemError(
            422, "missing_file", f"expected a multipart file field named 'file', got fields {sorted(form)}"
        )
    return upload
