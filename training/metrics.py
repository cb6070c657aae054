"""Metrics for models: per-label AUROC with a bootstrap CI, masked for missing labels. numpy + scikit-learn."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class LabelMetrics:
    label: str
    auroc: float | None  # None when the split has only one class for this label
    ci_low: float | None
    ci_high: float | None
    positives: int
    negatives: int
    accuracy: float | None = None  # at the operating threshold, when one is given
    sensitivity: float | None = None
    specificity: float | None = None
    threshold: float | None = None
    ece: float | None = None  # expected calibration error of the probabilities scored (10 equal-width bins)
    pooled_over: list[str] | None = None  # set when several sources carry the label: no pooled AUROC, see per source

    def to_dict(self) -> dict:
        return asdict(self)


def _both_classes(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) of the rows whose label is known (not NaN), or None unless both classes are present."""
    known = ~np.isnan(labels)
    y, s = labels[known], scores[known]
    if y.size == 0 or y.min() == y.max():
        return None
    return y, s


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC over the rows whose label is known (not NaN); None when only one class is present."""
    rows = _both_classes(labels, scores)
    return float(roc_auc_score(*rows)) if rows else None


def bootstrap_auroc_ci(
    labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the AUROC (resampling images); None if fewer than 2 valid resamples."""
    known = ~np.isnan(labels)
    y, s = labels[known].astype(np.int64), scores[known]
    if y.size == 0 or y.min() == y.max():
        return None
    rng = np.random.default_rng(seed)
    index = rng.integers(0, y.size, size=(n_boot, y.size))
    values = []
    for rows in index:
        yb = y[rows]
        if yb.min() != yb.max():
            values.append(_fast_auroc(yb, s[rows]))
    if len(values) < 2:
        return None
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def auprc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision (area under the precision-recall curve) over known rows; None with one class."""
    rows = _both_classes(labels, scores)
    return float(average_precision_score(*rows)) if rows else None


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false positive rates, true positive rates) over known rows; None with one class."""
    rows = _both_classes(labels, scores)
    if rows is None:
        return None
    fpr, tpr, _ = roc_curve(*rows)
    return fpr, tpr


@dataclass(frozen=True)
class Calibration:
    ece: float  # expected calibration error: sum over bins of |accuracy - confidence| weighted by bin size
    bin_edges: list[float]
    mean_predicted: list[float | None]  # per bin; None for empty bins
    fraction_positive: list[float | None]
    counts: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Calibration | None:
    """Reliability table and ECE of one label's probabilities (equal-width bins on [0, 1])."""
    known = ~np.isnan(labels)
    y, p = labels[known], probabilities[known]
    if y.size == 0:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    mean_p: list[float | None] = []
    frac: list[float | None] = []
    counts: list[int] = []
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        counts.append(count)
        if count == 0:
            mean_p.append(None)
            frac.append(None)
            continue
        mean_p.append(float(p[in_bin].mean()))
        frac.append(float(y[in_bin].mean()))
        ece += count / y.size * abs(frac[-1] - mean_p[-1])
    return Calibration(float(ece), edges.tolist(), mean_p, frac, counts)


