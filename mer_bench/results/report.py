"""Leaderboards from the store: AUILC, robustness, SMM-dependence and per-rate tables with
intervals, seeds, significance marks and convergence flags.

Why: the report is a pure function of stored predictions, records and the metric rules (no
model, no checkpoint, no stored metric values), so tables can be rebuilt anywhere without
retraining and a new metric needs no retraining; `fair` and `paper` (oracle tau) results live in
separate sections and files and are never ranked together. A model whose complete-data IID
headline interval overlaps the majority-class predictor is flagged "not converged" everywhere
and never marked best. The two text paths (fixed text features vs a text encoder in the loop,
`text_path`) get separate sections (`evidence.board_dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mer_bench.metrics import HEADLINE, HIGHER_IS_BETTER, auilc
from mer_bench.results import evidence as E
from mer_bench.results import stats
from mer_bench.results.store import atomic_write_text
from mer_bench.scenarios import distribution_of

TABLE_METRICS = {
    "binary": ["Non0_acc_2", "Non0_F1_score"],
    "seven": ["Mult_acc_7", "F1_score_7"],
}
PROTOCOL_TITLE = {
    "fair": "fair protocol (selection and tau on validation only)",
    "paper": "paper protocol: ORACLE tau per metric and rate chosen on test labels; not comparable "
    "with fair results",
}


def _rate_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        order = ["L", "A", "V", "LA", "LV", "AV", "LAV"]
        return (1, order.index(label) if label in order else label)


def auilc_rows(df: pd.DataFrame) -> pd.DataFrame:
    """AUILC per (run, metric) recomputed from the stored per-rate values (numeric grids)."""
    out = []
    keys = ["run_id", "model", "dataset", "variant", "task", "scenario", "protocol", "seed", "metric"]
    for key, g in df.groupby(keys, sort=False):
        try:
            xs = [float(r) for r in g["rate"]]
        except ValueError:
            continue
        if len(xs) < 2:
            continue
        order = np.argsort(xs)
        out.append({**dict(zip(keys, key)), "value": auilc(np.asarray(xs)[order],
                                                           g["value"].to_numpy()[order])})
    return pd.DataFrame(out, columns=keys + ["value"])


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    flat.columns = [" ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)
                    for c in flat.columns]
    flat.index.name = "model"
    return flat


def _markdown(table: pd.DataFrame, first: str = "model") -> str:
    flat = _flat(table).fillna("-")
    flat.index.name = first
    return flat.reset_index().to_markdown(index=False, disable_numparse=True)


def _x100(v: float) -> str:
    return f"{100 * v:.2f}"


def fmt_summary(s: E.Summary, n_row: int | None = None, signed: bool = False) -> str:
    """`mean ± std [lo, hi]` x100 (std only with several seeds; n when it differs from the row's)."""
    sign = "+" if signed else ""
    text = f"{100 * s.mean:{sign}.2f}" + (f" ± {100 * s.std:.2f}" if s.n > 1 else "")
    text += f" [{_x100(s.lo)}, {_x100(s.hi)}]"
    return text + (f" (n={s.n})" if n_row is not None and s.n != n_row else "")


def column_marks(qs: dict[str, E.Quantity], higher: bool, excluded: set[str],
                 alpha: float = stats.ALPHA) -> dict[str, str]:
    """Per column: `best` (highest mean among converged models) and `tie` for every model not
    significantly different from it (paired bootstrap p, Holm-corrected over the column)."""
    means = {m: float(np.mean(q.point)) for m, q in qs.items()
             if m not in excluded and np.isfinite(np.mean(q.point))}
    if len(means) < 2:
        return {}
    best = (max if higher else min)(means, key=means.get)
    others = [m for m in means if m != best]
    adj = stats.holm([E.paired(qs[m], qs[best])[3] for m in others])
    marks = {best: "best"}
    marks.update({m: "tie" for m, p in zip(others, adj) if not p < alpha})
    return marks


def _marked(text: str, mark: str) -> str:
    return f"**{text}**" if mark == "best" else (f"{text} ≈" if mark == "tie" else text)


@dataclass
class Group:
    """One (protocol, dataset, variant, task) section of the leaderboard."""

    protocol: str
    dataset: str
    variant: str
    task: str
    cells: dict[tuple[str, str], list]  # (scenario, label) -> runs
    flags: dict[str, dict]  # label -> convergence entry
    long: list[dict]

    @property
    def stem(self) -> str:
        """File-name stem; a text-encoder section (`ds [text name]`) becomes `ds_text-name`."""
        return E.file_part(f"{self.protocol}_{self.dataset}_{self.variant}_{self.task}")

    def name(self, label: str) -> str:
        entry = self.flags.get(label)
        return label + (" (not converged)" if entry is not None and not entry["converged"] else "")

    @property
    def excluded(self) -> set[str]:
        return {m for m, e in self.flags.items() if not e["converged"]}

    def labels(self) -> list[str]:
        return sorted({lab for _, lab in self.cells})

    def scenarios(self) -> list[str]:
        return sorted({sc for sc, _ in self.cells})

    def n_seeds(self, label: str) -> int:
        return max(len(runs) for (sc, lab), runs in self.cells.items() if lab == label)


def _column(g: Group, scenario: str, metric: str, qs: dict[str, E.Quantity], what: str,
            higher: bool = True, signed: bool = False) -> dict[str, str]:
    """Formatted, marked cells of one column; also appends its long-form rows."""
    marks = column_marks(qs, higher, g.excluded)
    out = {}
    for label, q in qs.items():
        s = q.summary()
        text = fmt_summary(s, g.n_seeds(label), signed=signed)
        out[g.name(label)] = _marked(text, marks.get(label, ""))
        g.long.append({"protocol": g.protocol, "dataset": g.dataset, "variant": g.variant,
                       "task": g.task, "scenario": scenario, "model": label, "quantity": what,
                       "metric": metric, "mean": s.mean, "std": s.std, "lo": s.lo, "hi": s.hi,
                       "n": s.n, "mark": marks.get(label, ""),
                       "converged": label not in g.excluded})
    return out


def _auilc_table(g: Group, metrics: list[str]) -> pd.DataFrame:
    cols: dict[tuple[str, str], dict[str, str]] = {}
    for scenario in g.scenarios():
        for metric in metrics:
            qs = {lab: q for (sc, lab), runs in g.cells.items() if sc == scenario
                  for q in [E.auilc_of(runs, metric)] if q is not None}
            if qs:
                cols[(scenario, metric)] = _column(g, scenario, metric, qs, "AUILC",
                                                   HIGHER_IS_BETTER.get(metric, True))
    table = pd.DataFrame(cols)
    if table.empty:
        return table
    table.insert(0, "seeds", [str(g.n_seeds(_bare(n))) for n in table.index])
    return table


def _bare(name: str) -> str:
    return name.removesuffix(" (not converged)")


def _reference(g: Group, scenario: str) -> list | None:
    refs = [runs for (sc, lab), runs in g.cells.items() if sc == scenario
            and lab.split("@")[0] == REFERENCE]
    return refs[0] if len(refs) == 1 else None


def _robustness_table(g: Group, metric: str, convention: str) -> pd.DataFrame:
    cols: dict[tuple[str, str], dict[str, str]] = {}
    for scenario in g.scenarios():
        ref = _reference(g, scenario)
        rel, eff = {}, {}
        for (sc, lab), runs in g.cells.items():
            if sc != scenario:
                continue
            q = E.relative_of(runs, metric, convention)
            if q is not None:
                rel[lab] = q
            q = E.effective_of(runs, ref, metric, convention) if ref is not None else None
            if q is not None:
                eff[lab] = q
        if rel:
            cols[(scenario, "RR")] = _column(g, scenario, metric, rel, f"RR {convention}")
        if eff:
            cols[(scenario, f"ER vs {REFERENCE}")] = _column(g, scenario, metric, eff,
                                                             f"ER {convention}", signed=True)
    return pd.DataFrame(cols)


def _smm_table(g: Group, scenario: str, metric: str) -> pd.DataFrame:
    cols: dict[str, dict[str, str]] = {}
    per: dict[str, dict[str, E.Quantity]] = {}
    for (sc, lab), runs in g.cells.items():
        if sc == scenario:
            for name, q in E.smm_of(runs, metric).items():
                per.setdefault(name, {})[lab] = q
    for name, qs in per.items():
        out = {}
        for lab, q in qs.items():
            s = q.summary()
            out[g.name(lab)] = fmt_summary(s, g.n_seeds(lab), signed=True)
            g.long.append({"protocol": g.protocol, "dataset": g.dataset, "variant": g.variant,
                           "task": g.task, "scenario": scenario, "model": lab,
                           "quantity": f"drop {name}", "metric": metric, "mean": s.mean,
                           "std": s.std, "lo": s.lo, "hi": s.hi, "n": s.n, "mark": "",
                           "converged": lab not in g.excluded})
        cols[name] = out
    return pd.DataFrame(cols)


def _per_rate_table(g: Group, scenario: str, metric: str) -> pd.DataFrame:
    cells = {lab: runs for (sc, lab), runs in g.cells.items() if sc == scenario}
    grid = sorted({p for runs in cells.values() for p in runs[0].grid}, key=_rate_key)
    cols: dict[str, dict[str, str]] = {}
    for point in grid:
        qs = {lab: E.at_point(runs, metric, point) for lab, runs in cells.items()
              if point in runs[0].grid}
        cols[point] = _column(g, scenario, metric, qs, point, HIGHER_IS_BETTER.get(metric, True))
    table = pd.DataFrame(cols)
    first = next(iter(cells.values()))[0]
    if first.rec["task"] in TABLE_METRICS:
        majority = E.majority_metrics(first.preds, g.task)
        if metric in majority:
            table.loc["majority class"] = _x100(majority[metric])
    return table


REFERENCE = "lf_dnn"  # effective robustness is measured against this model's curve


def _group_lines(g: Group, metrics: list[str], convention: str, tables_dir: Path,
                 written: list[Path]) -> list[str]:
    head = HEADLINE[g.task]
    seeds = sorted({r.rec["seed"] for runs in g.cells.values() for r in runs})
    lines = [f"### {g.dataset} ({g.variant}), task `{g.task}`; seeds "
             + ", ".join(map(str, seeds)), ""]
    lines += _convergence_lines(g, head)

    def emit(title: str, table: pd.DataFrame, name: str) -> None:
        if table.empty:
            return
        lines.extend([title, "", _markdown(table), ""])
        p = tables_dir / f"{g.stem}_{name}.csv"
        atomic_write_text(p, _flat(table).to_csv())
        written.append(p)

    emit("AUILC x100 (rows: models; columns: scenario, metric)", _auilc_table(g, metrics), "auilc")
    emit(f"Robustness of {head} x100: RR = relative robustness ({convention}), ER = effective "
         f"robustness against `{REFERENCE}` on the same data and seeds",
         _robustness_table(g, head, convention), "robustness")
    for scenario in g.scenarios():
        if scenario.startswith("smm"):
            emit(f"`{scenario}` per-modality dependence: drop of {head} x100 from LAV when the "
                 "modality is the only one kept / is removed", _smm_table(g, scenario, head),
                 f"{scenario}_dependence")
        for metric in metrics:
            emit(f"`{scenario}` {metric} x100 per rate", _per_rate_table(g, scenario, metric),
                 f"{scenario}_{metric}_per_rate")
    return lines


def _convergence_lines(g: Group, head: str) -> list[str]:
    bad = sorted(m for m, e in g.flags.items() if not e["converged"])
    maj = sorted({_x100(e["majority"]) for e in g.flags.values()})
    lines = [f"Majority-class predictor on the IID test set: {head} {', '.join(maj) or '-'}"
             + _other_majorities(g, head) + "."]
    if bad:
        lines.append("**Not converged** (complete-data IID interval overlaps the majority "
                     "class; never marked best): " + ", ".join(f"`{m}`" for m in bad) + ".")
    return lines + [""]


def _other_majorities(g: Group, head: str) -> str:
    """The majority class of the other test sets (OOD, cross), which AUILC tables sit beside."""
    seen: dict[str, str] = {}
    for (scenario, _), runs in sorted(g.cells.items()):
        dist = distribution_of(scenario)
        if dist == "iid" or dist in seen:
            continue
        majority = E.majority_metrics(runs[0].preds, g.task)
        if head in majority:
            seen[dist] = _x100(majority[head])
    return "".join(f"; on the {d.upper() if d == 'ood' else d} test set {v}" for d, v in seen.items())


def _groups(ev: E.Evidence) -> list[Group]:
    conv = E.convergence(ev)
    groups: dict[tuple, Group] = {}
    for (protocol, dataset, variant, task, scenario, label), runs in ev.cells.items():
        key = (protocol, dataset, variant, task)
        if key not in groups:
            flags = {k[4]: v for k, v in conv.items() if k[:4] == key}
            groups[key] = Group(*key, cells={}, flags=flags, long=[])
        groups[key].cells[(scenario, label)] = runs
    return [groups[k] for k in sorted(groups)]


def write_report(results: str | Path = "results", out: str | Path | None = None,
                 n_boot: int = stats.N_BOOT, convention: str = "trapezoid") -> str:
    """Write `leaderboard.md`, `per_rate.csv`, `auilc.csv`, `cells.csv` and `tables/*.csv`,
    all recomputed from `predictions/` and the run records; return a summary line."""
    if convention not in stats.CONVENTIONS:
        from mer_bench.errors import UserError

        raise UserError(f"unknown robustness convention {convention!r}; choose one of: "
                        + ", ".join(stats.CONVENTIONS))
    ev = E.Evidence(results, n_boot)
    df = ev.table()
    out_dir = Path(out) if out else Path(results)
    tables_dir = out_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "per_rate.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "auilc.csv", auilc_rows(df).to_csv(index=False))
    lines = [
        "# mer-bench leaderboard",
        "",
        "Generated by `mer-bench report`, recomputed from `predictions/` and the run records "
        "alone. Cells are x100: mean ± population std over seeds (std shown with several seeds) "
        f"and [lo, hi], the 95% interval of the mean from a seeded paired bootstrap ({n_boot} "
        "resamples of the test samples, the same for every model, rate and seed; seeds "
        "resampled too); `seeds` is the number of seeds, `(n=k)` marks a cell with another "
        "count. **Bold**: best in its column among converged models; `≈`: not significantly "
        "different from the best (paired bootstrap, Holm-corrected over the column, alpha "
        "0.05). AUILC is the trapezoid over the actual rate grid (a fraction, shown x100). "
        "Classification models (CIDer path) and regression models (MMSA path) share metric "
        "names; see `mer_bench/metrics.py`.",
        "",
    ]
    written: list[Path] = []
    long: list[dict] = []
    for protocol in ("fair", "paper"):
        groups = [g for g in _groups(ev) if g.protocol == protocol]
        if groups:
            lines += [f"## {PROTOCOL_TITLE[protocol]}", ""]
        for g in groups:
            metrics = [m for m in TABLE_METRICS[g.task]
                       if any(m in runs[0].scored.metrics[runs[0].grid[0]]
                              for runs in g.cells.values())]
            lines += _group_lines(g, metrics, convention, tables_dir, written)
            long += g.long
    atomic_write_text(out_dir / "cells.csv", pd.DataFrame(long).to_csv(index=False))
    lines += _runs_lines(ev)
    md = out_dir / "leaderboard.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return (f"wrote {md}, {out_dir / 'per_rate.csv'}, {out_dir / 'auilc.csv'}, "
            f"{out_dir / 'cells.csv'} and {len(written)} tables in {tables_dir}")


def _runs_lines(ev: E.Evidence) -> list[str]:
    lines = ["## Runs", "", "| run id | model | scenario | protocol | seed | tau | train policy "
             "| epochs run | text path | hyper-parameters |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(ev.runs, key=lambda r: r.rec["run_id"]):
        rec = run.rec
        tau = run.scored.tau_info.get("tau", "-")
        tau_s = "oracle" if isinstance(tau, dict) else str(tau)
        lines.append(
            f"| `{rec['run_id']}` | {rec['model']} | {rec['scenario']} | "
            f"{rec.get('protocol', '-')} | {rec['seed']} | {tau_s} | "
            f"{rec.get('train_policy', '-')} | {rec.get('training', {}).get('epochs_run', '-')} | "
            f"{rec.get('text_path', 'fixed-features')} | {rec.get('hparams_source', '-')} |"
        )
    return lines
