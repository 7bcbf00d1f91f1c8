"""SMM, specific modality missing: the seven presence patterns replace the rate grid.

A pattern is named by the modalities it keeps (L = text, A = audio, V = vision) and carried as a
per-modality missing triple, e.g. "LA" -> (0.0, 0.0, 1.0). Masks are deterministic: a missing
modality loses every droppable position, a kept one loses none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer_bench.errors import UserError
from mer_bench.scenarios.base import (
    MODALITY_ORDER,
    Drops,
    GridPoint,
    Lengths,
    Rate,
    register_mode,
)

PATTERNS = ("L", "A", "V", "LA", "LV", "AV", "LAV")
_LETTER = {"text": "L", "audio": "A", "vision": "V"}


def pattern_rate(label: str) -> tuple[float, float, float]:
    """Kept-modality label -> (text, audio, vision) missing triple."""
    if label not in PATTERNS:
        raise UserError(f"unknown SMM pattern {label!r}; choose one of: {', '.join(PATTERNS)}")
    t, a, v = (0.0 if _LETTER[m] in label else 1.0 for m in MODALITY_ORDER)
    return (t, a, v)


SMM_GRID = tuple(GridPoint(p, pattern_rate(p)) for p in PATTERNS)


@register_mode(
    "smm",
    "presence patterns L/A/V/LA/LV/AV/LAV kept; other modalities dropped entirely",
)
def smm(lengths: Lengths, rate: Rate, rngs: Sequence[np.random.Generator]) -> Drops:
    """Drop every droppable position of each modality whose missing rate is 1."""
    if not isinstance(rate, (tuple, list)) or len(rate) != 3 or any(x not in (0, 1) for x in rate):
        raise UserError(
            f"smm takes a presence pattern ({', '.join(PATTERNS)}), i.e. a per-modality missing "
            f"triple of 0s and 1s, got {rate!r}"
        )
    return {
        m: lengths.droppable(m) & bool(rate[k]) for k, m in enumerate(MODALITY_ORDER)
    }
