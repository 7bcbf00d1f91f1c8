"""RMFM, the paper's random modality-feature missing: one mask over all modalities at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.scenarios.base import (
    Drops,
    Lengths,
    Rate,
    check_rate,
    draw_uniforms,
    register_mode,
    split_modalities,
    threshold_drops,
)


@register_mode(
    "rmfm",
    "each droppable text/audio/vision position dropped w.p. r (one mask over all)",
)
def rmfm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """Drop each droppable position of the concatenated text|audio|vision sequence iff u < r.

    One rate for the three modalities (the paper's definition); per-modality rates are TRMFM.
    """
    r = check_rate(rate)
    u = split_modalities(lengths, draw_uniforms(rngs, sum(lengths.sizes)))
    return threshold_drops(lengths, u, {m: r for m in u})
