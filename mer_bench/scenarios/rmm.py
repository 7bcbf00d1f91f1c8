"""RMM, random modality missing: whole modalities of a sample vanish at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.scenarios.base import (
    MODALITY_ORDER,
    Drops,
    Lengths,
    Rate,
    draw_uniforms,
    rate_triple,
    register_mode,
)


@register_mode(
    "rmm",
    "each modality of a sample dropped entirely w.p. r ([CLS]/[SEP] kept)",
)
def rmm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """One uniform per (sample, modality); modality m of a sample is dropped iff u_m < r_m."""
    rates = rate_triple(rate)
    u = draw_uniforms(rngs, 3)
    return {
        m: (u[:, k] < rates[k])[:, None] & lengths.droppable(m)
        for k, m in enumerate(MODALITY_ORDER)
    }
