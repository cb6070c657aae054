"""Per-key rate limits: a token bucket per API key id (per client address when authentication is off).

`rate_per_minute` tokens flow in evenly, up to `burst`; each /v1 request takes one. An empty bucket answers 429
with Retry-After: the whole seconds until the next token. Buckets live in the process (each worker process and
replica counts for itself, so a deployment's limit is per process: state it with the number of processes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from service.errors import ProblemError

MAX_BUCKETS = 100_000  # idle full buckets are forgotten past this, so many keys or addresses cannot grow memory


@dataclass
class RateLimiter:
    rate_per_minute: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # who -> (tokens, at)

    def __post_init__(self) -> None:
        if self.rate_per_minute <= 0 or self.burst < 1:
            raise ValueError(f"expected a rate > 0 and a burst >= 1, got {self.rate_per_minute}/min, {self.burst}")

    def take(self, who: str, now: float | None = None) -> None:
        """One token for `who`, or a 429 ProblemError saying when to come back."""
        now = time.monotonic() if now is None else now
        per_second = self.rate_per_minute / 60.0
        tokens, at = self._buckets.get(who, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * per_second)
        if tokens < 1.0:
            self._buckets[who] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / per_second)
            raise ProblemError(
                429,
                "rate_limited",
                f"expected at most {self.rate_per_minute:g} requests per minute (bursts of {self.burst}) for this "
                f"key; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        if len(self._buckets) >= MAX_BUCKETS and who not in self._buckets:
            self._forget_idle(now, per_second)
        self._buckets[who] = (tokens - 1.0, now)

    def _forget_idle(self, now: float, per_second: float) -> None:
        full = self.burst
        refilled = [who for who, (tokens, at) in self._buckets.items() if tokens + (now - at) * per_second >= full]
        for who in refilled or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[who]
