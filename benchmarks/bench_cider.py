"""CIDer speed on CPU: seconds per training epoch and seconds for the 11-rate RMFM evaluation
(with the counterfactual pass) on the embedded synth-mosi.

Run: python benchmarks/bench_cider.py [--epochs 2] [--threads N] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import time

import torch

from mer_bench.datasets import load_dataset
from mer_bench.models import build_model
from mer_bench.scenarios import get_policy, get_scenario
from mer_bench.splits.vocabulary import cf_vocab_ids
from mer_bench.training.trainer import TrainSettings, predict, seed_torch, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--scale", type=float, default=None)
    ap.add_argument("--model", default="cider")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    ds = load_dataset("synth-mosi", scale=a.scale)
    print(f"load synth-mosi: {time.perf_counter() - t0:.1f} s, counts {ds.counts()}")
    seed_torch(1111)
    model = build_model(a.model, ds.spec, "binary")
    model.prepare(ds["train"], cf_vocab=cf_vocab_ids(ds, "binary"))
    policy = get_policy("per-sample-uniform")
    res = train(
        model, ds["train"], ds["valid"],
        TrainSettings(epochs=a.epochs, patience=a.epochs + 1, batch_size=128),
        policy.bind(1111),
        valid_points=[],
    )
    print(f"train: {res.seconds_per_epoch:.2f} s/epoch over {a.epochs} epoch(s), "
          f"{a.threads} thread(s), {model.n_parameters():,} parameters")
    sc = get_scenario("rmfm-iid")
    t0 = time.perf_counter()
    for p in sc.grid:
        predict(model, ds["test"], lambda ids, lengths, p=p: sc.drops(ids, lengths, p, 1111),
                "cpu", counterfactual=bool(getattr(model, "counterfactual", False)))
    print(f"evaluate 11 rates x {len(ds['test'])} test samples (with counterfactual pass): "
          f"{time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
