"""`mer-bench compare`: paired tests between two models of one store, or two stores cell by cell.

Why: every model sees identical masks and test samples, so differences are paired: the same
bootstrap resamples (and seed draws) for both sides give an interval and a p-value for the
difference, and a per-sample test (McNemar's exact test with one seed) backs each per-rate
accuracy difference. Everything is computed from stored predictions.
"""

from __future__ import annotations

import numpy as np
from tabulate import tabulate

from mer_bench.errors import UserError
from mer_bench.metrics import HEADLINE
from mer_bench.results import evidence as E
from mer_bench.results import stats
from mer_bench.scoring import numeric_grid


def _x(v: float, signed: bool = False) -> str:
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _find(ev: E.Evidence, name: str, scenario: str, protocol: str) -> dict[tuple, list]:
    """Cells of model `name` (a label, or a model with a single configuration) per
    (dataset, variant, task)."""
    out: dict[tuple, list] = {}
    for (proto, dataset, variant, task, sc, label), runs in ev.cells.items():
        if sc == scenario and proto == protocol and name in (label, label.split("@")[0]):
            if (dataset, variant, task) in out:
                raise UserError(f"{name} has several configurations on {scenario}; name one as "
                                "model@hash (see `mer-bench report`)")
            out[(dataset, variant, task)] = runs
    return out


def _sample_test(a: list, b: list, metric: str, g: str) -> tuple[int, int, float] | None:
    """The per-sample paired test (`stats.paired_sample_test`) over the seeds both sides have."""
    by_seed = {r.rec["seed"]: r for r in b}
    ca, cb = [], []
    for run in a:
        other = by_seed.get(run.rec["seed"])
        if other is None:
            continue
        x, y = run.correct(metric, g), other.correct(metric, g)
        if x is None or y is None or x.shape != y.shape:
            return None
        ca.append(x)
        cb.append(y)
    if not ca:
        return None
    return stats.paired_sample_test(np.stack(ca), np.stack(cb))


def _section(a: list, b: list, names: tuple[str, str], where: str, metric: str) -> str:
    lines = [f"{names[0]} vs {names[1]} on {where}, metric {metric} (x100, difference "
             f"{names[0]} - {names[1]})",
             f"seeds {names[0]}: {[r.rec['seed'] for r in a]}; {names[1]}: "
             f"{[r.rec['seed'] for r in b]}; bootstrap resamples {a[0].weights.shape[0]}"]
    qa, qb = E.auilc_of(a, metric), E.auilc_of(b, metric)
    if qa is not None and qb is not None:
        d, lo, hi, p, same = E.paired(qa, qb)
        lines.append(f"AUILC: {_x(qa.summary().mean)} vs {_x(qb.summary().mean)}; difference "
                     f"{_x(d, True)} [{_x(lo, True)}, {_x(hi, True)}], paired-bootstrap p = "
                     f"{p:.4f}" + ("" if same else " (seeds or test sets differ: unpaired)"))
    rows = []
    for g in a[0].grid:
        if g not in b[0].grid:
            continue
        pa, pb = E.at_point(a, metric, g), E.at_point(b, metric, g)
        d, lo, hi, p, _ = E.paired(pa, pb)
        mc = _sample_test(a, b, metric, g)
        rows.append([g, _x(pa.summary().mean), _x(pb.summary().mean),
                     f"{_x(d, True)} [{_x(lo, True)}, {_x(hi, True)}]", f"{p:.4f}",
                     "-" if mc is None else f"{mc[0]}/{mc[1]}",
                     "-" if mc is None else f"{mc[2]:.4f}"])
    lines.append(tabulate(rows, headers=["rate", names[0], names[1], "difference [95%]",
                                         "bootstrap p", "b/c", "sample p"],
                            disable_numparse=True))
    lines.append("b/c: test samples where the first (second) model is right on more of the "
                 "shared seeds; sample p: McNemar's exact test on them (one seed) or a sign-flip "
                 "test on each sample's seed-mean difference (several seeds: the samples, not "
                 "their repeats over seeds, are the units)")
    return "\n".join(lines)


