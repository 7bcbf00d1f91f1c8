"""Traditional RMFM (the TFR-Net/MMSA convention): an independent mask per modality.

With equal rates this is the same distribution as RMFM (the official code's `RMFM_same`
differs from `RMFM` only in its random stream); what it adds is one rate per modality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.scenarios.base import (
    Drops,
    Lengths,
    Rate,
    draw_uniforms,
    rate_triple,
    register_mode,
    split_modalities,
    threshold_drops,
)


@register_mode(
    "trmfm",
    "traditional RMFM: an independent mask per modality, position dropped w.p. r_m",
)
def trmfm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """Drop position j of modality m iff u_mj < r_m; a float rate means r_t = r_a = r_v."""
    rates = dict(zip(("text", "audio", "vision"), rate_triple(rate)))
    u = split_modalities(lengths, draw_uniforms(rngs, sum(lengths.sizes)))
    return threshold_drops(lengths, u, rates)
