"""Per-key rate limits: a token bucket per key; an empty one answers 429 with Retry-After, other keys unaffected."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import ProblemError
from service.rate_limit import RateLimiter
from service.security import new_key
from tests.service.conftest import service_settings


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_minute=30, burst=3)  # a token every 2 s
    for _ in range(3):
        limiter.take("a", now=100.0)
    with pytest.raises(ProblemError) as refused:
        limiter.take("a", now=100.5)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "2"
    limiter.take("b", now=100.5)  # another key has its own bucket
    limiter.take("a", now=102.1)  # one token back after 2 s
    with pytest.raises(ProblemError):
        limiter.take("a", now=102.2)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        RateLimiter(rate_per_minute=0, burst=1)


def test_a_key_over_its_limit_gets_429_with_retry_after() -> None:
    (first, first_entry), (second, second_entry) = new_key("user"), new_key("user")
    settings = service_settings(api_keys=[first_entry, second_entry], rate_limit_per_minute=6, rate_limit_burst=2)
    with TestClient(create_app(settings)) as client:
        answers = [client.get("/v1/models", headers={"X-API-Key": first}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[-1]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "rate_limited" and int(refused.headers["Retry-After"]) in range(1, 11)
        assert client.get("/v1/models", headers={"X-API-Key": second}).status_code == 200
        assert client.get("/readyz").status_code == 200  # probes are not rate limited
