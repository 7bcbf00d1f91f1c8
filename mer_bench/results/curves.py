"""Figures from the store (matplotlib, headless): metric-versus-rate curves, SMM bars, a 2-D
scatter of joint representations at several rates (the paper's Fig. 8) and, for models with
counterfactual scoring, a per-sample prediction-correction figure (Fig. 9)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mer_bench.results.store import Store  # noqa: E402

CURVE_METRICS = {"binary": ["Non0_acc_2", "Non0_F1_score"], "seven": ["Mult_acc_7", "F1_score_7"]}
SMM_ORDER = ["L", "A", "V", "LA", "LV", "AV", "LAV"]


def _numeric(labels: pd.Series) -> bool:
    try:
        labels.astype(float)
        return True
    except ValueError:
        return False


def _save(fig, path: Path, tight: bool = True) -> Path:
    """Write a PNG without a software/date stamp (figures are reproducible) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:  # a colorbar shared by several axes does not go with tight_layout
        fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_curves(df: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    keys = ["protocol", "dataset", "variant", "task", "scenario"]
    for (protocol, dataset, variant, task, scenario), g in df.groupby(keys, sort=True):
        if not _numeric(g["rate"]):
            continue
        for metric in CURVE_METRICS[task]:
            gm = g[g["metric"] == metric]
            if gm.empty:
                continue
            fig, ax = plt.subplots(figsize=(7, 4))
            for model, gg in gm.groupby("model", sort=True):
                agg = gg.assign(r=gg["rate"].astype(float)).groupby("r")["value"]
                mean, std = agg.mean(), agg.std(ddof=0)
                ax.plot(mean.index, 100 * mean.values, marker="o", ms=3, label=model)
                ax.fill_between(mean.index, 100 * (mean - std).values, 100 * (mean + std).values,
                                alpha=0.15)
            title = f"{dataset} ({variant}) {scenario}, {task}"
            if protocol == "paper":
                title += " [ORACLE tau]"
            ax.set(xlabel="missing rate", ylabel=f"{metric} x100", title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
            paths.append(_save(fig, out / f"curve_{protocol}_{dataset}_{variant}_{task}_{scenario}_{metric}.png"))
    return paths


def plot_smm(df: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    keys = ["protocol", "dataset", "variant", "task", "scenario"]
    for (protocol, dataset, variant, task, scenario), g in df.groupby(keys, sort=True):
        if _numeric(g["rate"]):
            continue
        metric = CURVE_METRICS[task][0]
        gm = g[g["metric"] == metric]
        models = sorted(gm["model"].unique())
        if not models:
            continue
        fig, ax = plt.subplots(figsize=(8.5, 4))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            gg = gm[gm["model"] == model].groupby("rate")["value"]
            mean, std = gg.mean(), gg.std(ddof=0)
            pats = [p for p in SMM_ORDER if p in mean.index]
            x = np.array([SMM_ORDER.index(p) for p in pats]) + i * width
            ax.bar(x, 100 * mean[pats].values, width, yerr=100 * std[pats].values, label=model)
        ax.set_xticks(np.arange(len(SMM_ORDER)) + 0.4 - width / 2, SMM_ORDER)
        ax.set(xlabel="modalities kept", ylabel=f"{metric} x100",
               title=f"{dataset} ({variant}) {scenario}, {task}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # bars stay visible
        paths.append(_save(fig, out / f"smm_{protocol}_{dataset}_{variant}_{task}_{scenario}_{metric}.png"))
    return paths


def plot_joint(store: Store, records: list[dict], out: Path) -> list[Path]:
    """Fig. 8: joint representations of the first seed's run per model and dataset, projected
    on the principal plane of the complete-data points, coloured by class, at 3 rates."""
    paths, seen = [], set()
    for rec in sorted(records, key=lambda r: r["seed"]):
        key = (rec["model"], rec["dataset"], rec["variant"], rec["task"], rec["scenario"], rec["protocol"])
        if key in seen or not rec["scenario"].startswith("rmfm"):
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
        fig.suptitle(f"{rec['model']} joint representation, {rec['dataset']} {rec['scenario']}")
        name = f"joint_{rec['model'].replace('+', '-')}_{rec['dataset']}_{rec['variant']}_{rec['task']}_{rec['scenario']}.png"
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
        key = (rec["model"], rec["dataset"], rec["variant"], rec["task"], rec["scenario"])
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
               title=f"{rec['model']} {rec['dataset']} {rec['scenario']} @ {lab}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"correction_{rec['model'].replace('+', '-')}_{rec['dataset']}_{rec['variant']}_{rec['task']}_{rec['scenario']}.png"))
    return paths


def write_plots(results: str | Path = "results", out: str | Path | None = None) -> list[Path]:
    store = Store(results)
    df = store.table()
    out_dir = Path(out) if out else Path(results) / "figures"
    records = list(store.records())
    return (
        plot_curves(df, out_dir)
        + plot_smm(df, out_dir)
        + plot_joint(store, records, out_dir)
        + plot_corrections(store, records, out_dir)
    )
