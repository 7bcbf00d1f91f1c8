"""The generic trainer: seeded, validation-only early stopping, one checkpoint for all metrics.

Why: the peers select checkpoints on test data; here `train` is never given the test split.
Corruption is produced per batch by the scenario layer from (seed, epoch, sample id), so a run
is reproducible whatever the batch order or worker count. Selection follows the model's
declared criterion (`BenchModel.selection`, see `selection.py`), schedules see the run's epoch
budget, and no batch of one reaches a model (`steps.spans`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mer_bench.data.batch import Batch, make_batch
from mer_bench.data.schema import Split
from mer_bench.metrics import HEADLINE
from mer_bench.models import BenchModel
from mer_bench.scenarios.base import Drops, GridPoint, Lengths, apply_drops, rate_point
from mer_bench.training.selection import selection_key
from mer_bench.training.steps import spans

# (ids, lengths, epoch) -> drops for one training batch
TrainDrops = Callable[[Sequence[str], Lengths, int], Drops]
# (ids, lengths) -> drops for one evaluation batch
EvalDrops = Callable[[Sequence[str], Lengths], Drops]


@dataclass
class TrainSettings:
    task: str = "binary"
    epochs: int = 200
    patience: int = 10
    batch_size: int = 128
    seed: int = 1111
    device: str = "cpu"
    eval_batch_size: int = 256


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    updates: int = 0  # optimiser steps taken
    selection: str = "headline"  # the criterion (checkpoints written before it was recorded)
    best_valid_loss: float = float("nan")


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is a user error."""
    from mer_bench.errors import UserError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available; use --device cpu")
    return device


def seed_torch(seed: int) -> None:
    """Seed torch for parameter initialisation and dropout (numpy's global RNG is not used)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def batches(n: int, size: int, order: np.ndarray | None = None):
    """Index arrays of about `size`; a trailing batch of one joins the previous one."""
    idx = np.arange(n) if order is None else order
    for start, stop in spans(n, size):
        yield idx[start:stop]


def _corrupt(batch: Batch, split: Split, idx: np.ndarray, drops_fn, *args) -> Batch:
    if drops_fn is None:
        return batch
    drops = drops_fn([str(i) for i in split.id[idx]], Lengths.from_batch(batch), *args)
    return apply_drops(batch, drops)


@torch.no_grad()
def predict(
    model: BenchModel,
    split: Split,
    drops_fn: EvalDrops | None,
    device: str,
    batch_size: int = 256,
    counterfactual: bool = False,
    keep_joint: bool = False,
) -> dict[str, np.ndarray]:
    """Scores (and counterfactual scores, joint representations) for a split under the given
    corruption; the corrupted features exist only one batch at a time."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {"scores": [], "cf_scores": [], "joint": []}
    for idx in batches(len(split), batch_size):
        batch = _corrupt(make_batch(split, idx, device), split, idx, drops_fn)
        res = model(batch)
        out["scores"].append(res.scores.float().cpu().numpy())
        if counterfactual:
            out["cf_scores"].append(model.counterfactual_scores(batch).float().cpu().numpy())
        if keep_joint and res.joint is not None:
            out["joint"].append(res.joint.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def score(model_output: str, task: str, scores: np.ndarray, split: Split) -> dict[str, float]:
    """Metrics of one prediction set on a split: the scoring stage's rule
    (`mer_bench.scoring.metrics_of`) with the split's labels."""
    from mer_bench.scoring import metrics_of

    return metrics_of(model_output, task, scores,
                      {"y_reg": split.regression_labels, "labels": split.labels(task)})


@torch.no_grad()
def validate(
    model: BenchModel, split: Split, drops_fn: EvalDrops | None, device: str, batch_size: int = 256
) -> tuple[np.ndarray, float]:
    """Scores and the sample-weighted mean `selection_loss` of a split under one corruption."""
    model.eval()
    scores, total = [], 0.0
    for idx in batches(len(split), batch_size):
        batch = _corrupt(make_batch(split, idx, device), split, idx, drops_fn)
        out = model(batch)
        total += float(model.selection_loss(out, batch)) * len(idx)
        scores.append(out.scores.float().cpu().numpy())
    return np.concatenate(scores), total / max(len(split), 1)


def _count_updates(optimizer: torch.optim.Optimizer, count: list[int] | None = None) -> list[int]:
    """A one-element counter of optimiser steps (whatever a model's train_step does); pass
    `count` to go on counting on a new optimiser."""
    count = [0] if count is None else count

    def hook(*_args) -> None:
        count[0] += 1

    optimizer.register_step_post_hook(hook)
    return count


def _step_scheduler(scheduler, valid_loss: float) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_loss)
    else:
        scheduler.step()


def _valid_epoch(model, valid_split, valid_points, settings) -> tuple[float, float]:
    """(mean selection loss, mean headline metric) over the validation points."""
    headline = HEADLINE[settings.task]
    losses, heads = [], []
    for _, fn in valid_points:
        scores, loss = validate(model, valid_split, fn, settings.device, settings.eval_batch_size)
        losses.append(loss)
        heads.append(score(model.output, settings.task, scores, valid_split)[headline])
    return float(np.mean(losses)), float(np.mean(heads))


def _begin_epoch(model: BenchModel, epoch: int, epochs: int) -> None:
    model.train()
    model.start_epoch(epoch, epochs)


def _train_epoch(model, train_split, settings, train_drops, optimizer, epoch: int) -> float:
    """One epoch of training steps in the (seed, epoch) order (after `model.start_epoch`);
    the mean total loss."""
    order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_split))
    losses: list[dict] = []
    for idx in batches(len(train_split), settings.batch_size, order):
        clean = make_batch(train_split, idx, settings.device)
        corrupted = _corrupt(clean, train_split, idx, train_drops, epoch)
        losses.append(model.train_step(clean, corrupted, optimizer))
    return float(np.mean([sum(x.values()) for x in losses])) if losses else float("nan")


