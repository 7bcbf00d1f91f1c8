"""Run cells: (model, scenario, seed) -> train once (or per rate), score every grid point, store.

Why one module owns this: data flows one way (dataset -> scenario corruption -> model ->
scorer -> store) and the harness, not the model, owns masks, selection and test data. A cell's
training is keyed separately from its scenario (`train_key`), so one trained model serves every
scenario with the same training distribution (rmfm-iid, trmfm-iid, rmm-iid, smm-iid ...).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mer_bench.errors import UserError
from mer_bench.results.store import Store, atomic_write_bytes
from mer_bench.training import provenance
from mer_bench.training.trainer import (
    TrainResult,
    TrainSettings,
    predict,
    resolve_device,
    score,
    seed_torch,
    train,
)

JOINT_SAMPLES = 300  # joint representations kept per stored grid point (Fig. 8 scatter)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a cell except the seed. `None` means "the model's default"."""

    model: str
    scenario: str
    dataset: str = "synth-mosi"
    variant: str = "unaligned"
    task: str = "binary"
    protocol: str = "fair"
    epochs: int | None = None
    device: str = "auto"
    rates: tuple[float, ...] | None = None
    train_policy: str | None = None
    batch_size: int | None = None
    patience: int | None = None
    hparams: tuple[tuple[str, Any], ...] = ()
    data_root: str | None = None
    scale: float | None = None
    compat: str | None = None
    ablations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """A cell with every default filled in, plus its identities."""

    cfg: RunConfig
    seed: int
    model_cls: type
    scenario: Any
    hparams: dict[str, Any]
    compat: frozenset[str]
    policy: str
    epochs: int
    patience: int
    batch_size: int
    run_id: str
    config_hash: str

    def train_key(self, point_label: str | None = None) -> str:
        c = self.cfg
        payload = {
            "model": c.model,
            "dataset": c.dataset,
            "variant": c.variant,
            "task": c.task,
            "distribution": self.scenario.distribution,
            "scale": c.scale,
            "seed": self.seed,
            "epochs": self.epochs,
            "patience": self.patience,
            "batch_size": self.batch_size,
            "policy": self.policy,
            "hparams": self.hparams,
            "one_to_one_point": point_label,
            "one_to_one_mode": self.scenario.mode.name if point_label is not None else None,
        }
        return f"{c.model.replace('+', '-')}__{c.dataset}__{provenance.config_hash(payload)}"


