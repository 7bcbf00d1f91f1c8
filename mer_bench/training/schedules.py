"""Learning-rate schedules of the official codes, built from the run's epoch budget.

Why: a schedule written in absolute epochs (LNLN's 20-epoch warm-up of a 200-epoch run) never
leaves its warm-up under a smaller `--epochs`; the papers define them as fractions of the
budget, so models build them in `configure_scheduler` after the trainer has told them the
budget. The trainer steps every schedule once per epoch, plateau ones on the validation loss.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(epoch: int, warmup: float, cosine: float) -> float:
    """LNLN's GradualWarmupScheduler (multiplier 1) then CosineAnnealingLR, per epoch: the
    factor rises linearly from 0 at epoch 0 to 1 at `warmup` epochs (fractional lengths as
    officially), then the cosine starts at 1 on the first epoch past the warm-up."""
    if warmup > 0 and epoch <= warmup:
        return epoch / warmup
    if cosine <= 0:
        return 1.0
    start = math.floor(warmup) + 1 if warmup > 0 else 0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / cosine))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, epochs: int, warmup_fraction: float, cosine_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up over `warmup_fraction` of the budget, then cosine over `cosine_fraction`."""
    w, c = warmup_fraction * epochs, cosine_fraction * epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_cosine_factor(e, w, c))


def plateau(
    optimizer: torch.optim.Optimizer, factor: float, patience: int
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """ReduceLROnPlateau on the validation loss (mode min), as MMSA, DLF and MPLMM."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience
    )
