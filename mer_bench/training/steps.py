"""One optimiser step from loss terms, with gradient accumulation over micro-batches and MMSA's
clipping rules. Shared by models whose official code accumulates (MMSA's `update_epochs`, DLF)
and by wrappers (MACI) that must keep their base model's step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields

import torch
from torch import nn

from mer_bench.data.batch import Batch


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of a batch (every tensor field is batch-first)."""
    changes = {
        f.name: getattr(batch, f.name)[start:stop]
        for f in fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    if getattr(batch, "text_layers", None) is not None:
        changes["text_layers"] = tuple(h[start:stop] for h in batch.text_layers)
    return batch.with_(**changes)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of `size` covering n items; a trailing chunk of one is merged into
    the previous chunk, so no model ever sees a batch of one (a full step on one sample, a
    BatchNorm crash) unless the whole split has one sample."""
    size = max(1, int(size)) if size else max(n, 1)
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def micro_batches(batch: Batch, size: int) -> Iterator[Batch]:
    for start, stop in spans(len(batch), size):
        yield slice_batch(batch, start, stop)


def accumulated_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    losses: Callable[[Batch], dict[str, torch.Tensor]],
    micro_batch: int = 0,
    clip_value: float = 0.0,
    clip_norm: float = 0.0,
) -> dict[str, float]:
    """One optimiser step over `batch`, split in micro-batches whose gradients add up (the
    MMSA/DLF `update_epochs` scheme). `losses(part)` returns loss terms whose sum is the
    objective. Value clipping follows every backward (as MMSA), norm clipping the last one.
    Returns the terms averaged over the batch (they still sum to the objective)."""
    optimizer.zero_grad(set_to_none=True)
    params = [p for p in model.parameters() if p.requires_grad]
    logs: dict[str, float] = {}
    n = len(batch)
    for part in micro_batches(batch, micro_batch):
        terms = losses(part)
        sum(terms.values()).backward()
        if clip_value > 0:
            nn.utils.clip_grad_value_(params, clip_value)
        for k, v in terms.items():
            logs[k] = logs.get(k, 0.0) + float(v.detach()) * len(part) / n
    if clip_norm > 0:
        nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return logs
