"""How informative is each modality of the synthetic data? (calibration check)

Generates a synthetic set (timed), mean-pools each modality over its valid positions, fits a
linear classifier on train (ridge on one-hot targets, strength chosen on valid), and prints test
Non0_acc_2 (3-way target, argmax over all three classes, y == 0 dropped) and Acc_7 for text,
audio, vision alone and all three concatenated. Expected shape of the result: text strongest,
audio and vision clearly above chance, all three above text alone.

    python benchmarks/calibrate_synth.py [--dataset synth-mosi] [--variant unaligned]
        [--scale F] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mer_bench.data.mmsa import read_mmsa_pickle
from mer_bench.data.schema import Split, seven_class
from mer_bench.data.synth import synthesize


def pooled(split: Split, modality: str) -> np.ndarray:
    x = getattr(split, modality)
    lengths = split.lengths(modality)
    valid = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    return (x * valid[..., None]).sum(1) / np.maximum(valid.sum(1, keepdims=True), 1.0)


def fit_predict(xtr, ytr, xva, yva, xte, n_classes: int) -> np.ndarray:
    """Linear classifier (ridge regression on one-hot targets, closed form; the ridge
    strength is chosen on validation accuracy). Fast and deterministic."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva, xte = (np.c_[((a - mu) / sd).astype(np.float64), np.ones(len(a))]
                     for a in (xtr, xva, xte))
    onehot = np.eye(n_classes)[ytr]
    gram, rhs = xtr.T @ xtr, xtr.T @ onehot
    best = (-1.0, None)
    for lam in (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0):
        w = np.linalg.solve(gram + lam * len(xtr) * 1e-3 * np.eye(len(gram)), rhs)
        acc = ((xva @ w).argmax(1) == yva).mean()
        if acc > best[0]:
            best = (acc, (xte @ w).argmax(1))
    return best[1]


def evaluate(ds) -> dict[str, tuple[float, float]]:
    tr, va, te = ds["train"], ds["valid"], ds["test"]
    feats = {m: [pooled(s, m) for s in (tr, va, te)] for m in ("text", "audio", "vision")}
    feats["all"] = [np.concatenate([feats[m][i] for m in ("text", "audio", "vision")], 1)
                    for i in range(3)]
    y_te = te.regression_labels
    nz = y_te != 0
    out = {}
    for name, (xtr, xva, xte) in feats.items():
        p3 = fit_predict(xtr, tr.classification_labels, xva, va.classification_labels, xte, 3)
        non0 = ((p3[nz] == 0) & (y_te[nz] < 0)) | ((p3[nz] == 2) & (y_te[nz] > 0))
        p7 = fit_predict(xtr, seven_class(tr.regression_labels), xva,
                         seven_class(va.regression_labels), xte, 7)
        out[name] = (float(non0.mean()), float((p7 == seven_class(y_te)).mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synth-mosi")
    ap.add_argument("--variant", default="unaligned", choices=["aligned", "unaligned"])
    ap.add_argument("--scale", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None, help="directory for the generated pickle (temp)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.out or tmp) / f"{a.dataset}_{a.variant}.pkl"
        t0 = time.perf_counter()
        synthesize(a.dataset, variant=a.variant, seed=a.seed, scale=a.scale, out=path)
        gen = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        ds = read_mmsa_pickle(path, a.dataset, a.variant)
        load = time.perf_counter() - t0
        print(f"{a.dataset} {a.variant} scale={a.scale or 1} counts={ds.counts()}")
        print(f"generate {gen:.1f} s, load {load:.1f} s, file {size / 1e6:.0f} MB")
        res = evaluate(ds)
    print(f"{'features':<10}{'Non0_acc_2':>12}{'Acc_7':>8}   (test; linear classifier, mean-pooled)")
    for name, (acc2, acc7) in res.items():
        print(f"{name:<10}{acc2:>12.3f}{acc7:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