def _fast_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (equal to sklearn's roc_auc_score)."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over tied groups
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    average = (starts + ends + 1) / 2.0  # 1-based mean rank of each group
    ranks[order] = np.repeat(average, ends - starts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def label_metrics(
    label_names: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: dict[str, float] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[LabelMetrics]:
    """Per-label AUROC (+ CI), and accuracy/sensitivity/specificity at the given thresholds. labels (N, K) with NaN."""
    if labels.shape != probabilities.shape:
        raise ValueError(f"expected labels and probabilities of one shape, got {labels.shape}, {probabilities.shape}")
    results = []
    for k, name in enumerate(label_names):
        y, p = labels[:, k], probabilities[:, k]
        known = ~np.isnan(y)
        ci = bootstrap_auroc_ci(y, p, n_boot=n_boot, seed=seed) if n_boot else None
        extra: dict[str, float | None] = {}
        if thresholds and name in thresholds and known.any():
            t = thresholds[name]
            predicted = p[known] >= t
            truth = y[known] == 1
            extra = {
                "threshold": float(t),
                "accuracy": float((predicted == truth).mean()),
                "sensitivity": float(predicted[truth].mean()) if truth.any() else None,
                "specificity": float((~predicted[~truth]).mean()) if (~truth).any() else None,
            }
        results.append(
            LabelMetrics(
                label=name,
                auroc=auroc(y, p),
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
                positives=int((y[known] == 1).sum()),
                negatives=int((y[known] == 0).sum()),
                **extra,
            )
        )
    return results


def per_label_auroc(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """AUROC of each column of (N, K) labels (NaN = missing) against (N, K) scores; None where one class only."""
    if labels.shape != scores.shape:
        raise ValueError(f"expected labels and scores of one shape, got {labels.shape}, {scores.shape}")
    return [auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]


def mean_auroc(values: Iterable[float | None]) -> float | None:
    """Mean of the defined AUROCs (a label whose split has one class has none and is left out); None if none."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def format_metrics(metrics: Sequence[LabelMetrics]) -> str:
    """A fixed-width table for logs and notes."""
    header = f"{'label':<20} {'AUROC':>6} {'95% CI':>15} {'pos':>5} {'neg':>5} {'thr':>6} {'sens':>5} {'spec':>5}"
    lines = [header + f" {'ECE':>5}"]
    for m in metrics:
        auc = f"{m.auroc:.3f}" if m.auroc is not None else "  n/a"
        ci = f"[{m.ci_low:.3f}, {m.ci_high:.3f}]" if m.ci_low is not None else ""
        thr = f"{m.threshold:.3f}" if m.threshold is not None else ""
        sens = f"{m.sensitivity:.2f}" if m.sensitivity is not None else ""
        spec = f"{m.specificity:.2f}" if m.specificity is not None else ""
        ece = f"{m.ece:.3f}" if m.ece is not None else ""
        row = f"{m.label:<20} {auc:>6} {ci:>15} {m.positives:>5} {m.negatives:>5} {thr:>6} {sens:>5} {spec:>5}"
        lines.append(f"{row} {ece:>5}" + (f"  (per source: {', '.join(m.pooled_over)})" if m.pooled_over else ""))
    return "\n".join(lines)


def carriers(labels: np.ndarray, origins: np.ndarray) -> list[list[str]]:
    """Per label column of (N, K) labels, the origins (sources) with at least one known value, in first-seen order."""
    order = list(dict.fromkeys(origins.tolist()))
    return [[o for o in order if (~np.isnan(labels[origins == o, k])).any()] for k in range(labels.shape[1])]


def per_source_metrics(
    label_names: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    origins: np.ndarray,
    thresholds: dict[str, float] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[LabelMetrics], dict[str, dict]]:
    """Honest metrics of a split that may merge sources: (pooled table, {source: its own table}).

    A pooled AUROC over sources rewards telling the sources apart (adult NIH films vs paediatric PneumoniaMNIST
    films), so a label that several sources carry gets no pooled AUROC (`pooled_over` names them) and is reported per
    source only. Each row also carries the ECE of the probabilities. With one source the per-source dict is empty."""
    table = _with_ece(label_metrics(label_names, labels, probabilities, thresholds, n_boot=n_boot, seed=seed),
                      labels, probabilities)  # fmt: skip
    sources = list(dict.fromkeys(origins.tolist()))
    if len(sources) < 2:
        return table, {}
    for k, carried_by in enumerate(carriers(labels, origins)):
        if len(carried_by) > 1:
            table[k] = replace(table[k], auroc=None, ci_low=None, ci_high=None, pooled_over=carried_by)
    per_source = {}
    for source in sources:
        rows = origins == source
        own = label_metrics(label_names, labels[rows], probabilities[rows], thresholds, n_boot=n_boot, seed=seed)
        own = _with_ece(own, labels[rows], probabilities[rows])
        carried = [m for m in own if m.positives + m.negatives > 0]
        per_source[source] = {
            "images": int(rows.sum()),
            "mean_auroc": mean_auroc(m.auroc for m in carried),
            "labels": [m.to_dict() for m in carried],
        }
    return table, per_source


def ece_per_label(label_names: Sequence[str], labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """Expected calibration error of each label's probabilities (None where no label is known)."""
    tables = (calibration(labels[:, k], probabilities[:, k]) for k in range(len(label_names)))
    return {name: None if table is None else table.ece for name, table in zip(label_names, tables, strict=True)}


def _with_ece(table: list[LabelMetrics], labels: np.ndarray, probabilities: np.ndarray) -> list[LabelMetrics]:
    eces = ece_per_label([row.label for row in table], labels, probabilities)
    return [replace(row, ece=eces[row.label]) for row in table]
