"""Seconds per training epoch, seconds per 11-rate evaluation and peak RSS for registered
models on the embedded synth-mosi, optionally against another checkout of the code in the same
run (interleaved, medians), so a speed claim is a ratio measured on one noisy machine at once.

Each measurement is a fresh child process (its own peak RSS, allocator and thread settings)
importing the package from the tree given by PYTHONPATH. To keep runs short, a child trains one
epoch over the first `--samples` training samples (the model's own batch size, 128 for CIDer)
and evaluates RMFM at 11 rates on the first `--eval-samples` test samples (with the
counterfactual pass where the model has one); seconds per epoch are scaled to the full
training split (1284 samples), evaluation to the full test split (686). Peak RSS includes the
loaded full-size data set. By default one untimed batch trains first (`--warmup 1`): a single
timed step in a fresh process would mostly measure first-touch page faults of a new heap, which
no step after the first pays.

Run: python benchmarks/bench_models.py [--models cider,mult] [--variants unaligned,aligned]
         [--samples 256] [--eval-samples 128] [--reps 3] [--threads 1] [--warmup 1]
         [--before /tmp/base13]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
FULL_TRAIN, FULL_TEST = 1284, 686


def child(a: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    try:  # the code before issue 13 has no allocator settings
        from mer_bench.alloc import tune_allocator

        tune_allocator()
    except ImportError:
        pass
    import resource
    import time

    import numpy as np
    import torch

    try:
        from mer_bench.datasets import load_dataset
    except ImportError:  # the code before stop 10 kept it in the registry
        from mer_bench.data.registry import load_dataset
    from mer_bench.models import build_model
    from mer_bench.scenarios import get_policy, get_scenario
    from mer_bench.training.trainer import TrainSettings, predict, seed_torch, train

    torch.set_num_threads(a.threads)
    ds = load_dataset("synth-mosi", variant=a.variant)
    tr = ds["train"].subset(np.arange(min(a.samples, len(ds["train"]))))
    te = ds["test"].subset(np.arange(min(a.eval_samples, len(ds["test"]))))
    seed_torch(1111)
    model = build_model(a.model, ds.spec, "binary")
    model.prepare(ds["train"], cf_vocab=None)
    settings = TrainSettings(epochs=1, patience=2, batch_size=getattr(model, "batch_size", 128))
    policy = get_policy("per-sample-uniform").bind(1111)
    if a.warmup:  # untimed steps first: an epoch's steps run on a warm heap, not a fresh one
        warm = tr.subset(np.arange(min(a.warmup * settings.batch_size, len(tr))))
        train(model, warm, ds["valid"].subset(np.arange(8)), settings, policy, [])
    # validation in proportion, so that scaling to the full split counts it once per epoch
    va = ds["valid"].subset(np.arange(max(1, round(len(ds["valid"]) * len(tr) / FULL_TRAIN))))
    t0, c0 = time.perf_counter(), time.process_time()
    train(model, tr, va, settings, policy, [])
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    sc = get_scenario("rmfm-iid")
    cf = bool(getattr(model, "counterfactual", False))
    t0, c0 = time.perf_counter(), time.process_time()
    for p in sc.grid:
        predict(model, te, lambda ids, lengths, p=p: sc.drops(ids, lengths, p, 1111), "cpu",
                counterfactual=cf)
    t_eval, c_eval = time.perf_counter() - t0, time.process_time() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "epoch_s": t_train * FULL_TRAIN / len(tr),
        "eval_s": t_eval * FULL_TEST / len(te),
        "epoch_cpu_s": c_train * FULL_TRAIN / len(tr),
        "eval_cpu_s": c_eval * FULL_TEST / len(te),
        "peak_rss_mb": ru.ru_maxrss / 1024,
        "sys_share": ru.ru_stime / max(ru.ru_stime + ru.ru_utime, 1e-9),
    }))


def measure(tree: Path, model: str, variant: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model,
           "--variant", variant, "--samples", str(a.samples), "--eval-samples",
           str(a.eval_samples), "--threads", str(a.threads), "--warmup", str(a.warmup)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(a.threads)}
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{model} {variant} in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _pair(runs: list[dict], what: str) -> str:
    return f"{_med(runs, what + '_s'):.1f} ({_med(runs, what + '_cpu_s'):.1f})"


def _ratio(runs: dict[str, list[dict]], what: str) -> str:
    wall = _med(runs["before"], what + "_s") / _med(runs["after"], what + "_s")
    cpu = _med(runs["before"], what + "_cpu_s") / _med(runs["after"], what + "_cpu_s")
    return f"{wall:.2f}x ({cpu:.2f}x)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None, help="comma list; default: every registered model")
    ap.add_argument("--variants", default="unaligned,aligned")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed training batches before the timed epoch (0: time a cold start)")
    ap.add_argument("--before", type=Path, default=None, help="checkout of the code to compare")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="unaligned", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    if a.models is None:
        sys.path.insert(0, str(AFTER))
        from mer_bench.models import model_names

        a.models = ",".join(model_names())
    trees = {"after": AFTER} if a.before is None else {"before": a.before, "after": AFTER}
    print(f"{a.samples} training / {a.eval_samples} test samples per run, scaled to "
          f"{FULL_TRAIN} / {FULL_TEST}; {a.threads} thread(s); median of {a.reps}, interleaved; "
          "wall seconds (process CPU seconds, less sensitive to a shared machine)")
    header = "| model | variant | " + " | ".join(
        f"{t} s/epoch (CPU s) | {t} s/eval (CPU s) | {t} peak RSS MB | {t} sys %" for t in trees)
    if "before" in trees:
        header += " | epoch speed-up (CPU) | eval speed-up (CPU)"
    print(header + " |")
    print("|" + "---|" * (header.count("|") - 1 + 1))
    for model in a.models.split(","):
        for variant in a.variants.split(","):
            runs: dict[str, list[dict]] = {t: [] for t in trees}
            for _ in range(a.reps):
                for t, tree in trees.items():
                    runs[t].append(measure(tree, model, variant, a))
            cells = [model, variant]
            for t in trees:
                cells += [_pair(runs[t], "epoch"), _pair(runs[t], "eval"),
                          f"{_med(runs[t], 'peak_rss_mb'):.0f}",
                          f"{100 * _med(runs[t], 'sys_share'):.0f}"]
            if "before" in trees:
                cells += [_ratio(runs, k) for k in ("epoch", "eval")]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
