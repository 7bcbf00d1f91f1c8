"""Statistics over stored predictions: seeded paired bootstrap, McNemar / sign-flip, Holm, robustness.

Why: a leaderboard cell from one test set is an estimate. Every model sees identical masks and
the same test samples, so the bootstrap resamples test samples once per test set (keyed by its
ids and a fixed seed) and reuses the same resamples for every model, every rate and every
seed: intervals are paired across rates and differences between models are paired tests.
Across seeds, replicates also resample seeds (drawn by a fixed seed, matched by seed number),
so the interval of a multi-seed mean covers both sources of variation.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from math import comb

import numpy as np

N_BOOT = 1000
BOOT_SEED = 18
ALPHA = 0.05


def resample_weights(ids: Sequence[str], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """(n_boot, N) bootstrap counts over the test samples `ids`; a pure function of (ids, seed),
    so every model scored on the same test set gets the same resamples."""
    key = zlib.crc32("\n".join(map(str, ids)).encode("utf-8"))
    rng = np.random.default_rng([seed, key, n_boot])
    n = len(ids)
    draws = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
    return w


def seed_draws(k: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """(n_boot, k) indices into a cell's k sorted seeds: the same draws for every cell with k
    seeds, so two models with the same seeds are resampled in pairs."""
    if k == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return np.random.default_rng([seed, 7, k, n_boot]).integers(0, k, size=(n_boot, k))


def boot_mean(boot_by_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Replicates of the across-seed mean: replicate b averages its drawn seeds' replicate b.
    `boot_by_seed` is (k, B, ...)."""
    b = np.arange(draws.shape[0])[:, None]
    return np.mean(boot_by_seed[draws, b], axis=1)


def interval(samples: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval over axis 0 (NaN replicates ignored; NaN when none is finite)."""
    s = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(s).any():
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(s, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_p(diff_samples: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value of H0: difference 0, from the replicates shifted to the null
    (Efron & Tibshirani 16.4): p = (1 + #{|d*_b - d| >= |d|}) / (B + 1)."""
    d = np.asarray(diff_samples, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not np.isfinite(observed) or d.size == 0:
        return float("nan")
    if observed == 0:
        return 1.0
    extreme = np.abs(d - observed) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (d.size + 1))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact two-sided McNemar test on paired correctness: (b = only A right, c = only B right,
    p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]))."""
    a, bb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    b, c = int(np.sum(a & ~bb)), int(np.sum(~a & bb))
    return b, c, _mcnemar_p(b, c)


def _mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p from the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return float(min(1.0, 2 * tail))


def paired_sample_test(correct_a: np.ndarray, correct_b: np.ndarray, n_perm: int = 10_000,
                       seed: int = BOOT_SEED) -> tuple[int, int, float]:
    """Paired test of two accuracies with the test samples as units: (b = samples where A is
    right on more of the seeds, c = where B is, two-sided p). Rows are seeds, columns samples.

    Why: concatenating seeds into one McNemar table counts every test sample once per seed as if
    they were independent pairs, so three seeds of the same 172 samples look like 516 and the p
    shrinks with no new evidence. Here each sample contributes its seed-mean difference d_i;
    under H0 A and B are exchangeable per sample, so the sign of every d_i may flip. When every
    d_i is -1, 0 or 1 (one seed, or seeds that agree) that is exactly McNemar's test; otherwise
    a seeded Monte-Carlo sign-flip test."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    bb = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    d = (a - bb).mean(axis=0)
    d = d[d != 0]
    b, c = int(np.sum(d > 0)), int(np.sum(d < 0))
    if np.all(np.abs(d) == 1):
        return b, c, _mcnemar_p(b, c)
    rng = np.random.default_rng([seed, d.size, n_perm])
    signs = rng.integers(0, 2, size=(n_perm, d.size)) * 2 - 1
    extreme = np.abs(signs @ d) >= abs(d.sum()) - 1e-12
    return b, c, float((1 + extreme.sum()) / (n_perm + 1))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ----------------------------------------------------------------------------- robustness
CONVENTIONS = ("trapezoid", "multibench-step")


def relative_robustness(rates: Sequence[float], values: np.ndarray,
                        convention: str = "trapezoid") -> np.ndarray:
    """Area under the curve over the last axis. `trapezoid` (ours): over the actual rates,
    divided by the grid span, i.e. the curve's mean level. `multibench-step` (MultiBench's
    relative robustness): the trapezoid with a fixed step of 0.1 per grid point, unnormalised
    (MultiBench's final min-max scaling over a method set is left out: it depends on the set)."""
    v = np.asarray(values, dtype=np.float64)
    if convention == "multibench-step":
        return np.sum((v[..., 1:] + v[..., :-1]) * 0.1 / 2, axis=-1)
    r = np.asarray(rates, dtype=np.float64)
    return np.sum((v[..., 1:] + v[..., :-1]) * np.diff(r) / 2, axis=-1) / (r[-1] - r[0])


def effective_robustness(rates: Sequence[float], values: np.ndarray, reference: np.ndarray,
                         convention: str = "trapezoid") -> np.ndarray:
    """How much less a curve falls than the reference curve once both start at the same
    complete-data value: the area of (v(r) - v(0)) - (ref(r) - ref(0)). `trapezoid` (ours): over
    the actual rates, divided by the span; `multibench-step`: MultiBench's sum over the grid
    points of v - (ref + v(0) - ref(0)). Zero for a curve against itself."""
    v = np.asarray(values, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    gap = (v - v[..., :1]) - (ref - ref[..., :1])
    if convention == "multibench-step":
        return np.sum(gap, axis=-1)
    return relative_robustness(rates, gap, "trapezoid")


SMM_DEPENDENCE = {  # modality -> (pattern where it is the only one kept, pattern without it)
    "L": ("L", "AV"),
    "A": ("A", "LV"),
    "V": ("V", "LA"),
}


def smm_dependence(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-modality dependence from SMM values per pattern: `M kept` is the drop from all three
    (LAV) to M alone, `M removed` the drop from LAV to the other two."""
    full = values["LAV"]
    out = {}
    for m, (alone, without) in SMM_DEPENDENCE.items():
        if alone in values:
            out[f"{m} kept"] = full - values[alone]
        if without in values:
            out[f"{m} removed"] = full - values[without]
    return out
