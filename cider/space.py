"""CIDer's hyper-parameter search space (paper Table II, official `main.py`) as data.

Why as data: `mer-bench tune` and the docs read the same table, and the fixed values are
recorded next to the tuned ones so a tuned run states everything it did not search.
Keys are the `cider` model's hyper-parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: an int range, a discrete choice or a stepped float grid."""

    name: str
    kind: str  # "int" | "choice" | "float"
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    choices: tuple[Any, ...] = ()

    def values(self) -> list[Any]:
        """Every value the search can take (grids are rounded so 0.3 is 0.3, not 0.30000000000000004)."""
        if self.kind == "choice":
            return list(self.choices)
        n = int(round((self.high - self.low) / self.step))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in vals] if self.kind == "int" else [round(v, 6) for v in vals]


# Table II: tuned by Optuna (300 TPE trials per task in the official scripts).
SEARCH_SPACE: tuple[Param, ...] = (
    Param("layers", "int", 1, 4, 1),
    Param("heads", "choice", choices=(1, 2, 4, 8)),
    Param("attn_dropout", "float", 0.0, 0.5, 0.1),
    Param("out_dropout", "float", 0.0, 0.5, 0.1),
    Param("embed_dropout", "float", 0.0, 0.5, 0.1),
    Param("w_joint", "float", 0.0, 1.0, 0.1),
    Param("w_attn", "float", 0.0, 1.0, 0.1),
    Param("w_recon", "float", 0.0, 1.0, 0.1),
)

# Table II: fixed, never tuned (relu/res dropout are fixed at 0.1 in the official code).
FIXED: dict[str, Any] = {
    "batch_size": 128,
    "max_epochs": 200,
    "patience": 10,
    "lr": 1e-3,
    "hidden": 32,
    "relu_dropout": 0.1,
    "res_dropout": 0.1,
    "text_lr": 5e-5,
}

# The released configuration (official `main_run.py`), i.e. the model defaults.
RELEASED: dict[str, Any] = {
    "layers": 3,
    "heads": 8,
    "attn_dropout": 0.0,
    "out_dropout": 0.3,
    "embed_dropout": 0.2,
    "w_joint": 0.5,
    "w_attn": 0.1,
    "w_recon": 0.6,
}


def suggest(trial: Any) -> dict[str, Any]:
    """Draw one configuration from an Optuna `trial`; returns model hyper-parameters."""
    out: dict[str, Any] = {}
    for p in SEARCH_SPACE:
        if p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step))
        elif p.kind == "choice":
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        else:
            v = trial.suggest_float(p.name, p.low, p.high, step=p.step)
            out[p.name] = round(float(v), 6)
    return out


def grid_size() -> int:
    """Number of distinct configurations in the space (4 * 4 * 6**3 * 11**3)."""
    n = 1
    for p in SEARCH_SPACE:
        n *= len(p.values())
    return n
