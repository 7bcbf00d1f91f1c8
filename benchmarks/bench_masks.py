"""Mask-generation cost on a MOSEI-sized unaligned test set (4659 samples, text 50 / audio 500 /
vision 500) at the 11 default rates, batch by batch as the harness does it.

Only lengths exist here: no features are built and no corrupted copy is kept, so the figures are
the scenario layer's own cost. Run: `python benchmarks/bench_masks.py [--modes rmfm,rmm]`.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from mer_bench.scenarios import get_scenario
from mer_bench.scenarios.base import Lengths

N, SIZES, BATCH = 4659, (50, 500, 500), 256


def plausible_lengths(n: int, sizes: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random lengths in the range real MOSEI shows (text incl. [CLS]/[SEP])."""
    g = np.random.default_rng(seed)
    return {
        "text": g.integers(5, sizes[0] + 1, n),
        "audio": g.integers(20, sizes[1] + 1, n),
        "vision": g.integers(20, sizes[2] + 1, n),
    }


def one_pass(mode: str, sizes: tuple[int, int, int], seed: int = 1111) -> int:
    """Masks for every batch at every grid point; returns the dropped-position count."""
    scenario = get_scenario(mode)
    lens = plausible_lengths(N, sizes)
    ids = [f"video{i // 7}$_${i % 7}" for i in range(N)]
    dropped = 0
    for start in range(0, N, BATCH):
        sl = slice(start, start + BATCH)
        lengths = Lengths(lens["text"][sl], lens["audio"][sl], lens["vision"][sl], sizes)
        for point in scenario.grid:
            drops = scenario.drops(ids[sl], lengths, point, seed)
            dropped += int(sum(int(d.sum()) for d in drops.values()))
    return dropped


def bench(mode: str, sizes: tuple[int, int, int]) -> tuple[float, float, int]:
    """(seconds, tracemalloc peak MiB, dropped positions); timed without tracemalloc, whose
    hooks slow numpy allocation, then measured again under it for the peak."""
    t0 = time.perf_counter()
    dropped = one_pass(mode, sizes)
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    one_pass(mode, sizes)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="rmfm,trmfm,rmm,smm,tmfm,stmfm")
    args = ap.parse_args()
    print(f"{N} samples, batch {BATCH}, unaligned sizes {SIZES}, aligned sizes (50, 50, 50)")
    print(f"{'mode':8} {'sizes':>15} {'points':>6} {'seconds':>8} {'peak MiB':>9} {'dropped':>12}")
    for mode in args.modes.split(","):
        sizes = (50, 50, 50) if get_scenario(mode).requires_aligned else SIZES
        seconds, peak, dropped = bench(mode, sizes)
        points = len(get_scenario(mode).grid)
        print(f"{mode:8} {str(sizes):>15} {points:>6} {seconds:8.2f} {peak:9.1f} {dropped:12d}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MiB (includes the interpreter and numpy)")


if __name__ == "__main__":
    main()
