"""The store scored again from `predictions/` alone, with bootstrap replicates per run and cell.

Why: tables, tests and figures must follow from stored predictions, the protocol and the
metric rules only (no model, no checkpoint, no stored metric values), and every number needs
its uncertainty. A *cell* is one (protocol, dataset, variant, task, scenario, model label)
over its seeds; `Quantity` objects carry per-seed point values and bootstrap replicates that
`summary` and `paired` turn into `mean ± std [lo, hi]` and paired differences.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from mer_bench.errors import UserError
from mer_bench.metrics import HEADLINE, TAU_GRID
from mer_bench.results import stats
from mer_bench.results.store import TIDY_COLUMNS, Store
from mer_bench.scenarios import distribution_of
from mer_bench.scoring import (
    Scored,
    metric_parts,
    metrics_of,
    numeric_grid,
    score_predictions,
    scores_for_metric,
    weighted_metric,
)

CellKey = tuple[str, str, str, str, str, str]  # protocol, dataset, variant, task, scenario, label


def board_dataset(rec: dict) -> str:
    """The dataset as the board groups it: runs with a text encoder in the loop get their own
    sections (`synth-mosi [text minilm]`), never ranked beside fixed-feature runs."""
    path = rec.get("text_path", "fixed-features")
    if path == "fixed-features":
        return rec["dataset"]
    return f"{rec['dataset']} [text {Path(path).name or path}]"


def file_part(name: str) -> str:
    """A name holding a board dataset, made safe for a file name: a text-encoder section
    (`ds [text name]`) becomes `ds_text-name`, other unsafe characters `-`; plain names are
    unchanged."""
    raw = name.replace(" [text ", "_text-").replace("]", "")
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in raw)


@dataclass
class RunEvidence:
    """One stored run, re-scored, with lazily computed bootstrap replicates per metric."""

    rec: dict
    preds: dict[str, np.ndarray]
    weights: np.ndarray
    label: str = ""
    _curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @cached_property
    def scored(self) -> Scored:
        r = self.rec
        tau = r.get("tau", {})
        return score_predictions(self.preds, output=r["output"], task=r["task"],
                                 protocol=r["protocol"], grid=r["grid"],
                                 strengths=tau.get("grid", TAU_GRID),
                                 strength_name=tau.get("strength", "tau"))

    @property
    def grid(self) -> list[str]:
        return list(self.rec["grid"])

    def parts(self, metric: str, g: str):
        r = self.rec
        scores = scores_for_metric(self.scored, self.preds, g, metric, r["task"])
        return metric_parts(r["output"], r["task"], scores, self.preds, metric)

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(R,) point values and (B, R) bootstrap replicates of `metric` over the grid, all
        grid points under the same resamples."""
        if metric not in self._curves:
            if metric not in self.scored.metrics[self.grid[0]]:
                raise UserError(f"metric {metric!r} is not defined for {self.rec['model']} "
                                f"({self.rec['output']}, {self.rec['task']})")
            point = np.array([self.scored.metrics[g][metric] for g in self.grid])
            boot = np.stack([weighted_metric(self.parts(metric, g), self.weights)
                             for g in self.grid], axis=1)
            self._curves[metric] = (point, boot)
        return self._curves[metric]

    def correct(self, metric: str, g: str) -> np.ndarray | None:
        """Per-sample correctness behind an accuracy (on its subset), for the per-sample paired test."""
        p = self.parts(metric, g)
        if p.kind != "acc":
            return None
        return (p.truth == p.pred)[p.mask]


def majority_metrics(preds: dict[str, np.ndarray], task: str, output: str = "classification"
                     ) -> dict[str, float]:
    """The majority-class predictor of this test set: a constant prediction of its most
    frequent class (binary: of negative/positive among the non-neutral samples), scored by
    the classifier rules."""
    y = np.asarray(preds["labels"]).astype(np.int64)
    k = 3 if task == "binary" else 7
    counts = np.bincount(y, minlength=k)
    if task == "binary":
        counts[1] = -1
    onehot = np.zeros((len(y), k))
    onehot[:, int(np.argmax(counts))] = 1.0
    return metrics_of("classification", task, onehot, preds)


@dataclass
class Summary:
    mean: float
    std: float
    lo: float
    hi: float
    n: int