def resolve(cfg: RunConfig, seed: int) -> Resolved:
    """Fill defaults and validate names without loading data (errors are one line, exit 2)."""
    from mer_bench.models import load_builtin_models
    from mer_bench.scenarios import get_scenario

    if cfg.task not in ("binary", "seven"):
        raise UserError(f"unknown task {cfg.task!r}; choose one of: binary, seven")
    if cfg.protocol not in ("fair", "paper"):
        raise UserError(f"unknown protocol {cfg.protocol!r}; choose one of: fair, paper")
    registry = load_builtin_models()
    base, *wrappers = cfg.model.split("+")
    cls = registry.get(base).cls
    if wrappers:
        from mer_bench.models import WRAPPERS

        for w in wrappers:
            WRAPPERS.get(w)
    scenario = get_scenario(cfg.scenario)
    if cfg.rates is not None:
        scenario = scenario.with_rates(cfg.rates)
    from mer_bench.data.registry import DATASETS

    if not cfg.dataset.endswith(".pkl"):
        entry = DATASETS.get(cfg.dataset)
        if cfg.variant not in entry.variants:
            raise UserError(
                f"dataset {cfg.dataset} has no variant {cfg.variant!r}; choose one of: "
                + ", ".join(entry.variants)
            )
        if scenario.distribution == "cross" and entry.cross_loader and cfg.variant != "aligned":
            raise UserError(
                f"{cfg.scenario} on {cfg.dataset} uses the aligned cross-dataset release; add "
                "--variant aligned"
            )
    from mer_bench.scenarios import check_compatible

    check_compatible(scenario, aligned=cfg.variant == "aligned")

    hp = dict(cfg.hparams)
    compat: frozenset[str] = frozenset()
    if cfg.compat or cfg.ablations:
        if "compat" not in cls.defaults:
            raise UserError(f"model {base} has no --compat/--ablate switches")
        if cfg.compat:
            from cider.compat import expand_compat

            compat = expand_compat(cfg.compat)
            hp["compat"] = ",".join(sorted(compat))
        if cfg.ablations:
            hp["ablations"] = tuple(cfg.ablations)
    unknown = {k for k in hp if "." not in k} - set(cls.defaults)
    if unknown:
        raise UserError(
            f"unknown hyper-parameter(s) {', '.join(sorted(unknown))} for {base}; valid: "
            + (", ".join(sorted(cls.defaults)) or "(none)")
        )
    if cfg.train_policy:
        policy = cfg.train_policy
    elif "per_element_train" in compat:
        policy = "per-element-uniform"
    else:
        policy = "per-sample-uniform"
    if cls.training == "one-to-one":
        policy = "fixed-rate"
    epochs = cfg.epochs or getattr(cls, "max_epochs", 200)
    patience = cfg.patience or getattr(cls, "patience", 10)
    batch_size = cfg.batch_size or getattr(cls, "batch_size", 128)
    payload = {
        "grid": scenario.grid_labels(),
        "scenario_version": scenario.version,
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "policy": policy,
        "hparams": hp,
        "scale": cfg.scale,
    }
    h = provenance.config_hash(payload)
    run_id = "__".join(
        [
            cfg.model.replace("+", "-"),
            cfg.dataset,
            cfg.variant,
            cfg.task,
            scenario.name,
            cfg.protocol,
            f"s{seed}",
            h,
        ]
    )
    return Resolved(
        cfg, seed, cls, scenario, hp, compat, policy, epochs, patience, batch_size, run_id, h
    )


# ----------------------------------------------------------------------------- one cell
def effective_hparams(model: torch.nn.Module) -> dict[str, Any]:
    """Every hyper-parameter the model ran with (its defaults merged with the request), a
    wrapped base's under "base": the config hash covers only what was requested, so the
    record is what tells two code versions' defaults apart."""
    h = dict(getattr(model, "hparams", {}))
    base = getattr(model, "base", None)
    if base is not None and hasattr(base, "hparams"):
        h["base"] = effective_hparams(base)
    return json.loads(json.dumps(h, default=str))


def _train_drops(r: Resolved, point):
    """The training corruption: a registered policy, or (one-to-one) the scenario's own mode
    at that grid point; draws depend only on (seed, epoch, sample id)."""
    from mer_bench.scenarios import get_policy
    from mer_bench.scenarios.base import sample_rngs

    if r.policy == "fixed-rate":
        mode = r.scenario.mode

        def drops(ids, lengths, epoch):
            rngs = sample_rngs(r.seed, f"train|fixed|{mode.name}|{epoch}", ids)
            return mode.fn(lengths, point.rate, rngs)

        return drops
    if r.policy == "none":
        return None
    policy = get_policy(r.policy)
    return policy.bind(r.seed)


def _eval_drops(r: Resolved, point):
    return lambda ids, lengths: r.scenario.drops(ids, lengths, point, r.seed)


def _cf_vocab(r: Resolved, ds) -> np.ndarray | None:
    from mer_bench.splits.vocabulary import cf_vocab_ids

    if ds["train"].text_bert is None:
        return None
    return cf_vocab_ids(ds, r.cfg.task, stale_cv="stale_cv" in r.compat)


# checkpoints written by this process: under `force` only these are reused, so a forced grid
# retrains each shared training once (cells sharing one run in the same process)
_FRESH: set[str] = set()


