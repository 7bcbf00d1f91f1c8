"""The scoring stage: every metric, AUILC and tau choice as a pure function of stored predictions.

Why: predictions are the contract between the model side and the scoring side. A run stores
its raw per-rate scores (and, for counterfactual models, the counterfactual and validation
scores); this module turns them into metrics with the rules of `mer_bench.metrics`, so the
runner and `mer-bench report` share one scorer and adding a metric never means retraining.

`metric_parts` exposes, per metric, the per-sample (truth, prediction, mask) behind it, so
`mer_bench.results.stats` can re-weight test samples (bootstrap) without a second copy of the
rules; `weighted_metric` with unit weights equals the scorer (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mer_bench.errors import UserError
from mer_bench.metrics import (
    TAU_GRID,
    auilc,
    classification_metrics,
    debias,
    oracle_tau_metrics,
    regression_metrics,
    select_tau,
)

Preds = Mapping[str, np.ndarray]


@dataclass
class Scored:
    """One run scored: metrics per grid label, AUILC per metric (numeric grids), how tau was
    chosen, and the final test scores per label (debiased at the chosen tau, when fair)."""

    metrics: dict[str, dict[str, float]]
    auilc: dict[str, float]
    tau_info: dict[str, Any]
    final: dict[str, np.ndarray] = field(default_factory=dict)


def metrics_of(output: str, task: str, scores: np.ndarray, preds: Preds) -> dict[str, float]:
    """Every metric of one prediction set, through the scorer path of the model's output."""
    if output == "regression":
        return regression_metrics(np.asarray(scores).reshape(-1), preds["y_reg"])
    if task == "binary":
        return classification_metrics(scores, preds["labels"])
    return classification_metrics(None, None, logits7=scores, labels7=preds["labels"])


def is_counterfactual(preds: Preds, grid: Sequence[str]) -> bool:
    return f"cf_scores@{grid[0]}" in preds


def numeric_grid(grid: Sequence[str]) -> list[float] | None:
    """The rates of a numeric grid (None for SMM patterns or a single point)."""
    try:
        xs = [float(g) for g in grid]
    except ValueError:
        return None
    return xs if len(xs) > 1 else None


def fair_tau(preds: Preds, grid: Sequence[str], task: str,
             strengths: Sequence[float] = TAU_GRID) -> float:
    """The fair protocol's one tau per run (on the model's strength grid), chosen on the stored
    validation predictions."""
    missing = [g for g in grid if f"valid_scores@{g}" not in preds] + (
        [] if "valid_labels" in preds else ["labels"]
    )
    if missing:
        raise UserError(f"stored predictions lack validation scores for {', '.join(missing)}")
    tau, _ = select_tau(
        [preds[f"valid_scores@{g}"] for g in grid],
        [preds[f"valid_cf_scores@{g}"] for g in grid],
        [preds["valid_labels"] for _ in grid],
        task,
        grid=strengths,
    )
    return float(tau)


def score_predictions(
    preds: Preds, *, output: str, task: str, protocol: str, grid: Sequence[str],
    strengths: Sequence[float] = TAU_GRID, strength_name: str = "tau",
) -> Scored:
    """Score stored predictions: tau on validation (fair) or per metric and point on test
    labels (paper, an oracle), then every metric per grid point and AUILC over numeric grids.
    `strengths`/`strength_name` are the model's correction grid (CIDer's tau, CLUE's alpha)."""
    metrics: dict[str, dict[str, float]] = {}
    final: dict[str, np.ndarray] = {}
    cf = is_counterfactual(preds, grid)
    tau_info: dict[str, Any] = {"counterfactual": cf}
    strengths = tuple(float(g) for g in strengths)
    if cf:
        tau_info.update(strength=strength_name, grid=list(strengths))
    if cf and protocol == "fair":
        tau = fair_tau(preds, grid, task, strengths)
        tau_info.update(tau=tau, chosen_on="valid", rule="max mean headline over grid")
        for g in grid:
            final[g] = debias(preds[f"scores@{g}"], preds[f"cf_scores@{g}"], tau)
            metrics[g] = metrics_of(output, task, final[g], preds)
    elif cf:
        taus = {}
        for g in grid:
            metrics[g], taus[g] = oracle_tau_metrics(
                preds[f"scores@{g}"], preds[f"cf_scores@{g}"], preds["labels"], task,
                grid=strengths,
            )
        tau_info.update(tau=taus, chosen_on="test (oracle, per metric and point)")
    else:
        for g in grid:
            final[g] = np.asarray(preds[f"scores@{g}"])
            metrics[g] = metrics_of(output, task, final[g], preds)
    return Scored(metrics, grid_auilc(grid, metrics), tau_info, final)


