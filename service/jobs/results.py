"""A job's results as rows: JSON lines (the full prediction per item) or CSV (a column per label, the outlier
verdict, the problem of items that could not be scored). Shared by `GET /v1/jobs/{id}/results` and `xray score`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

FIXED_COLUMNS = [
    "position",
    "reference",
    "state",
    "error_code",
    "error_detail",
    "abnormal_positive",
    "abnormal_probability",
    "positive_findings",
    "outlier_verdict",
    "outlier_score",
    "reliability",
    "classifier",
]


def jsonl_line(item: dict[str, Any]) -> str:
    row = {key: item.get(key) for key in ("position", "reference", "state", "result", "problem")}
    return json.dumps(row, separators=(",", ":")) + "\n"


def csv_header(labels: list[str]) -> list[str]:
    return FIXED_COLUMNS + [f"p_{label}" for label in labels]


def csv_values(item: dict[str, Any], labels: list[str]) -> list[Any]:
    result, problem = item.get("result"), item.get("problem") or {}
    values: dict[str, Any] = {
        "position": item.get("position"),
        "reference": item["reference"],
        "state": item["state"],
        "error_code": problem.get("code", ""),
        "error_detail": problem.get("detail", ""),
    }
    probabilities: dict[str, float] = {}
    if result:
        rows = [result["abnormal"], *result["findings"]]
        probabilities = {row["label"]: row["probability"] for row in rows}
        classifier = result["models"]["classifier"]
        values.update(
            abnormal_positive=result["abnormal"]["positive"],
            abnormal_probability=result["abnormal"]["probability"],
            positive_findings="|".join(row["label"] for row in result["findings"] if row["positive"]),
            outlier_verdict=result["outlier"]["verdict"],
            outlier_score=result["outlier"]["score"],
            reliability=result["reliability"]["status"],
            classifier=f"{classifier['name']}@{classifier['version']}",
        )
    return [values.get(column, "") for column in FIXED_COLUMNS] + [probabilities.get(label, "") for label in labels]


def csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def stream_rows(rows: Iterable[dict[str, Any]], fmt: str, labels: list[str]) -> Iterator[str]:
    """Rendered lines, header first for CSV, one per item, as the rows arrive."""
    if fmt == "csv":
        yield csv_line(csv_header(labels))
        for row in rows:
            yield csv_line(csv_values(row, labels))
    else:
        for row in rows:
            yield jsonl_line(row)
