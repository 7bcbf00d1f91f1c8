"""Measured missingness of a scenario on a dataset's test split: `mer-bench scenario stats`.

Why: a user should be able to check what a scenario really does before trusting a curve. The
masks are the very ones the harness uses (`Scenario.drops` on the split's sample ids, batch by
batch); only lengths are read, no corrupted copy of any feature is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mer_bench.data.schema import Split
from mer_bench.scenarios import check_compatible, get_scenario
from mer_bench.scenarios.base import MODALITY_ORDER, Drops, GridPoint, Lengths, Scenario


def split_lengths(split: Split, idx: np.ndarray) -> Lengths:
    """The `Lengths` of rows `idx`, exactly as `Lengths.from_batch` would see them."""
    return Lengths(
        text=split.text_lengths[idx],
        audio=split.audio_lengths[idx],
        vision=split.vision_lengths[idx],
        sizes=(split.text.shape[1], split.audio.shape[1], split.vision.shape[1]),
        text_specials=split.has_special_tokens,
    )


def _comparable_pairs(points: Sequence[GridPoint]) -> list[tuple[int, int]]:
    """(i, j) with point i's rate <= point j's in every modality: masks at i must be within j.

    Scalar rates are sorted and only neighbours compared (nesting is transitive); SMM triples are
    compared over the partial order (e.g. missing V only is within missing A and V)."""
    if all(isinstance(p.rate, float) for p in points):
        order = sorted(range(len(points)), key=lambda i: points[i].rate)
        return list(zip(order[:-1], order[1:]))
    rates = [np.broadcast_to(np.asarray(p.rate, dtype=float), (3,)) for p in points]
    return [
        (i, j)
        for i in range(len(points))
        for j in range(len(points))
        if i != j and np.all(rates[i] <= rates[j])
    ]


def split_stats(
    scenario: Scenario, split: Split, seed: int = 1111, batch_size: int = 256
) -> dict[str, dict]:
    """Per grid point and modality: the fraction of droppable positions dropped, the fraction
    of samples (with any droppable position) whose modality is dropped entirely, and whether
    the masks are nested across the grid."""
    points = list(scenario.grid)
    pairs = _comparable_pairs(points)
    dropped = np.zeros((len(points), 3), dtype=np.int64)
    full = np.zeros((len(points), 3), dtype=np.int64)
    droppable_total = np.zeros(3, dtype=np.int64)
    with_droppable = np.zeros(3, dtype=np.int64)
    nested = True
    ids_all = split.id
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        lengths = split_lengths(split, idx)
        ids = [str(i) for i in ids_all[idx]]
        can = [lengths.droppable(m) for m in MODALITY_ORDER]
        n_can = [c.sum(axis=1) for c in can]
        for k in range(3):
            droppable_total[k] += n_can[k].sum()
            with_droppable[k] += (n_can[k] > 0).sum()
        masks: list[Drops] = []
        for i, point in enumerate(points):
            drops = scenario.drops(ids, lengths, point, seed)
            for k, m in enumerate(MODALITY_ORDER):
                d = drops[m] & can[k]
                per_sample = d.sum(axis=1)
                dropped[i, k] += per_sample.sum()
                full[i, k] += ((per_sample == n_can[k]) & (n_can[k] > 0)).sum()
            masks.append(drops)
        for i, j in pairs:
            if nested and any((masks[i][m] & ~masks[j][m]).any() for m in MODALITY_ORDER):
                nested = False

    def frac(num: np.ndarray, den: np.ndarray) -> dict[str, float | None]:
        return {
            m: (round(float(num[k]) / float(den[k]), 4) if den[k] else None)
            for k, m in enumerate(MODALITY_ORDER)
        }

    return {
        "nested": nested,
        "missing": {p.label: frac(dropped[i], droppable_total) for i, p in enumerate(points)},
        "fully_missing": {p.label: frac(full[i], with_droppable) for i, p in enumerate(points)},
    }


def scenario_stats(
    scenario: str,
    dataset: str = "synth-mosi",
    variant: str = "unaligned",
    rates: Sequence[float] | None = None,
    seed: int = 1111,
    data_root: str | Path | None = None,
    scale: float | None = None,
    batch_size: int = 256,
) -> dict:
    """Missingness measured on the TEST split of `dataset` (the scenario's distribution decides
    which test split: iid, ood or cross). `scenario` is a full name or a bare mode; `rates`
    replaces the default grid (not for SMM). TMFM/STMFM on unaligned data is a `UserError`."""
    from mer_bench.datasets import load_dataset

    sc = get_scenario(scenario)
    if rates is not None:
        sc = sc.with_rates(rates)
    check_compatible(sc, aligned=variant == "aligned")
    ds = load_dataset(
        dataset, variant=variant, distribution=sc.distribution, data_root=data_root, scale=scale
    )
    body = split_stats(sc, ds["test"], seed=seed, batch_size=batch_size)
    return {
        "scenario": scenario,
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "rates": [p.rate if sc.numeric else p.label for p in sc.grid],
        **body,
    }


def format_stats(stats: dict) -> str:
    """A readable table: one row per grid point, missing and fully-missing per modality."""
    from tabulate import tabulate

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = [
        [label]
        + [pct(stats["missing"][label][m]) for m in MODALITY_ORDER]
        + [pct(stats["fully_missing"][label][m]) for m in MODALITY_ORDER]
        for label in stats["missing"]
    ]
    numeric = all(isinstance(r, float) for r in stats["rates"])
    first = "rate" if numeric else "kept"
    headers = [first, "text", "audio", "vision", "text all", "audio all", "vision all"]
    head = (
        f"scenario {stats['scenario']} on {stats['dataset']} ({stats['variant']}, test split, "
        f"seed {stats['seed']}); masks nested across the grid: "
        f"{'yes' if stats['nested'] else 'NO'}\n"
        "missing = share of droppable positions dropped; all = share of samples whose modality "
        "is dropped entirely\n"
    )
    note = ""
    if get_scenario(stats["scenario"]).requires_aligned:
        note = (
            "\naudio/vision keep the time steps of [CLS]/[SEP] (shared steps, as the official "
            "code), so they stay below 100% at rate 1"
        )
    return head + tabulate(rows, headers=headers, stralign="right", disable_numparse=True) + note