@dataclass
class Quantity:
    """A scalar per seed: (k,) point values and (k, B) replicates, seeds in sorted order."""

    seeds: list[int]
    point: np.ndarray
    boot: np.ndarray
    ids_key: int

    def replicates(self, draws: np.ndarray | None = None) -> np.ndarray:
        d = stats.seed_draws(len(self.seeds), self.boot.shape[1]) if draws is None else draws
        return stats.boot_mean(self.boot, d)

    def summary(self) -> Summary:
        lo, hi = stats.interval(self.replicates())
        return Summary(float(np.mean(self.point)), float(np.std(self.point)), lo, hi,
                       len(self.seeds))


def paired(a: Quantity, b: Quantity) -> tuple[float, float, float, float, bool]:
    """(difference a - b, lo, hi, p): same test resamples, and the same seed draws when both
    have the same seeds; the last item says whether the pairing was complete."""
    same = a.seeds == b.seeds and a.ids_key == b.ids_key
    n_boot = a.boot.shape[1]
    da = stats.seed_draws(len(a.seeds), n_boot)
    db = da if same else stats.seed_draws(len(b.seeds), n_boot, seed=stats.BOOT_SEED + 1)
    diff = a.replicates(da) - b.replicates(db)
    observed = float(np.mean(a.point) - np.mean(b.point))
    lo, hi = stats.interval(diff)
    return observed, lo, hi, stats.paired_p(diff, observed), same


class Evidence:
    """Every finished run of a store, scored from its predictions, grouped into cells."""

    def __init__(self, root, n_boot: int = stats.N_BOOT) -> None:
        self.store = Store(root)
        self.n_boot = n_boot
        self._weights: dict[int, np.ndarray] = {}
        self.runs = [self._load(rec) for rec in self.store.records()
                     if rec.get("status", "finished") == "finished"]
        if not self.runs:
            raise UserError(f"results store {root} has no finished runs")
        self._label()

    def _load(self, rec: dict) -> RunEvidence:
        path = self.store.predictions_path(rec["run_id"])
        if not path.exists():
            raise UserError(f"run {rec['run_id']} has no predictions file {path}")
        preds = self.store.load_predictions(rec["run_id"])
        key = ids_key(preds["ids"])
        if key not in self._weights:
            self._weights[key] = stats.resample_weights(preds["ids"], self.n_boot)
        return RunEvidence(rec, preds, self._weights[key])

    def _label(self) -> None:
        """Never average configurations: a model run with several config hashes in one
        (dataset, variant, task, protocol, scenario) is labelled model@hash."""
        hashes: dict[tuple, set[str]] = {}
        for run in self.runs:
            hashes.setdefault(self._slot(run), set()).add(run.rec.get("config_hash", ""))
        for run in self.runs:
            many = len(hashes[self._slot(run)]) > 1
            run.label = run.rec["model"] + (f"@{run.rec.get('config_hash', '')}" if many else "")

    @staticmethod
    def _slot(run: RunEvidence) -> tuple:
        r = run.rec
        return (board_dataset(r), r["variant"], r["task"], r["protocol"], r["scenario"],
                r["model"])

    @cached_property
    def cells(self) -> dict[CellKey, list[RunEvidence]]:
        out: dict[CellKey, list[RunEvidence]] = {}
        for run in sorted(self.runs, key=lambda x: x.rec["seed"]):
            r = run.rec
            key = (r["protocol"], board_dataset(r), r["variant"], r["task"], r["scenario"],
                   run.label)
            out.setdefault(key, []).append(run)
        return out

    def table(self) -> pd.DataFrame:
        """Tidy per-rate rows (the store's columns plus the scorer path), recomputed."""
        rows = []
        for run in self.runs:
            r = run.rec
            for g in run.grid:
                for metric, value in run.scored.metrics[g].items():
                    rows.append({"run_id": r["run_id"], "model": run.label,
                                 "dataset": board_dataset(r), "variant": r["variant"],
                                 "task": r["task"], "scenario": r["scenario"],
                                 "protocol": r["protocol"], "seed": r["seed"], "rate": g,
                                 "metric": metric, "value": value, "path": r["output"]})
        return pd.DataFrame(rows, columns=TIDY_COLUMNS + ["path"])


def ids_key(ids: np.ndarray) -> int:
    return zlib.crc32("\n".join(map(str, ids)).encode("utf-8"))