def _build_and_train(
    r: Resolved, ds, device: str, store: Store, point, progress: bool, retrain: bool = False
):
    """Build the model, prepare it on training data, and train it or load its checkpoint
    (with `retrain`, only a checkpoint this process wrote)."""
    from mer_bench.models import build_model

    seed_torch(r.seed)
    model = build_model(r.cfg.model, ds.spec, r.cfg.task, **r.hparams)
    model.prepare(ds["train"], cf_vocab=_cf_vocab(r, ds))
    model.to(device)
    key = r.train_key(point.label if r.policy == "fixed-rate" else None)
    ckpt = store.checkpoint_path(key)
    if ckpt.exists() and (not retrain or str(ckpt) in _FRESH):
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        info = state["info"]
        return model, TrainResult(**info), key, True
    settings = TrainSettings(
        task=r.cfg.task,
        epochs=r.epochs,
        patience=r.patience,
        batch_size=r.batch_size,
        seed=r.seed,
        device=device,
    )
    from mer_bench.scenarios.base import rate_point

    val_points = (
        [(point, _eval_drops(r, point))]
        if r.policy == "fixed-rate"
        else [(rate_point(0.0), None)]
    )
    result = train(
        model,
        ds["train"],
        ds["valid"],
        settings,
        _train_drops(r, point),
        val_points,
        progress=progress,
        desc=f"{r.cfg.model} s{r.seed}" + (f" @{point.label}" if r.policy == "fixed-rate" else ""),
    )
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "info": asdict(result)}, buf)
    atomic_write_bytes(ckpt, buf.getvalue())
    _FRESH.add(str(ckpt))
    return model, result, key, False


