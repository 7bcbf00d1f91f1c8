"""How informative is each modality of the synthetic data, IID and OOD? (calibration check)

Generates a synthetic set (timed), mean-pools each modality over its valid positions, fits a
linear classifier on train (ridge on one-hot targets, strength chosen on valid), and prints test
Non0_acc_2 (3-way target, argmax over all three classes, y == 0 dropped) and Acc_7 for text,
audio, vision alone and all three concatenated, under the IID split and under the OOD split the
harness would serve (`splits/` when it matches the data, else built in memory with the
defaults), beside each test set's majority class. Expected: IID text strongest, audio and
vision clearly above chance, all three best; OOD text and all three 6-14 points below IID and
at least 5 above the OOD majority class.

    python benchmarks/calibrate_synth.py [--dataset synth-mosi] [--variant unaligned]
        [--scale F] [--seed N] [--task binary] [--out DIR]
    python benchmarks/calibrate_synth.py --cross [--dataset synth-mosi] [--scale F]

`--cross` probes the CASP-shaped twin behind `*-cross` instead: IID on the twin's own split,
and cross (train/valid of the twin, test of its partner's twin, fitted to the training length).
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
from mer_bench.data.schema import SPLITS
from mer_bench.data.synth import synthesize
from mer_bench.splits.apply import apply_ood
from mer_bench.splits.probe import pooled, probe_table

MODALITIES = ("text", "audio", "vision")


def features(ds) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pooled features of all samples (train, valid, test order), labels and ids."""
    feats = {m: np.concatenate([pooled(ds[s], m) for s in SPLITS]) for m in MODALITIES}
    feats["all"] = np.concatenate([feats[m] for m in MODALITIES], axis=1)
    y = np.concatenate([ds[s].regression_labels for s in SPLITS]).astype(np.float32)
    ids = np.concatenate([np.asarray(ds[s].id).astype(str) for s in SPLITS])
    return feats, y, ids


def partitions(ds, ood, ids: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    pos = {v: i for i, v in enumerate(ids.tolist())}
    sizes = np.cumsum([0] + [len(ds[s]) for s in SPLITS])
    iid = {s: np.arange(sizes[i], sizes[i + 1]) for i, s in enumerate(SPLITS)}
    return {"iid": iid, "ood": {s: np.array([pos[v] for v in ood[s].id]) for s in SPLITS}}


def evaluate(ds, task: str = "binary") -> dict:
    feats, y, ids = features(ds)
    ood = apply_ood(ds, task)
    out = probe_table(feats, y, partitions(ds, ood, ids))
    out["_split"] = ood.meta["ood_split"]
    return out


def evaluate_cross(name: str, scale: float | None) -> dict:
    """Probe table of `name`'s cross twin: its IID split and the cross partition."""
    from mer_bench.data.registry import DATASETS
    from mer_bench.datasets import load_cross

    twin = DATASETS.get(name).cross_loader(None, scale, False)
    cross = load_cross(name, scale=scale)
    feats, y, _ = features(twin)
    extra = {m: pooled(cross["test"], m) for m in MODALITIES}
    extra["all"] = np.concatenate([extra[m] for m in MODALITIES], axis=1)
    n = len(y)
    feats = {k: np.concatenate([v, extra[k]]) for k, v in feats.items()}
    y = np.concatenate([y, cross["test"].regression_labels.astype(np.float32)])
    sizes = np.cumsum([0] + [len(twin[s]) for s in SPLITS])
    iid = {s: np.arange(sizes[i], sizes[i + 1]) for i, s in enumerate(SPLITS)}
    parts = {"iid": iid, "ood": {**iid, "test": np.arange(n, len(y))}}
    print(f"{twin.name} scale={scale or 1} counts={twin.counts()}; cross test {cross.meta['cross']['test']}"
          f" ({len(cross['test'])} samples, {cross.meta['cross']['truncated']} cut)")
    return probe_table(feats, y, parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synth-mosi")
    ap.add_argument("--variant", default="unaligned", choices=["aligned", "unaligned"])
    ap.add_argument("--scale", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--task", default="binary", choices=["binary", "seven"])
    ap.add_argument("--out", default=None, help="directory for the generated pickle (temp)")
    ap.add_argument("--cross", action="store_true",
                    help="probe the CASP-shaped cross twin (columns: IID, cross)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if a.cross:
        _print_table(evaluate_cross(a.dataset, a.scale), "cross")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.out or tmp) / f"{a.dataset}_{a.variant}.pkl"
        t0 = time.perf_counter()
        synthesize(a.dataset, variant=a.variant, seed=a.seed, scale=a.scale, out=path)
        gen = time.perf_counter() - t0
        size = path.stat().st_size
        ds = read_mmsa_pickle(path, a.dataset, a.variant)
        print(f"{a.dataset} {a.variant} scale={a.scale or 1} counts={ds.counts()}")
        print(f"generate {gen:.1f} s, file {size / 1e6:.0f} MB")
        res = evaluate(ds, a.task)
    sp = res.pop("_split")
    print(f"OOD split: {sp['path'] if not sp['built_in_memory'] else 'built in memory'} "
          f"(algorithm {sp['algorithm_version']}, strength {sp['strength']}, TV {sp['statistic']})")
    _print_table(res, "OOD")
    return 0


def _print_table(res: dict, other: str) -> None:
    print(f"{'features':<10}{'IID Non0_acc_2':>16}{'Acc_7':>8}{other + ' Non0_acc_2':>18}{'Acc_7':>8}"
          f"{'drop':>7}   (test; linear classifier, mean-pooled)")
    for name, r in res.items():
        (i2, i7), (o2, o7) = r["iid"], r["ood"]
        print(f"{name:<10}{i2:>16.3f}{i7:>8.3f}{o2:>18.3f}{o7:>8.3f}{100 * (i2 - o2):>7.1f}")


if __name__ == "__main__":
    sys.exit(main())
