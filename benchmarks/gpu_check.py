"""GPU check: the main job for two epochs and one training epoch of every registered model on
synth-mosi unaligned, on CUDA, printing seconds per epoch and peak GPU memory beside the
CIDer paper's Table VI (CIDer: 10.4 s/epoch, 6.8 GiB, BERT fine-tuned, Quadro RTX 8000).

Without a CUDA device it prints one line and exits 2; no test depends on a GPU.

Run: python benchmarks/gpu_check.py [--models cider,mult] [--results /tmp/gpu-check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

PAPER = {"cider": "10.4 s/epoch, 6.8 GiB (BERT fine-tuned, Quadro RTX 8000)"}


def main_job(results: str) -> dict:
    """`mer-bench run --model cider --scenario rmfm-ood --epochs 2` on the GPU, timed."""
    import torch

    from mer_bench.training.runner import RunConfig, run_cell

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rec = run_cell(RunConfig(model="cider", scenario="rmfm-ood", epochs=2, device="cuda"), 1111,
                   results, force=True)
    return {"wall_s": time.perf_counter() - t0, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "auilc": rec["auilc"]}


def one_epoch(model: str) -> dict:
    from mer_bench.training.complexity import measure

    m = measure(model, dataset="synth-mosi", variant="unaligned", device="cuda", epochs=1)
    return {"s_per_epoch": m["seconds_per_epoch"], "peak_gib": m["peak_memory_mb"] / 1024,
            "parameters": m["parameters"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None, help="comma list; default: every registered model")
    ap.add_argument("--results", default=None, help="results store for the main job (default: a temp dir)")
    ap.add_argument("--skip-main", action="store_true")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device available (torch.cuda.is_available() is False); nothing run",
              file=sys.stderr)
        return 2
    from mer_bench.alloc import tune_allocator
    from mer_bench.models import model_names

    tune_allocator()
    torch.backends.cuda.matmul.allow_tf32 = False  # same arithmetic as the CPU runs
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if not a.skip_main:
        res = main_job(a.results or tempfile.mkdtemp(prefix="gpu-check-"))
        print(f"main job (cider rmfm-ood, 2 epochs, train + 11-rate evaluation): "
              f"{res['wall_s']:.1f} s wall, peak {res['peak_gib']:.2f} GiB, AUILC {res['auilc']}")
    print("| model | s/epoch | peak GiB | parameters | paper Table VI |")
    print("|---|---|---|---|---|")
    for name in (a.models.split(",") if a.models else model_names()):
        r = one_epoch(name)
        print(f"| {name} | {r['s_per_epoch']:.2f} | {r['peak_gib']:.2f} | {r['parameters']:,} | "
              f"{PAPER.get(name, '-')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
