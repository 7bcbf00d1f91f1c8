"""The one scorer: every metric rule written once, for classifiers (CIDer) and regressors (MMSA).

Why: the peers disagree (MMSA's own classification path groups neutral with negative, its Non0
can never match a positive); here each name has exactly one documented rule, and the two input
paths are never mixed silently. Values are fractions, unrounded; tables may show x100.

Classification path (`classification_metrics`, 3-way head for the binary task, labels
0 neg / 1 neu / 2 pos):
  Has0_acc_2, Has0_F1_score  truth = negative vs non-negative (neutral counts with positive);
                             prediction = argmax over the [neg, pos] columns only.
  Non0_acc_2, Non0_F1_score  samples with a neutral truth are dropped; prediction = argmax over
                             all 3 columns, so a neutral prediction is always an error.
  Acc_3, F1_score_3          3-way argmax.
  Mult_acc_7, F1_score_7     7-way argmax against round_half_even(clip(y, -3, 3)) + 3.
Regression path (`regression_metrics`, scores p and labels y in [-3, 3]):
  Has0_acc_2, Has0_F1_score  y >= 0 vs p >= 0.
  Non0_acc_2, Non0_F1_score  samples with y == 0 dropped; y > 0 vs p > 0.
  Mult_acc_5 / Mult_acc_7    clip both to [-2, 2] / [-3, 3], round half to even, exact match.
  MAE, Corr                  unclipped mean absolute error and Pearson r (0 if constant).
F1 is always sklearn's weighted F1 (`f1_score(average='weighted')`): classes = union of true
and predicted labels, each class's F1 weighted by its true support, 0 where undefined.
A metric over an empty subset (e.g. Non0 when every truth is neutral) is NaN.

Counterfactual scoring (CIDer): `debias(logp, logp_cf, tau) = logp - tau * logp_cf` with tau in
TAU_GRID = 0.0, 0.1, ..., 3.0. `select_tau` is the fair protocol (one tau per run, chosen on
validation); `oracle_tau_metrics` is the paper's protocol (each metric's best tau on the labels
it is given, i.e. test labels): an oracle, never to be ranked beside fair results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mer_bench.errors import UserError

HEADLINE = {"binary": "Non0_acc_2", "seven": "Mult_acc_7"}
HIGHER_IS_BETTER: dict[str, bool] = {
    name: True
    for name in (
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "Acc_3",
        "F1_score_3",
        "Mult_acc_5",
        "Mult_acc_7",
        "F1_score_7",
        "Corr",
    )
} | {"MAE": False}

TAU_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(31))


# ----------------------------------------------------------------------------- primitives
def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Exact-match rate; NaN on an empty set."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's `f1_score(y_true, y_pred, average='weighted')` with zero division -> 0.

    Classes are the union of true and predicted labels; class c has
    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (0 when the denominator is 0) and weight
    support_c / N, so a predicted-only class weighs 0 but its false positives still lower the
    recall of the true classes. NaN on an empty set.
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.size == 0:
        return float("nan")
    classes = np.union1d(y_true, y_pred)
    t = y_true[:, None] == classes[None, :]
    p = y_pred[:, None] == classes[None, :]
    tp = (t & p).sum(0)
    support = t.sum(0)
    denom = support + p.sum(0)  # = 2 TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(classes)), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


# ----------------------------------------------------------------------------- classification
def _binary_parts(logits: np.ndarray, y3: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(truth, prediction) pairs behind each binary-task metric."""
    has0_true = (y3 >= 1).astype(np.int64)  # 0 negative, 1 neutral or positive
    has0_pred = logits[:, [0, 2]].argmax(1)  # 0 neg, 1 pos; the neutral column is ignored
    pred3 = logits.argmax(1)
    keep = y3 != 1
    return {
        "Has0": (has0_true, has0_pred),
        "Non0": (y3[keep], pred3[keep]),  # truth in {0, 2}; a predicted 1 is always wrong
        "3": (y3, pred3),
    }


_BINARY_NAMES = {
    "Has0_acc_2": ("Has0", accuracy),
    "Has0_F1_score": ("Has0", weighted_f1),
    "Non0_acc_2": ("Non0", accuracy),
    "Non0_F1_score": ("Non0", weighted_f1),
    "Acc_3": ("3", accuracy),
    "F1_score_3": ("3", weighted_f1),
}
_SEVEN_NAMES = {"Mult_acc_7": accuracy, "F1_score_7": weighted_f1}


