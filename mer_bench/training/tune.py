"""`mer-bench tune`: Optuna TPE search whose objective is the validation headline metric only.

Why: CIDer's official search optimised the test metric (300 trials per task); here the test
split is never loaded into the objective, and the budget and every trial are recorded.
A model opts in by defining `suggest(trial) -> dict` (its paper's search space).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mer_bench.errors import UserError
from mer_bench.results.store import atomic_write_text


def tune_cli(
    model: str,
    scenario: str,
    dataset: str,
    variant: str,
    task: str,
    trials: int,
    epochs: int | None,
    seed: int,
    results: str,
    device: str,
    data_root: str | None,
    scale: float | None,
    text_encoder: str | None = None,
) -> str:
    """Tune as `run` trains: with `--text-encoder` (else `$MER_BENCH_TEXT_ENCODER`) every trial
    fine-tunes the encoder in the loop; the summary records the text path and its file name
    carries it (`_text-<name>`), so fixed-feature and encoder searches never overwrite each other."""
    try:
        import optuna
    except ImportError:
        raise UserError("tuning needs the `tune` extra: pip install 'mer-bench[tune]'") from None
    from mer_bench.datasets import load_dataset
    from mer_bench.models import load_builtin_models
    from mer_bench.scenarios import get_policy, get_scenario
    from mer_bench.scenarios.base import rate_point
    from mer_bench.textpath import build_with_text_encoder, resolve_text_encoder, text_path
    from mer_bench.training.trainer import TrainSettings, resolve_device, seed_torch, train

    cls = load_builtin_models().get(model).cls
    suggest = getattr(cls, "suggest", None)
    if suggest is None:
        raise UserError(f"model {model} defines no search space (a `suggest(trial)` method)")
    if trials < 1:
        raise UserError("--trials must be >= 1")
    from mer_bench.training.validate import check_model_variant

    check_model_variant(model, variant)
    sc = get_scenario(scenario)
    encoder = resolve_text_encoder(text_encoder)
    dev = resolve_device(device)
    ds = load_dataset(dataset, variant=variant, distribution=sc.distribution, task=task,
                      data_root=data_root, scale=scale)
    policy = get_policy("per-sample-uniform")
    max_epochs = epochs or getattr(cls, "max_epochs", 200)

    def objective(trial: optuna.Trial) -> float:
        hp: dict[str, Any] = suggest(trial)
        seed_torch(seed)
        m = build_with_text_encoder(model, ds.spec, task, encoder, **hp)
        m.prepare(ds["train"], cf_vocab=None)
        res = train(
            m, ds["train"], ds["valid"],
            TrainSettings(task=task, epochs=max_epochs, patience=getattr(cls, "patience", 10),
                          batch_size=getattr(cls, "batch_size", 128), seed=seed, device=dev),
            policy.bind(seed),
            [(rate_point(0.0), None)],
        )
        trial.set_user_attr("best_epoch", res.best_epoch)
        return res.best_valid

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    out = Path(results) / "tune"
    stem = f"{model}_{dataset}_{variant}_{task}_{sc.distribution}_s{seed}"
    if encoder is not None:
        stem += "_text-" + "".join(c if c.isalnum() or c in "-." else "-" for c in Path(encoder).name)
    atomic_write_text(out / f"{stem}_trials.csv", study.trials_dataframe().to_csv(index=False))
    summary = {
        "model": model,
        "dataset": dataset,
        "variant": variant,
        "task": task,
        "distribution": sc.distribution,
        "text_path": text_path(encoder),
        "objective": "validation headline metric on complete data (test never used)",
        "budget": {"trials": trials, "max_epochs": max_epochs},
        "sampler": f"TPE(seed={seed})",
        "best_value": study.best_value,
        "best_params": study.best_params,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(out / f"{stem}_best.json", json.dumps(summary, indent=2))
    return json.dumps(summary, indent=2)
