"""MOSEI-scale memory: load synth-mosei (unaligned, 500 steps) and report its in-memory size,
the peak RSS before training (as a multiple of the data size; the target is <= 1.25x, i.e. no
second copy of the data), then train one CIDer epoch and report its time and peak RSS.

The data set is generated first in a separate process (when not cached), so generation's own
working memory does not count against loading.

Run: python benchmarks/bench_mosei_memory.py [--scale 1.0] [--threads 2] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data_mb(ds) -> float:
    import numpy as np

    total = 0
    for name in ("train", "valid", "test"):
        total += sum(v.nbytes for v in vars(ds[name]).values() if isinstance(v, np.ndarray))
    return total / 2**20


def measure(scale: float | None, threads: int, train_epoch: bool) -> dict:
    from mer_bench.alloc import tune_allocator

    tune_allocator()
    import time

    import torch

    from mer_bench.datasets import load_dataset

    torch.set_num_threads(threads)
    base = _peak_mb()  # interpreter + torch before any data
    t0 = time.perf_counter()
    ds = load_dataset("synth-mosei", scale=scale)
    out = {"counts": ds.counts(), "load_s": round(time.perf_counter() - t0, 1),
           "data_mb": round(_data_mb(ds)), "process_before_data_mb": round(base)}
    out["peak_rss_loaded_mb"] = round(_peak_mb())
    out["loaded_over_data"] = round((out["peak_rss_loaded_mb"] - base) / out["data_mb"], 3)
    if train_epoch:
        from mer_bench.models import build_model
        from mer_bench.scenarios import get_policy
        from mer_bench.training.trainer import TrainSettings, seed_torch, train

        seed_torch(1111)
        model = build_model("cider", ds.spec, "binary")
        model.prepare(ds["train"], cf_vocab=None)
        res = train(model, ds["train"], ds["valid"], TrainSettings(epochs=1, patience=2),
                    get_policy("per-sample-uniform").bind(1111), [])
        out["cider_epoch_s"] = round(res.seconds_per_epoch, 1)
        out["peak_rss_after_epoch_mb"] = round(_peak_mb())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.scale, a.threads, not a.no_train)))
        return
    scale = [] if a.scale is None else ["--scale", str(a.scale)]
    subprocess.run([sys.executable, "-m", "mer_bench.cli", "data", "synth", "--dataset",
                    "synth-mosei", *scale], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(a.threads), *scale,
                          *(["--no-train"] if a.no_train else [])],
                         check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for k, v in res.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
