"""TMFM, temporal modality-feature missing (NIAT): the same time steps vanish in every modality.

Aligned data only. The time axis is the text's: a step is droppable when it is a droppable
text position ([CLS]/[SEP] kept, which also keeps audio/vision steps 0 and len-1, as the official
code does) and it is dropped in modality m only where m has a valid frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.errors import UserError
from mer_bench.scenarios.base import (
    MODALITY_ORDER,
    Drops,
    Lengths,
    Rate,
    check_rate,
    draw_uniforms,
    register_mode,
)


def check_aligned(lengths: Lengths, mode: str) -> int:
    """The common sequence length; unequal padded sizes mean unaligned data."""
    if len(set(lengths.sizes)) != 1:
        raise UserError(
            f"{mode} needs aligned data (equal sequence lengths), got sizes {lengths.sizes}; "
            "use --variant aligned"
        )
    return lengths.sizes[0]


def shared_drops(lengths: Lengths, steps: np.ndarray) -> Drops:
    """Apply a (B, T) mask of dropped time steps to every modality's droppable positions."""
    steps = steps & lengths.droppable("text")
    return {m: steps & lengths.droppable(m) for m in MODALITY_ORDER}


@register_mode(
    "tmfm",
    "each time step dropped w.p. r in all modalities at once (aligned only)",
    requires_aligned=True,
)
def tmfm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """One uniform per time step; step j is dropped in text, audio and vision iff u_j < r."""
    r = check_rate(rate)
    u = draw_uniforms(rngs, check_aligned(lengths, "tmfm"))
    return shared_drops(lengths, u < r)
