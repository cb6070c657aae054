"""Admission control before an upload is read: a bound on requests being received, decoded or inferred.

The inference queue bounds images waiting for a session, but an upload is read (up to max_upload_bytes) and
decoded before it reaches that queue. When decoding is the bottleneck (large compressed DICOMs), requests would
pile up there instead, holding their bodies in memory. This counter refuses them first, before a byte is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import OverloadedError


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"expected an admission limit >= 1, got {limit}")
        self.limit = limit
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:  # no await between the check and the increment: one event loop, no race
            raise OverloadedError(
                f"{self.active} uploads are already being received or scored (limit {self.limit}); retry shortly"
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
