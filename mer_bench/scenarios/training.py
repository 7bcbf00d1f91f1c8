"""Training-time corruption policies: how a model sees missing data while it learns.

Draws depend only on (seed, epoch, sample id) through `sample_rngs(seed,
f"train|{policy}|{epoch}", ids)`, so a run is reproducible with any batch order or number of
workers, and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mer_bench.errors import UserError
from mer_bench.registry import Registry
from mer_bench.scenarios.base import (
    MODALITY_ORDER,
    Drops,
    Lengths,
    check_rate,
    draw_uniforms,
    no_drops,
    sample_rngs,
    split_modalities,
    threshold_drops,
)

# (lengths, per-sample generators, rate) -> drops
PolicyFn = Callable[[Lengths, Sequence[np.random.Generator], float | None], Drops]


@dataclass(frozen=True)
class TrainingPolicy:
    """A registered training corruption with a one-line definition."""

    name: str
    fn: PolicyFn
    definition: str

    def drops(
        self, ids: Sequence[str], lengths: Lengths, seed: int, epoch: int, rate: float | None = None
    ) -> Drops:
        """Masks for one training batch at `epoch`; `rate` is used by `fixed-rate` only."""
        rngs = sample_rngs(seed, f"train|{self.name}|{epoch}", ids)
        return self.fn(lengths, rngs, rate)

    def bind(self, seed: int, rate: float | None = None) -> Callable[[Sequence[str], Lengths, int], Drops]:
        """This policy for one run's seed, as the trainer's `(ids, lengths, epoch) -> drops`."""
        return lambda ids, lengths, epoch: self.drops(ids, lengths, seed, epoch, rate)


POLICIES: Registry[TrainingPolicy] = Registry("training policy")


def _policy(name: str, definition: str) -> Callable[[PolicyFn], PolicyFn]:
    def deco(fn: PolicyFn) -> PolicyFn:
        POLICIES.register(name, TrainingPolicy(name, fn, definition))
        return fn

    return deco


@_policy(
    "per-sample-uniform",
    "default, as the paper states: one rate r ~ U[0, 1) per sample, then RMFM at r over all its "
    "text, audio and vision positions",
)
def per_sample_uniform(lengths: Lengths, rngs: Sequence[np.random.Generator], rate=None) -> Drops:
    """Column 0 of each sample's draw is its rate, the rest its RMFM uniforms."""
    u = draw_uniforms(rngs, 1 + sum(lengths.sizes))
    r = u[:, :1]
    uniforms = split_modalities(lengths, u[:, 1:])
    return threshold_drops(lengths, uniforms, {m: r for m in MODALITY_ORDER})


@_policy(
    "per-element-uniform",
    "the official code: a rate r ~ U[0, 1) per element, so each position is dropped "
    "independently with probability 1/2",
)
def per_element_uniform(lengths: Lengths, rngs: Sequence[np.random.Generator], rate=None) -> Drops:
    """Drop position j iff u_j < r_j with both uniform: Bernoulli(0.5) per element."""
    n = sum(lengths.sizes)
    u = draw_uniforms(rngs, 2 * n)
    rates = split_modalities(lengths, u[:, :n])
    return threshold_drops(lengths, split_modalities(lengths, u[:, n:]), rates)


@_policy("fixed-rate", "RMFM at one fixed rate (one-to-one training at a test rate)")
def fixed_rate(lengths: Lengths, rngs: Sequence[np.random.Generator], rate=None) -> Drops:
    if rate is None:
        raise UserError("training policy fixed-rate needs a rate")
    r = check_rate(rate)
    u = split_modalities(lengths, draw_uniforms(rngs, sum(lengths.sizes)))
    return threshold_drops(lengths, u, {m: r for m in MODALITY_ORDER})


@_policy("none", "no corruption: the model trains on complete data")
def none(lengths: Lengths, rngs: Sequence[np.random.Generator], rate=None) -> Drops:
    return no_drops(lengths)



def get_policy(name: str) -> TrainingPolicy:
    return POLICIES.get(name)