def _as_logits(x, k: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != k:
        raise UserError(f"{what} must have shape (N, {k}), got {a.shape}")
    return a


def _as_labels(y, n: int, what: str) -> np.ndarray:
    a = np.asarray(y).astype(np.int64).ravel()
    if a.shape[0] != n:
        raise UserError(f"{what} has {a.shape[0]} entries but the scores have {n} rows")
    return a


def _binary(logits, labels3, names: Sequence[str] | None = None) -> dict[str, float]:
    lg = _as_logits(logits, 3, "binary-task scores")
    y3 = _as_labels(labels3, lg.shape[0], "labels3")
    if y3.size and (y3.min() < 0 or y3.max() > 2):
        raise UserError("labels3 must be in {0 negative, 1 neutral, 2 positive}")
    parts = _binary_parts(lg, y3)
    return {
        n: fn(*parts[part])
        for n, (part, fn) in _BINARY_NAMES.items()
        if names is None or n in names
    }


def _seven(logits7, labels7, names: Sequence[str] | None = None) -> dict[str, float]:
    lg = _as_logits(logits7, 7, "seven-class scores")
    y7 = _as_labels(labels7, lg.shape[0], "labels7")
    pred = lg.argmax(1)
    return {n: fn(y7, pred) for n, fn in _SEVEN_NAMES.items() if names is None or n in names}


def classification_metrics(
    logits: np.ndarray | None,
    labels3: np.ndarray | None,
    logits7: np.ndarray | None = None,
    labels7: np.ndarray | None = None,
) -> dict[str, float]:
    """Classifier metrics (rules in the module docstring). `logits` are (N, 3) scores or
    log-probabilities [neg, neu, pos] for the binary task; pass `logits=None` with only the
    7-way head for the seven task. Returns Has0/Non0 acc and F1, Acc_3, F1_score_3 and, when
    the 7-way head is given, Mult_acc_7 and F1_score_7."""
    if logits is None and logits7 is None:
        raise UserError("classification_metrics needs the 3-way scores, the 7-way scores or both")
    out: dict[str, float] = {}
    if logits is not None:
        if labels3 is None:
            raise UserError("classification_metrics: labels3 is required with 3-way scores")
        out.update(_binary(logits, labels3))
    if logits7 is not None:
        if labels7 is None:
            raise UserError("classification_metrics: labels7 is required with 7-way scores")
        out.update(_seven(logits7, labels7))
    return out


def score_classification(
    task: str, logp: np.ndarray, labels: np.ndarray | None = None, *, y_reg: np.ndarray | None = None
) -> dict[str, float]:
    """Dispatch a classifier's scores by task: `binary` (3-way, labels 0/1/2) or `seven`
    (7-way, labels 0..6). Class labels may instead be derived from regression labels `y_reg`
    (binary: sign of y; seven: round_half_even(clip(y, -3, 3)) + 3)."""
    from mer_bench.data.schema import seven_class, three_class

    if task not in HEADLINE:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(HEADLINE)}")
    if labels is None:
        if y_reg is None:
            raise UserError("score_classification needs class labels or y_reg")
        labels = three_class(y_reg) if task == "binary" else seven_class(y_reg)
    if task == "binary":
        return classification_metrics(logp, labels)
    return classification_metrics(None, None, logits7=logp, labels7=labels)


