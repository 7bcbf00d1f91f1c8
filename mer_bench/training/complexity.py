"""`mer-bench complexity`: parameters (text encoder excluded), peak memory and seconds per epoch
for any registered model, the shape of the paper's Table VI."""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from mer_bench.training.trainer import TrainSettings, resolve_device, seed_torch, train


def measure(
    model_name: str,
    dataset: str = "synth-mosi",
    variant: str = "unaligned",
    task: str = "binary",
    device: str = "auto",
    data_root: str | None = None,
    scale: float | None = None,
    hparams: dict[str, Any] | None = None,
    epochs: int = 1,
    text_encoder: str | None = None,
) -> dict[str, Any]:
    """Measured as `run` trains: with `--text-encoder` (else `$MER_BENCH_TEXT_ENCODER`) the
    encoder is in the loop; `parameters` still excludes it (Table VI), it is counted apart."""
    from mer_bench.datasets import load_dataset
    from mer_bench.scenarios import get_policy
    from mer_bench.textpath import build_with_text_encoder, resolve_text_encoder, text_path
    from mer_bench.training.validate import check_model_hparams, check_model_variant

    check_model_hparams(model_name, hparams or {})
    check_model_variant(model_name, variant)
    encoder = resolve_text_encoder(text_encoder)
    dev = resolve_device(device)
    ds = load_dataset(dataset, variant=variant, distribution="iid", task=task,
                      data_root=data_root, scale=scale)
    seed_torch(1111)
    model = build_with_text_encoder(model_name, ds.spec, task, encoder, **(hparams or {}))
    model.prepare(ds["train"], cf_vocab=None)
    policy = get_policy("per-sample-uniform")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = train(
        model,
        ds["train"],
        ds["valid"],
        TrainSettings(task=task, epochs=epochs, patience=epochs + 1,
                      batch_size=getattr(model, "batch_size", 128), device=dev),
        policy.bind(1111),
        valid_points=[],
    )
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "model": model_name,
        "dataset": dataset,
        "variant": variant,
        "task": task,
        "device": dev,
        "threads": torch.get_num_threads(),
        "text_path": text_path(encoder),
        "parameters": model.n_parameters(),
        "text_encoder_parameters": model.n_parameters(False) - model.n_parameters(),
        # wrappers (CLUE) split their count: base, their own branch, adapters
        **getattr(model, "parameter_breakdown", dict)(),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": "cuda max allocated" if dev == "cuda" else "process peak RSS",
        "rss_before_training_mb": round(rss_before, 1),
        "seconds_per_epoch": round(res.seconds_per_epoch, 3),
        "epochs_timed": epochs,
        "seconds_total": round(seconds, 3),
        "train_samples": len(ds["train"]),
    }


def complexity_cli(model: str, **kwargs: Any) -> str:
    from tabulate import tabulate

    m = measure(model, **kwargs)
    return tabulate([(k, v) for k, v in m.items()], headers=["quantity", "value"])