# ----------------------------------------------------------------------------- quantities
def quantity(runs: list[RunEvidence], metric: str,
             fn: Callable[[RunEvidence, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
             ) -> Quantity:
    """Apply `fn(run, point (R,), boot (B, R)) -> (scalar, (B,))` to every seed of a cell."""
    pts, boots = [], []
    for run in runs:
        point, boot = run.curve(metric)
        p, b = fn(run, point, boot)
        pts.append(p)
        boots.append(b)
    return Quantity([run.rec["seed"] for run in runs], np.asarray(pts, dtype=np.float64),
                    np.stack(boots), ids_key(runs[0].preds["ids"]))


def at_point(runs: list[RunEvidence], metric: str, g: str) -> Quantity:
    return quantity(runs, metric, lambda run, p, b: (p[run.grid.index(g)],
                                                     b[:, run.grid.index(g)]))


def auilc_of(runs: list[RunEvidence], metric: str) -> Quantity | None:
    xs = numeric_grid(runs[0].grid)
    if xs is None:
        return None

    def area(run, p, b):
        span = xs[-1] - xs[0]
        return (run.scored.auilc[metric],
                span * stats.relative_robustness(xs, b, "trapezoid"))

    return quantity(runs, metric, area)


def relative_of(runs: list[RunEvidence], metric: str, convention: str) -> Quantity | None:
    xs = numeric_grid(runs[0].grid)
    if xs is None:
        return None
    return quantity(runs, metric, lambda run, p, b: (
        float(stats.relative_robustness(xs, p, convention)),
        stats.relative_robustness(xs, b, convention)))


def effective_of(runs: list[RunEvidence], ref: list[RunEvidence], metric: str,
                 convention: str) -> Quantity | None:
    """Effective robustness against the reference cell on the same data, seed by seed (only
    seeds both cells have; None when they share none or the grids differ)."""
    xs = numeric_grid(runs[0].grid)
    by_seed = {r.rec["seed"]: r for r in ref}
    mine = [r for r in runs if r.rec["seed"] in by_seed and by_seed[r.rec["seed"]].grid == r.grid]
    if xs is None or not mine:
        return None

    def fn(run, p, b):
        rp, rb = by_seed[run.rec["seed"]].curve(metric)
        return (float(stats.effective_robustness(xs, p, rp, convention)),
                stats.effective_robustness(xs, b, rb, convention))

    return quantity(mine, metric, fn)


def smm_of(runs: list[RunEvidence], metric: str) -> dict[str, Quantity]:
    """Per-modality dependence quantities of an SMM cell (see `stats.smm_dependence`)."""
    grid = runs[0].grid
    if "LAV" not in grid:
        return {}
    names = list(stats.smm_dependence({g: np.zeros(1) for g in grid}))
    out = {}
    for name in names:
        def fn(run, p, b, name=name):
            pt = stats.smm_dependence({g: p[i] for i, g in enumerate(run.grid)})[name]
            bt = stats.smm_dependence({g: b[:, i] for i, g in enumerate(run.grid)})[name]
            return float(pt), bt
        out[name] = quantity(runs, metric, fn)
    return out


def complete_label(grid: list[str]) -> str | None:
    """The complete-data grid point: rate 0 or the LAV pattern."""
    if "LAV" in grid:
        return "LAV"
    xs = numeric_grid(grid)
    return grid[0] if xs is not None and xs[0] == 0.0 else None


def convergence(ev: Evidence) -> dict[tuple[str, str, str, str, str], dict]:
    """Per (protocol, dataset, variant, task, label): the complete-data IID headline interval
    (from `rmfm-iid`, else the first IID scenario with a complete point) against the
    majority-class predictor of that test set; `converged` is False when they overlap."""
    out: dict[tuple, dict] = {}
    for key in sorted(ev.cells, key=lambda k: (k[4] != "rmfm-iid", k[4])):
        protocol, dataset, variant, task, scenario, label = key
        group = (protocol, dataset, variant, task, label)
        runs = ev.cells[key]
        g = complete_label(runs[0].grid)
        if group in out or distribution_of(scenario) != "iid" or g is None:
            continue
        head = HEADLINE[task]
        s = at_point(runs, head, g).summary()
        majority = majority_metrics(runs[0].preds, task)[head]
        out[group] = {"scenario": scenario, "summary": s, "majority": majority,
                      "converged": bool(s.lo > majority)}
    return out
