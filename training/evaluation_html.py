"""The HTML page of `xray eval`'s report (index.html): tables of the report's numbers and its plots.

`render_html` takes the report dict that `training.evaluate.main` writes as report.json.
"""

from __future__ import annotations

import html
from typing import Any


def slug(text: str) -> str:
    """A file-name-safe lower-case form of a label."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "label"


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _img(name: str | None, alt: str) -> str:
    return (
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}'
        "</figcaption></figure>"
        if name
        else ""
    )


def render_html(report: dict[str, Any]) -> str:
    """The report as a self-contained HTML page (plots referenced by file name)."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation: {html.escape(report['checkpoint'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Evaluation of {html.escape(report['kind'])}</h1>",
        f"<p>checkpoint <code>{html.escape(report['checkpoint'])}</code>, split <b>{report['split']}</b> "
        f"({report['images_evaluated']} images), data {html.escape(', '.join(report['data']))}. Research use only.</p>",
    ]
    parts += _classifier_parts(report) if report["kind"] == "classifier" else _autoencoder_parts(report)
    parts.append("</body></html>")
    return "\n".join(part for part in parts if part)


def _per_source_parts(per_source: dict[str, Any]) -> list[str]:
    """One table per source when the split merges sources (labels several sources carry have no pooled AUROC)."""
    if not per_source:
        return []
    parts = ["<h2>Per source</h2>"]
    for source, scores in per_source.items():
        parts.append(
            f"<h3>{html.escape(source)} ({scores['images']} images, mean AUROC {format_value(scores['mean_auroc'])})"
            "</h3><table><tr><th>label</th><th>AUROC</th><th>ECE</th><th>pos</th><th>neg</th></tr>"
        )
        parts += [
            f"<tr><td>{html.escape(row['label'])}</td><td>{format_value(row['auroc'])}</td>"
            f"<td>{format_value(row.get('ece'))}</td><td>{row['positives']}</td><td>{row['negatives']}</td></tr>"
            for row in scores["labels"]
        ]
        parts.append("</table>")
    return parts


def _classifier_parts(report: dict[str, Any]) -> list[str]:
    plots = report["plots"]
    parts = [
        "<h2>Per label</h2><table><tr><th>label</th><th>AUROC</th><th>95% CI</th><th>AUPRC</th>"
        "<th>threshold</th><th>sensitivity</th><th>specificity</th><th>ECE</th><th>ECE before calibration</th>"
        "<th>pos</th><th>neg</th>"
        "<th>filter bank AUROC</th></tr>"
    ]
    for row in report["labels"]:
        ci = f"{row['ci_low']:.3f}–{row['ci_high']:.3f}" if row.get("ci_low") is not None else "–"
        parts.append(
            f"<tr><td>{html.escape(row['label'])}</td><td>{format_value(row['auroc'])}</td><td>{ci}</td>"
            f"<td>{format_value(row.get('auprc'))}</td><td>{format_value(row.get('threshold'))}</td>"
            f"<td>{format_value(row.get('sensitivity'))}</td><td>{format_value(row.get('specificity'))}</td>"
            f"<td>{format_value(row.get('ece'))}</td><td>{format_value(row.get('ece_uncalibrated'))}</td>"
            f"<td>{row['positives']}</td><td>{row['negatives']}</td>"
            f"<td>{format_value(row.get('baseline_auroc'))}</td></tr>"
        )
    parts.append(
        "</table><h2>What learning the convolutions buys</h2><table><tr><th>model</th><th>mean AUROC</th></tr>"
    )
    parts += [
        f"<tr><td>{html.escape(row['model'])}</td><td>{format_value(row['mean_auroc'])}</td></tr>"
        for row in report["comparison"]
    ]
    parts.append("</table><h2>ROC curves</h2>")
    parts += [_img(name, f"ROC {label}") for label, name in plots["roc"].items()]
    parts.append(
        "<h2>Calibration</h2>"
        + _img(plots.get("reliability"), "reliability, calibrated (as served)")
        + _img(plots.get("reliability_uncalibrated"), "reliability, the network's raw probabilities")
    )
    parts += _per_source_parts(report.get("per_source") or {})
    parts.append("<h2>Training</h2>" + _img(plots.get("training_curves"), "training curves"))
    parts.append("<h2>Learned first-layer filters</h2>" + _img(plots.get("filters"), "first-layer filters"))
    return parts


def _autoencoder_parts(report: dict[str, Any]) -> list[str]:
    plots = report["plots"]
    parts = ["<h2>Outlier detection</h2><table>"]
    for key in (
        "threshold",
        "chest_flagged_fraction",
        "outlier_images",
        "outlier_auroc",
        "outliers_flagged_fraction",
    ):
        parts.append(f"<tr><td>{key.replace('_', ' ')}</td><td>{format_value(report.get(key))}</td></tr>")
    gate = report.get("gate") or {}
    for name, value in (gate.get("auroc") or {}).items():
        parts.append(f"<tr><td>gate AUROC, {html.escape(name)}</td><td>{format_value(value)}</td></tr>")
    for key in ("chest_gated_fraction", "outliers_gated_fraction"):
        if key in gate:
            parts.append(f"<tr><td>{key.replace('_', ' ')} (combined gate)</td><td>{format_value(gate[key])}</td></tr>")
    parts.append("</table>")
    if report.get("outlier_images_skipped"):
        parts.append(f"<p>not readable: {html.escape(', '.join(report['outlier_images_skipped']))}</p>")
    parts.append(_img(plots.get("outlier_roc"), "outlier ROC") + _img(plots.get("error_histogram"), "errors"))
    parts.append("<h2>Reconstructions</h2>" + _img(plots.get("gallery"), "input / reconstruction / error"))
    parts.append("<h2>Bottleneck codes</h2>" + _img(plots.get("codes"), "bottleneck codes in 2-D"))
    parts.append("<h2>Training</h2>" + _img(plots.get("training_curves"), "training curves"))
    return parts