def compare_models(results: str, models: list[str], scenario: str, metric: str | None = None,
                   protocol: str = "fair", n_boot: int = stats.N_BOOT) -> str:
    """Paired comparison of two models of one store on one scenario, per (dataset, variant,
    task) where both were run."""
    if len(models) != 2:
        raise UserError("--models needs exactly two names, e.g. --models cider,mult")
    ev = E.Evidence(results, n_boot)
    found = [_find(ev, m, scenario, protocol) for m in models]
    for m, f in zip(models, found):
        if not f:
            have = sorted({k[5] for k in ev.cells if k[4] == scenario and k[0] == protocol})
            raise UserError(f"no {protocol} runs of {m} on {scenario} in {results}; stored: "
                            + (", ".join(have) or "none"))
    parts = []
    for where in sorted(set(found[0]) & set(found[1])):
        m = metric or HEADLINE[where[2]]
        parts.append(_section(found[0][where], found[1][where], (models[0], models[1]),
                              f"{scenario} ({where[0]} {where[1]}, {where[2]}, {protocol})", m))
    if not parts:
        raise UserError(f"{models[0]} and {models[1]} share no dataset/variant/task on {scenario}")
    return "\n\n".join(parts)


def _summary_quantity(runs: list, metric: str) -> tuple[E.Quantity, str]:
    """AUILC on numeric grids, else the mean over the grid's patterns."""
    q = E.auilc_of(runs, metric)
    if q is not None:
        return q, "AUILC"
    return E.quantity(runs, metric, lambda run, p, b: (float(np.mean(p)), b.mean(axis=1))), \
        "mean over patterns"


def compare_stores(mine: str, against: str, models: list[str] | None = None,
                   scenario: str | None = None, metric: str | None = None,
                   n_boot: int = stats.N_BOOT) -> str:
    """Every cell of `mine` against the same cell (same protocol, data, task, scenario and test
    samples) of each model in `against` (or only `models`); Holm over all rows."""
    ev_m, ev_a = E.Evidence(mine, n_boot), E.Evidence(against, n_boot)
    rows, pvals, skipped = [], [], 0
    for key, runs in sorted(ev_m.cells.items()):
        if scenario is not None and key[4] != scenario:
            continue
        m = metric or HEADLINE[key[3]]
        for key2, theirs in sorted(ev_a.cells.items()):
            if key2[:5] != key[:5] or (models and key2[5].split("@")[0] not in models):
                continue
            if E.ids_key(runs[0].preds["ids"]) != E.ids_key(theirs[0].preds["ids"]):
                skipped += 1
                continue
            qa, what = _summary_quantity(runs, m)
            qb, _ = _summary_quantity(theirs, m)
            d, lo, hi, p, same = E.paired(qa, qb)
            pvals.append(p)
            rows.append([key[4], f"{key[1]} {key[2]} {key[3]} {key[0]}", key[5], key2[5], what,
                         m, _x(qa.summary().mean), _x(qb.summary().mean),
                         f"{_x(d, True)} [{_x(lo, True)}, {_x(hi, True)}]", f"{p:.4f}",
                         "yes" if same else "no"])
    if not rows:
        raise UserError(f"no cell of {mine} matches a cell of {against} on the same test samples")
    for row, adj in zip(rows, stats.holm(pvals)):
        row.append(f"{adj:.4f}")
    out = tabulate(rows, headers=["scenario", "data/task/protocol", "mine", "against", "over",
                                  "metric", "mine x100", "against x100", "difference [95%]",
                                  "p", "paired", "Holm p"], disable_numparse=True)
    note = f"\n{skipped} cell pair(s) skipped: different test samples" if skipped else ""
    return out + note