def grid_auilc(grid: Sequence[str], metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    xs = numeric_grid(grid)
    if xs is None:
        return {}
    return {m: float(auilc(xs, [metrics[g][m] for g in grid])) for m in metrics[grid[0]]}


def scores_for_metric(scored: Scored, preds: Preds, grid_label: str, metric: str, task: str
                      ) -> np.ndarray:
    """The test scores behind one metric at one point: the final scores, or (oracle tau) the
    scores debiased at that metric's own tau."""
    if grid_label in scored.final:
        return scored.final[grid_label]
    tau = scored.tau_info["tau"][grid_label][metric]
    return debias(preds[f"scores@{grid_label}"], preds[f"cf_scores@{grid_label}"], tau)


# ----------------------------------------------------------------------------- per-sample parts
@dataclass(frozen=True)
class Parts:
    """What one metric is computed from, per test sample: `kind` is acc, f1, mae or corr."""

    kind: str
    truth: np.ndarray
    pred: np.ndarray
    mask: np.ndarray


def _cls_parts(task: str, scores: np.ndarray, labels: np.ndarray, metric: str) -> Parts:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    every = np.ones(len(y), dtype=bool)
    kind = "acc" if "acc" in metric.lower() else "f1"
    if task == "seven" and metric in ("Mult_acc_7", "F1_score_7"):
        return Parts(kind, y, s.argmax(1), every)
    if metric.startswith("Has0"):
        return Parts(kind, (y >= 1).astype(np.int64), s[:, [0, 2]].argmax(1), every)
    if metric.startswith("Non0"):
        return Parts(kind, y, s.argmax(1), y != 1)
    if metric in ("Acc_3", "F1_score_3"):
        return Parts(kind, y, s.argmax(1), every)
    raise UserError(f"metric {metric!r} does not apply to a {task} classifier")


def _reg_parts(scores: np.ndarray, y: np.ndarray, metric: str) -> Parts:
    p = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    every = np.ones(len(y), dtype=bool)
    kind = "acc" if "acc" in metric.lower() else "f1"
    if metric.startswith("Has0"):
        return Parts(kind, (y >= 0).astype(np.int64), (p >= 0).astype(np.int64), every)
    if metric.startswith("Non0"):
        return Parts(kind, (y > 0).astype(np.int64), (p > 0).astype(np.int64), y != 0)
    if metric in ("Mult_acc_5", "Mult_acc_7"):
        c = 2 if metric == "Mult_acc_5" else 3
        return Parts("acc", np.round(np.clip(y, -c, c)), np.round(np.clip(p, -c, c)), every)
    if metric == "MAE":
        return Parts("mae", y, p, every)
    if metric == "Corr":
        return Parts("corr", y, p, every)
    raise UserError(f"metric {metric!r} does not apply to a regression model")


def metric_parts(output: str, task: str, scores: np.ndarray, preds: Preds, metric: str) -> Parts:
    """The per-sample parts of `metric` (same rules as `mer_bench.metrics`)."""
    if output == "regression":
        return _reg_parts(scores, preds["y_reg"], metric)
    return _cls_parts(task, scores, preds["labels"], metric)


def weighted_metric(parts: Parts, weights: np.ndarray) -> np.ndarray:
    """The metric under per-sample weights (B, N) (bootstrap counts); one value per row.
    Unit weights give the scorer's value."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64)) * parts.mask[None, :]
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if parts.kind == "acc":
            return (w @ (parts.truth == parts.pred).astype(np.float64)) / total
        if parts.kind == "mae":
            return (w @ np.abs(parts.pred - parts.truth)) / total
        if parts.kind == "corr":
            return _weighted_corr(parts.pred, parts.truth, w, total)
        return _weighted_f1(parts.truth, parts.pred, w, total)


def _weighted_f1(t: np.ndarray, p: np.ndarray, w: np.ndarray, total: np.ndarray) -> np.ndarray:
    out = np.zeros(w.shape[0])
    for c in np.union1d(t, p):
        tc, pc = (t == c).astype(np.float64), (p == c).astype(np.float64)
        tp, support, predicted = w @ (tc * pc), w @ tc, w @ pc
        denom = support + predicted
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
        out += f1 * support
    return out / total


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray, total: np.ndarray) -> np.ndarray:
    ma, mb = (w @ a) / total, (w @ b) / total
    cov = (w @ (a * b)) / total - ma * mb
    va = np.maximum((w @ (a * a)) / total - ma * ma, 0.0)
    vb = np.maximum((w @ (b * b)) / total - mb * mb, 0.0)
    denom = np.sqrt(va * vb)
    return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 1e-12)
