"""Missing-data scenarios: one module per mode, composed with iid/ood/cross into SCENARIOS.

`SCENARIOS` holds `{mode}-{dist}` for every registered mode and distribution; each carries its
test grid (rates 0.0..1.0, or SMM's seven presence patterns), version and definition.
"""

from __future__ import annotations

from mer_bench.errors import UserError
from mer_bench.registry import Registry
from mer_bench.scenarios import rmfm, rmm, smm, stmfm, tmfm, trmfm  # noqa: F401  (registers modes)
from mer_bench.scenarios.base import (
    DEFAULT_RATES,
    DISTRIBUTIONS,
    MODES,
    Lengths,
    Scenario,
    apply_drops,
    counterfactual_text,
    rate_point,
)
from mer_bench.scenarios.smm import SMM_GRID
from mer_bench.scenarios.training import POLICIES, TrainingPolicy, get_policy

SCENARIOS: Registry[Scenario] = Registry("scenario")

for _name, _mode in MODES.items():
    _grid = SMM_GRID if _name == "smm" else tuple(rate_point(r) for r in DEFAULT_RATES)
    for _dist in DISTRIBUTIONS:
        SCENARIOS.register(f"{_name}-{_dist}", Scenario(f"{_name}-{_dist}", _mode, _dist, _grid))


def get_scenario(name_or_mode: str, distribution: str = "iid") -> Scenario:
    """A scenario by full name (`rmfm-ood`) or by bare mode name (`rmfm`, then `distribution`)."""
    if name_or_mode not in SCENARIOS and name_or_mode in MODES:
        if distribution not in DISTRIBUTIONS:
            raise UserError(
                f"unknown distribution {distribution!r}; choose one of: {', '.join(DISTRIBUTIONS)}"
            )
        return SCENARIOS.get(f"{name_or_mode}-{distribution}")
    return SCENARIOS.get(name_or_mode)


def distribution_of(name: str) -> str:
    """The distribution a scenario name stands for: the registered scenario's own, else the
    name's `-{dist}` suffix (a hand-made store may hold names nobody registered)."""
    if name in SCENARIOS:
        return SCENARIOS.get(name).distribution
    return name.rsplit("-", 1)[-1]


def check_compatible(scenario: Scenario, aligned: bool) -> None:
    """TMFM and STMFM share time steps across modalities, so they need aligned data."""
    if scenario.requires_aligned and not aligned:
        raise UserError(f"scenario {scenario.name} needs aligned data; use --variant aligned")


__all__ = [
    "MODES",
    "POLICIES",
    "SCENARIOS",
    "Lengths",
    "Scenario",
    "TrainingPolicy",
    "apply_drops",
    "check_compatible",
    "counterfactual_text",
    "distribution_of",
    "get_policy",
    "get_scenario",
]
