"""Structured JSON logs that never carry patient identifiers.

The service logs only what it computes (request ids, routes, status codes, timings, image facts such as format,
modality and size). pydicom, however, can quote raw header values in its warnings and log records when a file is
malformed (a wrong length swallowing PatientName, an invalid VR value). `quiet_pydicom` stops that at the source:
validation messages off, pydicom's logger silenced, its warnings ignored.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def quiet_pydicom() -> None:
    """Keep pydicom from echoing header values (possibly PHI) into warnings or logs."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.setLevel(logging.CRITICAL + 1)
    pydicom_log.propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    warnings.filterwarnings("ignore", module=r"pylibjpeg(\..*)?$")


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route the service's and uvicorn's loggers to one stderr handler (JSON lines by default)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    for name in ("service", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # the service writes its own access line with the request id and timings
    logging.getLogger("uvicorn.access").disabled = True
    quiet_pydicom()