def _task_metric_fn(task: str, metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """(scores, labels) -> one metric value, computing only that metric."""
    if task == "binary" and metric in _BINARY_NAMES:
        return lambda s, y: _binary(s, y, names=[metric])[metric]
    if task == "seven" and metric in _SEVEN_NAMES:
        return lambda s, y: _seven(s, y, names=[metric])[metric]
    valid = _BINARY_NAMES if task == "binary" else _SEVEN_NAMES
    raise UserError(f"metric {metric!r} does not apply to task {task!r}; choose one of: "
                    + ", ".join(valid))


# ----------------------------------------------------------------------------- regression
def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Regressor metrics with MMSA's definitions (rules in the module docstring)."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise UserError(f"predictions ({p.shape[0]}) and labels ({y.shape[0]}) differ in length")
    nz = y != 0
    out = {
        "Has0_acc_2": accuracy(y >= 0, p >= 0),
        "Has0_F1_score": weighted_f1(y >= 0, p >= 0),
        "Non0_acc_2": accuracy(y[nz] > 0, p[nz] > 0),
        "Non0_F1_score": weighted_f1(y[nz] > 0, p[nz] > 0),
        "Mult_acc_5": accuracy(np.round(np.clip(y, -2, 2)), np.round(np.clip(p, -2, 2))),
        "Mult_acc_7": accuracy(np.round(np.clip(y, -3, 3)), np.round(np.clip(p, -3, 3))),
        "MAE": float(np.mean(np.abs(p - y))) if y.size else float("nan"),
        "Corr": pearson(p, y),
    }
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (np.corrcoef would give NaN), NaN
    on an empty set."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / denom) if denom > 0 else 0.0


# ----------------------------------------------------------------------------- robustness
def auilc(rates: Sequence[float], values: Sequence[float], normalized: bool = False) -> float:
    """Area under the indicator-missing-rate curve: the trapezoid rule over the given grid,
    sum_i (v_i + v_{i+1}) (r_{i+1} - r_i) / 2, in the metric's own units (a fraction for
    accuracies). `normalized=True` divides by the grid span so grids of different extent
    compare. Rates must be strictly increasing, with one value each and at least 2 points."""
    r = np.asarray(rates, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if r.shape != v.shape:
        raise UserError(f"AUILC needs one value per rate, got {r.size} rates and {v.size} values")
    if r.size < 2:
        raise UserError("AUILC needs at least 2 rates")
    if not np.all(np.diff(r) > 0):
        raise UserError(f"AUILC rates must be strictly increasing, got {r.tolist()}")
    area = float(np.sum((v[1:] + v[:-1]) * np.diff(r) / 2.0))
    return area / float(r[-1] - r[0]) if normalized else area


# ----------------------------------------------------------------------------- counterfactual
def _better(value: float, current: float) -> bool:
    """Strictly better by more than float noise (so ties keep the smaller tau); NaN never wins
    over a number, a number always wins over NaN."""
    if np.isnan(value):
        return False
    return bool(np.isnan(current) or value > current + 1e-12)


def debias(logp: np.ndarray, logp_cf: np.ndarray, tau: float) -> np.ndarray:
    """CIDer's counterfactual correction: log p(y | x) - tau * log p(y | x_cf)."""
    return np.asarray(logp, dtype=np.float64) - float(tau) * np.asarray(logp_cf, dtype=np.float64)


def select_tau(
    valid_logp_list: Sequence[np.ndarray],
    valid_logp_cf_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    task: str,
    metric: str | None = None,
    grid: Sequence[float] = TAU_GRID,
) -> tuple[float, dict[float, float]]:
    """The fair protocol: ONE tau per run, chosen on validation only.

    For each tau in `grid` (default TAU_GRID; a model may declare its own, e.g. CLUE's alpha), `metric` (default: the task's headline) is computed on every given
    validation condition (one list entry per condition, e.g. per missing rate) and averaged;
    the tau with the highest mean wins, ties going to the smallest tau (the least correction).
    Returns (tau, {tau: mean metric}).
    """
    n = len(valid_logp_list)
    if n == 0 or n != len(valid_logp_cf_list) or n != len(labels_list):
        raise UserError("select_tau needs equally long, non-empty lists of scores, cf scores, labels")
    fn = _task_metric_fn(task, metric or HEADLINE[task])
    table: dict[float, float] = {}
    grid = sorted(float(g) for g in grid)
    best_tau, best = grid[0], -np.inf
    for tau in grid:
        vals = [fn(debias(s, c, tau), y) for s, c, y in zip(valid_logp_list, valid_logp_cf_list,
                                                             labels_list)]
        table[tau] = float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
        if _better(table[tau], best):
            best_tau, best = tau, table[tau]
    return best_tau, table


def oracle_tau_metrics(
    logp: np.ndarray, logp_cf: np.ndarray, labels: np.ndarray, task: str,
    grid: Sequence[float] = TAU_GRID,
) -> tuple[dict[str, float], dict[str, float]]:
    """ORACLE, the paper's protocol: for each metric separately, its maximum over TAU_GRID
    measured on the labels given (the official code passes test labels), so accuracy and F1 may
    use different taus and the result is never below tau = 0 (`grid` as in `select_tau`). `labels` are 3-way for `binary`,
    7-way for `seven`. Returns (metrics, {metric: its tau}); ties go to the smallest tau."""
    if task not in HEADLINE:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(HEADLINE)}")
    best: dict[str, float] = {}
    taus: dict[str, float] = {}
    for tau in sorted(float(g) for g in grid):
        m = score_classification(task, debias(logp, logp_cf, tau), labels)
        for name, v in m.items():
            if name not in best or _better(v, best[name]):
                best[name], taus[name] = v, tau
    return best, taus
