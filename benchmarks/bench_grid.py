"""Wall time of a 4-cell grid with --jobs 1 versus --jobs 2 on this machine, as a ratio.

Run: python benchmarks/bench_grid.py [--model cider] [--variant aligned] [--scale 0.25] [--epochs 2]
Each cell trains its own model (distinct seeds), so the comparison measures parallelism, not
checkpoint sharing. Cells must be large enough to amortise worker start-up and data loading
(a few seconds per worker): with tiny cells, --jobs 2 is slower than --jobs 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from mer_bench.training.runner import RunConfig, run_cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="cider")
    ap.add_argument("--variant", default="aligned")
    a = ap.parse_args()
    cfg = RunConfig(model=a.model, scenario="rmfm-iid", variant=a.variant, scale=a.scale,
                    epochs=a.epochs)
    cells = [(cfg, seed) for seed in (1111, 1112, 1113, 1114)]
    # generate the dataset once, outside the timing
    run_cells(cells[:1], results=tempfile.mkdtemp(), progress=False)
    times = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            run_cells(cells, results=d, jobs=jobs, progress=False)
            times[jobs] = time.perf_counter() - t0
        print(f"jobs={jobs}: {times[jobs]:.1f} s for 4 cells ({a.model}, scale {a.scale}, "
              f"{a.variant}, {a.epochs} epochs, {os.cpu_count()} cores)")
    print(f"speed-up jobs=2 vs jobs=1: {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
