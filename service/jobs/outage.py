"""When the job database refuses a runner (restarting, unreachable, disk full): say so once, clearly, and wait.

A runner holding a scored chunk keeps its results in memory and retries the commit with a backoff instead of
dropping them, so a database restart costs no rescoring; the commit is one transaction, so nothing half-written is
ever reported as done. While it waits it claims nothing more: the job pauses, and GET /v1/jobs/{id} says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

log = logging.getLogger("service.jobs.outage")
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)  # then every 5 s
DISK_FULL_MARKERS = ("database or disk is full", "no space left on device", "could not extend file", "disk full")


def retry_delay(attempt: int) -> float:
    return RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]


def describe_database_error(error: BaseException) -> str:
    """A sentence for operators: what is wrong, without the SQL or its parameters."""
    text = str(getattr(error, "orig", None) or error).lower()
    if any(marker in text for marker in DISK_FULL_MARKERS):
        return "the job database's disk is full: results cannot be written; free space and the job resumes"
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "the connection to the job database was lost (restarting?); reconnecting"
    return f"the job database refused a write ({type(getattr(error, 'orig', None) or error).__name__}); retrying"


class DatabaseTrouble:
    """The runner's current database problem, logged once per distinct problem and once when it clears."""

    def __init__(self, runner_id: str, on_change: Callable[[bool], None] | None = None) -> None:
        self.runner_id = runner_id
        self.problem: str | None = None
        self._on_change = on_change  # told True when a problem starts, False when it clears (a metrics gauge)

    def failed(self, error: BaseException) -> None:
        problem = describe_database_error(error)
        if problem != self.problem:
            log.error(problem, extra={"runner": self.runner_id, "error_type": type(error).__name__})
            if self._on_change is not None:
                self._on_change(True)
        self.problem = problem

    def recovered(self) -> None:
        if self.problem is not None:
            log.warning("the job database takes writes again; jobs resume", extra={"runner": self.runner_id})
            if self._on_change is not None:
                self._on_change(False)
        self.problem = None
