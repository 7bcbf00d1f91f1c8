"""The generic trainer: seeded, validation-only early stopping, one checkpoint for all metrics.

Why: the peers select checkpoints on test data; here `train` is never given the test split.
Corruption is produced per batch by the scenario layer from (seed, epoch, sample id), so a run
is reproducible whatever the batch order or worker count.
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
from mer_bench.scenarios.base import Drops, GridPoint, Lengths, apply_drops

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
    idx = np.arange(n) if order is None else order
    for start in range(0, n, size):
        yield idx[start : start + size]


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
    """Metrics of one prediction set through the scorer path matching the model's output."""
    from mer_bench.metrics import classification_metrics, regression_metrics

    if model_output == "regression":
        return regression_metrics(scores.reshape(-1), split.regression_labels)
    if task == "binary":
        return classification_metrics(scores, split.classification_labels)
    return classification_metrics(None, None, logits7=scores, labels7=split.labels("seven"))


def train(
    model: BenchModel,
    train_split: Split,
    valid_split: Split,
    settings: TrainSettings,
    train_drops: TrainDrops | None,
    valid_points: Sequence[tuple[GridPoint, EvalDrops | None]],
    progress: bool = False,
    desc: str = "train",
) -> TrainResult:
    """Train with early stopping on the validation headline metric averaged over
    `valid_points`; the best state is loaded back into `model` at the end."""
    from tqdm.auto import tqdm

    device = settings.device
    model.to(device)
    optimizer = model.configure_optimizer()
    headline = HEADLINE[settings.task]
    best, best_epoch, best_state, wait = -np.inf, -1, None, 0
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc=desc, disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        model.start_epoch(epoch, settings.epochs)
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_split))
        losses: list[dict] = []
        for idx in batches(len(train_split), settings.batch_size, order):
            clean = make_batch(train_split, idx, device)
            corrupted = _corrupt(clean, train_split, idx, train_drops, epoch)
            losses.append(model.train_step(clean, corrupted, optimizer))
        vals = [
            score(model.output, settings.task,
                  predict(model, valid_split, fn, device, settings.eval_batch_size)["scores"],
                  valid_split)[headline]
            for _, fn in valid_points
        ]
        # Without validation points (timing runs) the last epoch counts as the best.
        val = float(np.mean(vals)) if vals else float(epoch)
        mean_loss = float(np.mean([sum(x.values()) for x in losses])) if losses else float("nan")
        history.append({"epoch": epoch, "loss": mean_loss, f"valid_{headline}": val})
        bar.set_postfix(loss=f"{mean_loss:.3f}", valid=f"{val:.3f}", best=f"{max(best, val):.3f}")
        if val > best:
            best, best_epoch, wait = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if wait >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    run = epoch + 1
    return TrainResult(best_epoch, float(best), run, history, seconds, seconds / max(run, 1))
