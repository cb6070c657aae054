"""Optional API keys. Settings hold only `scope:sha256(key)` entries, so a leaked config leaks no key.

Keys arrive as `Authorization: Bearer KEY` or `X-API-Key: KEY`. With no keys configured, authentication is off
(a development default the startup log states). An admin key may do everything a user key may.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

Scope = Literal["user", "admin"]
SCOPES: tuple[Scope, ...] = ("user", "admin")
KEY_PREFIX = "xray_"


class KeyConfigError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(scope: Scope) -> tuple[str, str]:
    """A fresh random key and the `scope:sha256` entry to put in XRAY_API_KEYS."""
    if scope not in SCOPES:
        raise KeyConfigError(f"expected scope in {SCOPES}, got {scope!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{scope}:{hash_key(key)}"


@dataclass(frozen=True)
class KeyRing:
    entries: tuple[tuple[Scope, str], ...]  # (scope, sha256 hex)

    @classmethod
    def parse(cls, entries: list[str]) -> KeyRing:
        parsed: list[tuple[Scope, str]] = []
        for entry in entries:
            scope, sep, digest = entry.partition(":")
            digest = digest.strip().lower()
            if not sep or scope not in SCOPES or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise KeyConfigError(
                    "expected XRAY_API_KEYS entries of the form 'admin:<sha256 hex>' or 'user:<sha256 hex>' "
                    f"(make one with `xray keys new`), got an entry starting {entry[:12]!r}"
                )
            parsed.append((scope, digest))  # type: ignore[arg-type]
        return cls(tuple(parsed))

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def scope_of(self, key: str) -> Scope | None:
        """The scope of a presented key, or None; compares every entry in constant time."""
        digest = hash_key(key)
        found: Scope | None = None
        for scope, stored in self.entries:
            if hmac.compare_digest(digest, stored) and (found is None or scope == "admin"):
                found = scope
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        kind, _, value = authorization.partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    return None