def run_cell(cfg: RunConfig, seed: int, results: str, force: bool = False, progress: bool = False):
    """Train and evaluate one (config, seed) cell and write it to the store; returns its record
    (or the existing record when the cell is already finished and `force` is False)."""
    from tqdm.auto import tqdm

    from mer_bench.datasets import load_dataset
    from mer_bench.metrics import HEADLINE, auilc, debias, oracle_tau_metrics, select_tau

    r = resolve(cfg, seed)
    store = Store(results)
    if store.is_done(r.run_id) and not force:
        return store.load_record(r.run_id)
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    ds = load_dataset(
        cfg.dataset,
        variant=cfg.variant,
        distribution=r.scenario.distribution,
        task=cfg.task,
        data_root=cfg.data_root,
        scale=cfg.scale,
    )
    t_data = time.perf_counter() - t_start
    task = cfg.task
    valid, test = ds["valid"], ds["test"]
    points = list(r.scenario.grid)
    one_to_one = r.policy == "fixed-rate"

    trained: dict[str, tuple] = {}
    if not one_to_one:
        model, tres, key, cached = _build_and_train(
            r, ds, device, store, points[0], progress, retrain=force
        )
        trained = {p.label: (model, tres, key, cached) for p in points}
    t_train = time.perf_counter() - t_start - t_data

    preds: dict[str, np.ndarray] = {
        "ids": np.asarray(test.id).astype(str),
        "y_reg": test.regression_labels,
        "labels": test.labels(task),
    }
    valid_out: dict[str, dict] = {}
    test_out: dict[str, dict] = {}
    keep_joint = {points[0].label, points[len(points) // 2].label, points[-1].label}
    bar = tqdm(points, desc="evaluate", disable=not progress, leave=False)
    for p in bar:
        if one_to_one:
            trained[p.label] = _build_and_train(r, ds, device, store, p, progress, retrain=force)
        model = trained[p.label][0]
        cf = bool(getattr(model, "counterfactual", False))
        if "split_class_means" in r.compat:
            model.prepare_eval(test)
        test_out[p.label] = predict(
            model, test, _eval_drops(r, p), device, counterfactual=cf,
            keep_joint=p.label in keep_joint,
        )
        if cf and cfg.protocol == "fair":
            if "split_class_means" in r.compat:
                model.prepare_eval(valid)
            valid_out[p.label] = predict(model, valid, _eval_drops(r, p), device, counterfactual=True)
    t_eval = time.perf_counter() - t_start - t_data - t_train

    # --- scoring: tau on validation (fair) or per metric and point on test (paper, oracle)
    model0 = trained[points[0].label][0]
    cf_model = bool(getattr(model0, "counterfactual", False))
    tau_info: dict[str, Any] = {"counterfactual": cf_model}
    metrics: dict[str, dict[str, float]] = {}
    if cf_model and cfg.protocol == "fair":
        tau, _ = select_tau(
            [valid_out[p.label]["scores"] for p in points],
            [valid_out[p.label]["cf_scores"] for p in points],
            [valid.labels(task) for _ in points],
            task,
        )
        tau_info.update(tau=float(tau), chosen_on="valid", rule="max mean headline over grid")
        for p in points:
            o = test_out[p.label]
            metrics[p.label] = score(model0.output, task, debias(o["scores"], o["cf_scores"], tau), test)
            preds[f"valid_scores@{p.label}"] = valid_out[p.label]["scores"]
            preds[f"valid_cf_scores@{p.label}"] = valid_out[p.label]["cf_scores"]
        preds["valid_labels"] = valid.labels(task)
    elif cf_model:
        taus = {}
        for p in points:
            o = test_out[p.label]
            metrics[p.label], taus[p.label] = oracle_tau_metrics(
                o["scores"], o["cf_scores"], test.labels(task), task
            )
        tau_info.update(tau=taus, chosen_on="test (oracle, per metric and point)")
    else:
        for p in points:
            metrics[p.label] = score(model0.output, task, test_out[p.label]["scores"], test)
    for p in points:
        o = test_out[p.label]
        preds[f"scores@{p.label}"] = o["scores"]
        if "cf_scores" in o:
            preds[f"cf_scores@{p.label}"] = o["cf_scores"]
        if "joint" in o:
            preds[f"joint@{p.label}"] = o["joint"][:JOINT_SAMPLES].astype(np.float16)

    rows = pd.DataFrame(
        [
            {
                "run_id": r.run_id,
                "model": cfg.model,
                "dataset": cfg.dataset,
                "variant": cfg.variant,
                "task": task,
                "scenario": r.scenario.name,
                "protocol": cfg.protocol,
                "seed": seed,
                "rate": p.label,
                "metric": m,
                "value": v,
            }
            for p in points
            for m, v in metrics[p.label].items()
        ]
    )
    auilcs = {}
    if r.scenario.numeric and len(points) > 1:
        xs = [float(p.rate) for p in points]
        for m in metrics[points[0].label]:
            auilcs[m] = float(auilc(xs, [metrics[p.label][m] for p in points]))
    tres = trained[points[0].label][1]
    record = {
        "run_id": r.run_id,
        "status": "finished",
        "model": cfg.model,
        "model_paper": getattr(r.model_cls, "paper", ""),
        "output": model0.output,
        "training_mode": "one-to-one" if one_to_one else "one-to-all",
        "dataset": cfg.dataset,
        "variant": cfg.variant,
        "task": task,
        "scenario": r.scenario.name,
        "scenario_version": r.scenario.version,
        "scenario_definition": r.scenario.definition,
        "distribution": r.scenario.distribution,
        "protocol": cfg.protocol,
        "oracle": cfg.protocol == "paper" and cf_model,
        "seed": seed,
        "grid": [p.label for p in points],
        "config": {**asdict(cfg), "resolved_hparams": r.hparams},
        "config_hash": r.config_hash,
        "train_keys": sorted({v[2] for v in trained.values()}),
        "checkpoint_reused": all(v[3] for v in trained.values()),
        "epochs": r.epochs,
        "patience": r.patience,
        "batch_size": r.batch_size,
        "train_policy": r.policy,
        "compat": sorted(r.compat),
        "ablations": list(cfg.ablations),
        "text_missing": "unk-id" if r.hparams.get("text_encoder") else "zero-feature",
        "selection": "early stopping on the validation headline metric "
        + ("at the training rate" if one_to_one else "on complete validation data"),
        "headline": HEADLINE[task],
        "tau": tau_info,
        "n_parameters": int(model0.n_parameters()),
        "model_hparams": effective_hparams(model0),
        "data": {
            "name": ds.name,
            "source": ds.source,
            "sha256": ds.sha256,
            "counts": ds.counts(),
            "dims": list(ds.spec.dims),
            "lens": list(ds.spec.lens),
            "meta": {k: v for k, v in ds.meta.items() if isinstance(v, str | int | float | bool)},
            # cross-dataset: which test set (and its checksum), and how it was fitted
            **({"cross": ds.meta["cross"]} if "cross" in ds.meta else {}),
        },
        "training": {
            "best_epoch": tres.best_epoch,
            "best_valid": tres.best_valid,
            "epochs_run": tres.epochs_run,
            "seconds_per_epoch": tres.seconds_per_epoch,
            "history": tres.history,
        },
        "timings": {"data_s": t_data, "train_s": t_train, "eval_s": t_eval},
        "peak_memory_mb": provenance.peak_memory_mb(device),
        "environment": provenance.environment(device),
        "versions": provenance.package_versions(),
        "git_commit": provenance.git_commit(),
        "auilc": auilcs,
        "metrics": metrics,
    }
    store.write_run(r.run_id, record, rows, preds)
    return record


# ----------------------------------------------------------------------------- many cells
def _worker(cells: list[tuple[RunConfig, int]], results: str, force: bool, threads: int):
    """Run a group of cells sharing one training in one process, with a fixed thread count so
    parallel workers do not oversubscribe the cores."""
    torch.set_num_threads(threads)
    return [run_cell(cfg, seed, results, force=force)["run_id"] for cfg, seed in cells]


def _groups(todo: list[tuple[Resolved, RunConfig, int]]) -> list[list[tuple[RunConfig, int]]]:
    groups: dict[str, list[tuple[RunConfig, int]]] = {}
    for r, cfg, seed in todo:
        groups.setdefault(r.train_key(), []).append((cfg, seed))
    return list(groups.values())


def run_cells(
    cells: Sequence[tuple[RunConfig, int]],
    results: str = "results",
    force: bool = False,
    jobs: int = 1,
    backend: str = "joblib",
    address: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every cell not yet in the store (all of them with `force`); cells sharing a training
    run in one job; joblib on one machine, Ray on a cluster, through the same worker."""
    resolved = [(resolve(cfg, seed), cfg, seed) for cfg, seed in cells]  # validate everything first
    store = Store(results)
    todo = [t for t in resolved if force or not store.is_done(t[0].run_id)]
    done = len(resolved) - len(todo)
    if progress and done:
        print(f"{done} of {len(resolved)} cell(s) already finished in {results}; skipping them")
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    groups = _groups(todo)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(groups) or 1)))
    if backend == "ray":
        _run_ray(groups, results, force, threads, address)
    elif jobs == 1 or len(groups) <= 1:
        for group in groups:
            for cfg, seed in group:
                run_cell(cfg, seed, results, force=force, progress=progress)
    else:
        from joblib import Parallel, delayed

        Parallel(n_jobs=jobs)(delayed(_worker)(g, results, force, threads) for g in groups)
    records = [store.load_record(t[0].run_id) for t in resolved if store.is_done(t[0].run_id)]
    if progress:
        print(summary_table(records))
    return records


def _run_ray(groups, results: str, force: bool, threads: int, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs the `ray` extra: pip install 'mer-bench[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    remote = ray.remote(num_cpus=threads)(_worker)
    ray.get([remote.remote(g, os.path.abspath(results), force, threads) for g in groups])


def summary_table(records: list[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for rec in records:
        head = rec["headline"]
        first = rec["grid"][0]
        rows.append(
            [
                rec["model"],
                rec["dataset"],
                rec["scenario"],
                rec["task"],
                rec["protocol"] + (" (oracle)" if rec.get("oracle") else ""),
                rec["seed"],
                f"{100 * rec['metrics'][first][head]:.2f}",
                f"{100 * rec['auilc'][head]:.2f}" if head in rec.get("auilc", {}) else "-",
                "oracle" if isinstance(rec["tau"].get("tau"), dict) else rec["tau"].get("tau", "-"),
            ]
        )
    return tabulate(
        rows,
        headers=["model", "dataset", "scenario", "task", "protocol", "seed",
                 "headline@first x100", "AUILC x100", "tau"],
    )

