"""STMFM, structural temporal missing (NIAT): one contiguous block of time steps per sample.

Aligned data only. With n droppable text steps (len - 2 when [CLS]/[SEP] are present) the block
has k = round_half_even(n * r) steps and lies inside the droppable range ([1, len-2]); the same
steps vanish in every modality.

Nesting (unlike the official code, whose block start is a fresh `randint` per rate): the start
is `first + floor(u * (n - k + 1))` from one uniform u per sample. As r grows, k never shrinks,
the start never moves right and the end `start + k` never moves left (because
floor(u (m + 1)) <= floor(u m) + 1 for u < 1), so the block at r lies inside the block at r' > r.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.scenarios.base import Drops, Lengths, Rate, check_rate, draw_uniforms, register_mode
from mer_bench.scenarios.tmfm import check_aligned, shared_drops


@register_mode(
    "stmfm",
    "one block of round((len-2) r) time steps dropped in all modalities (aligned only)",
    requires_aligned=True,
)
def stmfm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """Block of k = round_half_even(n r) droppable text steps at a uniform-drawn start."""
    r = check_rate(rate)
    t = check_aligned(lengths, "stmfm")
    u = draw_uniforms(rngs, 1)[:, 0]
    droppable = lengths.droppable("text")
    n = droppable.sum(axis=1)
    first = np.where(n > 0, droppable.argmax(axis=1), 0)
    k = np.round(n * r).astype(np.int64)  # numpy rounds half to even, like the official code
    start = first + np.floor(u * (n - k + 1)).astype(np.int64)
    pos = np.arange(t)[None, :]
    block = (pos >= start[:, None]) & (pos < (start + k)[:, None])
    return shared_drops(lengths, block)