def _fit_epoch(model, train_split, valid_split, settings, train_drops, points, optimizer,
               updates: list[int], epoch: int) -> tuple[dict, tuple[float, ...]]:
    """Train one epoch (after `_begin_epoch`) and validate over `points`; (its history entry,
    its selection key). Without points (a timing run) the last epoch counts as the best."""
    headline = HEADLINE[settings.task]
    lr = float(optimizer.param_groups[0]["lr"])
    loss = _train_epoch(model, train_split, settings, train_drops, optimizer, epoch)
    if points:
        v_loss, v_head = _valid_epoch(model, valid_split, points, settings)
        key = selection_key(model.selection, v_loss, v_head)
    else:
        v_loss, v_head, key = float("nan"), float("nan"), (float(epoch),)
    return {"epoch": epoch, "loss": loss, "lr": lr, "valid_loss": v_loss,
            f"valid_{headline}": v_head, "updates": updates[0]}, key


@dataclass
class WarmupStore:
    """Where a model's warm-up stage (epochs before `BenchModel.selection_start`) is kept.
    The warm-up trains and validates on complete data and has no patience, so it depends
    only on the model, data, seed and budget, and every run sharing those (each missing rate
    of a one-to-one grid, each training policy) starts from one copy."""

    load: Callable[[], dict | None]
    save: Callable[[dict], None]


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


COMPLETE_VALID = ((rate_point(0.0), None),)


def _warm_up(model, train_split, valid_split, settings, start: int, store: WarmupStore | None,
             bar, points: Sequence = COMPLETE_VALID) -> tuple[list[dict], int, bool]:
    """Epochs 0..start-1 on complete data at a fixed learning rate, ending on the epoch with
    the best complete-data validation (by the model's criterion), as a pretrained model is
    chosen; or their stored result (those weights and the RNG state after epoch start-1, so
    the run goes on exactly as without the store). A timing run (no `points`) keeps the last
    epoch. (history, optimiser steps, loaded?)"""
    state = store.load() if store is not None else None
    loaded = state is not None
    if not loaded:
        optimizer = model.configure_optimizer()
        updates = _count_updates(optimizer)
        history: list[dict] = []
        best_key, best_state = None, None
        for epoch in range(start):
            _begin_epoch(model, epoch, settings.epochs)
            entry, key = _fit_epoch(model, train_split, valid_split, settings, None, points,
                                    optimizer, updates, epoch)
            if best_key is None or key > best_key:
                best_key, best_state = key, copy.deepcopy(model.state_dict())
            history.append({**entry, "stage": "warm-up"})
            bar.update(-1, 0, loss=f"{entry['loss']:.3f}",
                       valid_loss=f"{entry['valid_loss']:.3f}", stage="warm-up")
        state = {"model": best_state, "rng": _rng_state(), "history": history,
                 "updates": updates[0]}
        if store is not None:
            store.save(state)
    else:
        bar.skip(start, stage="warm-up loaded")
    model.load_state_dict(state["model"])
    _set_rng_state(state["rng"])
    return list(state["history"]), int(state["updates"]), loaded


def train(
    model: BenchModel,
    train_split: Split,
    valid_split: Split,
    settings: TrainSettings,
    train_drops: TrainDrops | None,
    valid_points: Sequence[tuple[GridPoint, EvalDrops | None]],
    progress: bool = False,
    desc: str = "train",
    warmup: WarmupStore | None = None,
) -> TrainResult:
    """Train with early stopping on the model's selection criterion over `valid_points`
    (validation data only), from `selection_start` on after a warm-up (kept in `warmup`);
    the best state is loaded back into `model` at the end."""
    from mer_bench.training.progress import EpochBar

    model.to(settings.device)
    headline = HEADLINE[settings.task]
    first = model.selection_start(settings.epochs)
    bar = EpochBar(settings.epochs, settings.patience, desc, progress, start=first)
    t0 = time.perf_counter()
    history, done, loaded = ([], 0, False) if first == 0 else _warm_up(
        model, train_split, valid_split, settings, first, warmup, bar,
        COMPLETE_VALID if valid_points else ())
    optimizer = model.configure_optimizer()
    updates = _count_updates(optimizer, [done])
    scheduler = None
    best_key: tuple[float, ...] | None = None
    best = {"epoch": -1, "head": float("nan"), "loss": float("nan")}
    best_state, wait, epoch = None, 0, first
    for epoch in range(first, settings.epochs):
        _begin_epoch(model, epoch, settings.epochs)
        if epoch == first:  # built after start_epoch(first): budget-aware schedules see it
            scheduler = model.configure_scheduler(optimizer)
        entry, key = _fit_epoch(model, train_split, valid_split, settings, train_drops,
                                valid_points, optimizer, updates, epoch)
        _step_scheduler(scheduler, entry["valid_loss"])
        history.append(entry)
        if best_key is None or key > best_key:
            best_key, wait = key, 0
            best = {"epoch": epoch, "head": entry[f"valid_{headline}"], "loss": entry["valid_loss"]}
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
        bar.update(best["epoch"], wait, loss=f"{entry['loss']:.3f}",
                   valid_loss=f"{entry['valid_loss']:.3f}", valid=f"{entry[f'valid_{headline}']:.3f}")
        if wait >= settings.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    run = epoch + 1
    ran_here = run - first if loaded else run
    return TrainResult(
        best["epoch"], float(best["head"]), run, history, seconds, seconds / max(ran_here, 1),
        updates=updates[0], selection=model.selection, best_valid_loss=float(best["loss"]),
    )
