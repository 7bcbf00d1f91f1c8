"""Figures from the store (matplotlib, headless): metric-versus-rate curves with 95% interval
bands and the majority-class line, SMM bars with interval whiskers, a 2-D
scatter of joint representations at several rates (the paper's Fig. 8) and, for models with
counterfactual scoring, a per-sample prediction-correction figure (Fig. 9)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mer_bench.results import evidence as E  # noqa: E402
from mer_bench.results.stats import N_BOOT  # noqa: E402
from mer_bench.results.store import Store, keeps_joint  # noqa: E402
from mer_bench.scoring import numeric_grid  # noqa: E402

CURVE_METRICS = {"binary": ["Non0_acc_2", "Non0_F1_score"], "seven": ["Mult_acc_7", "F1_score_7"]}
SMM_ORDER = ["L", "A", "V", "LA", "LV", "AV", "LAV"]


def _save(fig, path: Path, tight: bool = True) -> Path:
    """Write a PNG without a software/date stamp (figures are reproducible) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:  # a colorbar shared by several axes does not go with tight_layout
        fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def model_styles(ev: E.Evidence) -> dict[str, dict]:
    """One style per model label, the same in every figure: ten colours, then the same
    colours dashed with square markers (hatched bars), so a board of 20 models stays legible."""
    colors = plt.get_cmap("tab10").colors
    styles = {}
    for i, label in enumerate(sorted({k[5] for k in ev.cells})):
        second = (i // len(colors)) % 2 == 1
        styles[label] = {"color": colors[i % len(colors)], "ls": "--" if second else "-",
                         "marker": "s" if second else "o", "hatch": "//" if second else None}
    return styles


def _name(label: str, flags: dict, group: tuple) -> str:
    entry = flags.get((*group, label))
    return label + (" (not converged)" if entry is not None and not entry["converged"] else "")


def plot_curves(ev: E.Evidence, out: Path) -> list[Path]:
    """Metric-versus-rate curves per scenario: the across-seed mean, a band for its 95%
    bootstrap interval, and the majority-class predictor of the test set as a dashed line."""
    paths = []
    flags, styles = E.convergence(ev), model_styles(ev)
    for key in sorted({k[:5] for k in ev.cells}):
        protocol, dataset, variant, task, scenario = key
        cells = {k[5]: runs for k, runs in ev.cells.items() if k[:5] == key}
        first = next(iter(cells.values()))[0]
        if numeric_grid(first.grid) is None:
            continue
        for metric in CURVE_METRICS[task]:
            if metric not in first.scored.metrics[first.grid[0]]:
                continue
            fig, ax = plt.subplots(figsize=(7, 4))
            for label, runs in sorted(cells.items()):
                xs, mean, lo, hi = _band(runs, metric)
                st = styles[label]
                ax.plot(xs, 100 * mean, marker=st["marker"], ms=3, color=st["color"], ls=st["ls"],
                        label=_name(label, flags, key[:4]))
                ax.fill_between(xs, 100 * lo, 100 * hi, alpha=0.12, color=st["color"])
            ax.axhline(100 * E.majority_metrics(first.preds, task)[metric], color="k", ls="--",
                       lw=1, label="majority class")
            title = f"{dataset} ({variant}) {scenario}, {task}"
            if protocol == "paper":
                title += " [ORACLE tau]"
            ax.set(xlabel="missing rate", ylabel=f"{metric} x100 (band: 95% interval)",
                   title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
            paths.append(_save(fig, out / f"curve_{protocol}_{E.file_part(dataset)}_{variant}_{task}_{scenario}_{metric}.png"))
    return paths


def _band(runs: list, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rates, mean, lo, hi) of a cell's curve over its seeds."""
    grid = runs[0].grid
    qs = [E.at_point(runs, metric, g).summary() for g in grid]
    return (np.array([float(g) for g in grid]), np.array([q.mean for q in qs]),
            np.array([q.lo for q in qs]), np.array([q.hi for q in qs]))


def plot_smm(ev: E.Evidence, out: Path) -> list[Path]:
    """SMM bars per presence pattern with 95% interval whiskers and the majority line."""
    paths = []
    flags, styles = E.convergence(ev), model_styles(ev)
    for key in sorted({k[:5] for k in ev.cells}):
        protocol, dataset, variant, task, scenario = key
        cells = {k[5]: runs for k, runs in ev.cells.items() if k[:5] == key}
        first = next(iter(cells.values()))[0]
        if numeric_grid(first.grid) is not None or len(first.grid) < 2:
            continue
        metric = CURVE_METRICS[task][0]
        models = sorted(cells)
        fig, ax = plt.subplots(figsize=(8.5, 4))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            pats = [p for p in SMM_ORDER if p in cells[model][0].grid]
            qs = [E.at_point(cells[model], metric, p).summary() for p in pats]
            mean = np.array([q.mean for q in qs])
            err = np.abs(np.array([[q.lo for q in qs], [q.hi for q in qs]]) - mean)
            x = np.array([SMM_ORDER.index(p) for p in pats]) + i * width
            st = styles[model]
            ax.bar(x, 100 * mean, width, yerr=100 * err, color=st["color"], hatch=st["hatch"],
                   edgecolor="white" if st["hatch"] else None, label=_name(model, flags, key[:4]))
        ax.axhline(100 * E.majority_metrics(first.preds, task)[metric], color="k", ls="--",
                   lw=1, label="majority class")
        ax.set_xticks(np.arange(len(SMM_ORDER)) + 0.4 - width / 2, SMM_ORDER)
        ax.set(xlabel="modalities kept", ylabel=f"{metric} x100 (95% interval)",
               title=f"{dataset} ({variant}) {scenario}, {task}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # bars stay visible
        paths.append(_save(fig, out / f"smm_{protocol}_{E.file_part(dataset)}_{variant}_{task}_{scenario}_{metric}.png"))
    return paths


def plot_joint(store: Store, records: list[dict], out: Path) -> list[Path]:
    """Fig. 8: joint representations of the first seed's run per model and dataset, projected
    on the principal plane of the complete-data points, coloured by class, at 3 rates."""
    paths, seen = [], set()
    for rec in sorted(records, key=lambda r: r["seed"]):
        dataset = E.board_dataset(rec)  # fixed features and each text encoder apart
        key = (rec["model"], dataset, rec["variant"], rec["task"], rec["scenario"], rec["protocol"])
        if key in seen or not keeps_joint(rec["scenario"]):
            continue
        preds = store.load_predictions(rec["run_id"])
        labels = [k.split("@", 1)[1] for k in preds if k.startswith("joint@")]
        if not labels:
            continue
        seen.add(key)
        labels = sorted(labels, key=float)
        y = preds["labels"][: preds[f"joint@{labels[0]}"].shape[0]]
        base = preds[f"joint@{labels[0]}"].astype(np.float32)
        mu = base.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(base - mu, full_matrices=False)
        fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6), squeeze=False)
        for ax, lab in zip(axes[0], labels):
            z = (preds[f"joint@{lab}"].astype(np.float32) - mu) @ vt[:2].T
            sc = ax.scatter(z[:, 0], z[:, 1], c=y, cmap="coolwarm", s=8)
            ax.set(title=f"rate {lab}", xticks=[], yticks=[])
        fig.colorbar(sc, ax=axes[0].tolist(), label="class")
        fig.suptitle(f"{rec['model']} joint representation, {dataset} {rec['scenario']}")
        name = f"joint_{rec['model'].replace('+', '-')}_{E.file_part(dataset)}_{rec['variant']}_{rec['task']}_{rec['scenario']}.png"
        paths.append(_save(fig, out / name, tight=False))
    return paths


def _softmax_true(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logp - logp.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p[np.arange(len(y)), y]


def plot_corrections(store: Store, records: list[dict], out: Path) -> list[Path]:
    """Fig. 9: per-sample probability of the true class before (tau = 0) and after the
    counterfactual correction with the run's validation-chosen tau, at the grid's middle rate."""
    from mer_bench.metrics import debias

    paths, seen = [], set()
    for rec in sorted(records, key=lambda r: r["seed"]):
        tau = rec.get("tau", {}).get("tau")
        if not rec.get("tau", {}).get("counterfactual") or not isinstance(tau, float):
            continue
        if not rec["scenario"].startswith("rmfm"):
            continue
        dataset = E.board_dataset(rec)
        key = (rec["model"], dataset, rec["variant"], rec["task"], rec["scenario"])
        if key in seen:
            continue
        seen.add(key)
        preds = store.load_predictions(rec["run_id"])
        lab = rec["grid"][len(rec["grid"]) // 2]
        y = preds["labels"]
        before = _softmax_true(preds[f"scores@{lab}"], y)
        after = _softmax_true(debias(preds[f"scores@{lab}"], preds[f"cf_scores@{lab}"], tau), y)
        pred_b = preds[f"scores@{lab}"].argmax(1)
        pred_a = debias(preds[f"scores@{lab}"], preds[f"cf_scores@{lab}"], tau).argmax(1)
        fixed = (pred_b != y) & (pred_a == y)
        broken = (pred_b == y) & (pred_a != y)
        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        ax.scatter(before, after, s=6, c="0.6", label="unchanged")
        ax.scatter(before[fixed], after[fixed], s=10, c="tab:green", label=f"corrected ({fixed.sum()})")
        ax.scatter(before[broken], after[broken], s=10, c="tab:red", label=f"broken ({broken.sum()})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="p(true class), factual", ylabel=f"p(true class), debiased tau={tau:g}",
               title=f"{rec['model']} {dataset} {rec['scenario']} @ {lab}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"correction_{rec['model'].replace('+', '-')}_{E.file_part(dataset)}_{rec['variant']}_{rec['task']}_{rec['scenario']}.png"))
    return paths


def write_plots(results: str | Path = "results", out: str | Path | None = None,
                n_boot: int = N_BOOT) -> list[Path]:
    """Every figure, from `predictions/` and the run records alone."""
    ev = E.Evidence(results, n_boot)
    store = ev.store
    out_dir = Path(out) if out else Path(results) / "figures"
    records = [run.rec for run in ev.runs]
    return (
        plot_curves(ev, out_dir)
        + plot_smm(ev, out_dir)
        + plot_joint(store, records, out_dir)
        + plot_corrections(store, records, out_dir)
    )
