"""CIDer training cost with fixed text features vs a text encoder in the loop (`--text-encoder`).

Why CPU time as well as wall time: on a shared machine wall time mostly measures the other
jobs; process CPU time (one torch thread) is what the step costs. Prints seconds per training
step on one batch of 128 synth-mosi samples (teacher + student pass) and the implied seconds
per full-scale synth-mosi epoch (1284 training samples; validation excluded).

    python benchmarks/bench_textpath.py [--encoder minilm] [--steps 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mer_bench.data.batch import make_batch
from mer_bench.datasets import load_dataset
from mer_bench.scenarios import get_policy
from mer_bench.scenarios.base import Lengths, apply_drops
from mer_bench.textpath import build_with_text_encoder

FULL_TRAIN = 1284  # synth-mosi / MOSI training samples


def time_steps(encoder: str | None, steps: int, device: str) -> tuple[float, float]:
    """(wall, cpu) seconds per training step, after one warm-up step."""
    ds = load_dataset("synth-mosi", scale=0.1)
    train = ds["train"]
    torch.manual_seed(1111)
    model = build_with_text_encoder("cider", ds.spec, "binary", encoder)
    model.prepare(train, cf_vocab=None)
    model.to(device).train()
    opt = model.configure_optimizer()
    idx = np.arange(min(128, len(train)))
    clean = make_batch(train, idx, device)
    drops = get_policy("per-sample-uniform").bind(1111)
    corrupted = apply_drops(clean, drops([str(i) for i in train.id[idx]], Lengths.from_batch(clean), 0))
    model.train_step(clean, corrupted, opt)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_step(clean, corrupted, opt)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(1)
    per_epoch = FULL_TRAIN / 128
    for name in (None, a.encoder):
        wall, cpu = time_steps(name, a.steps, a.device)
        label = name or "fixed-features"
        print(f"{label:>16}: {wall:7.2f} s wall, {cpu:7.2f} s CPU per 128-sample step; "
              f"~{per_epoch * wall:7.1f} s wall, ~{per_epoch * cpu:7.1f} s CPU per full epoch")


if __name__ == "__main__":
    main()
