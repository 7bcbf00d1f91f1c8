"""Training corruption policies: per-sample vs per-element rates, reproducibility per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from mer_bench.errors import UserError
from mer_bench.scenarios import POLICIES, get_policy
from mer_bench.scenarios.base import Lengths

MODS = ("text", "audio", "vision")


def full_lengths(n, sizes=(50, 500, 500)):
    return Lengths(*(np.full(n, s) for s in sizes), sizes=sizes)


def per_sample_fraction(lengths, d):
    dropped = sum(d[m].sum(1) for m in MODS)
    can = sum(lengths.droppable(m).sum(1) for m in MODS)
    return dropped / can


def test_registry_names_and_definitions():
    assert set(POLICIES.names()) == {
        "per-sample-uniform", "per-element-uniform", "fixed-rate", "none"
    }
    assert all(p.definition for _, p in POLICIES.items())
    with pytest.raises(UserError, match="unknown training policy"):
        get_policy("dropout")


def test_per_sample_uniform_spreads_rates_over_samples():
    lengths = full_lengths(400)
    d = get_policy("per-sample-uniform").drops([f"s{i}" for i in range(400)], lengths, 1111, 0)
    frac = per_sample_fraction(lengths, d)
    assert abs(frac.mean() - 0.5) < 0.05
    assert abs(frac.std() - np.sqrt(1 / 12)) < 0.03  # U[0, 1) has std 0.289
    # one rate for all of a sample's elements: its modalities agree up to binomial noise
    fa = d["audio"].mean(1)
    fv = d["vision"].mean(1)
    assert np.corrcoef(fa, fv)[0, 1] > 0.95


def test_per_element_uniform_is_bernoulli_half_per_element():
    lengths = full_lengths(400)
    d = get_policy("per-element-uniform").drops([f"s{i}" for i in range(400)], lengths, 1111, 0)
    frac = per_sample_fraction(lengths, d)
    assert abs(frac.mean() - 0.5) < 0.01
    assert frac.std() < 0.03  # binomial noise only: ~0.015 for 1048 positions


@pytest.mark.parametrize("name", ["per-sample-uniform", "per-element-uniform", "fixed-rate"])
def test_reproducible_per_seed_and_epoch(name):
    lengths = full_lengths(20, (10, 12, 14))
    ids = [f"s{i}" for i in range(20)]
    p = get_policy(name)
    a = p.drops(ids, lengths, 5, epoch=3, rate=0.5)
    b = p.drops(ids, lengths, 5, epoch=3, rate=0.5)
    c = p.drops(ids, lengths, 5, epoch=4, rate=0.5)
    e = p.drops(ids, lengths, 6, epoch=3, rate=0.5)
    assert all(np.array_equal(a[m], b[m]) for m in MODS)
    assert any(not np.array_equal(a[m], c[m]) for m in MODS)
    assert any(not np.array_equal(a[m], e[m]) for m in MODS)
    # a sample's draw does not depend on its batch
    sub = Lengths(*(x[5:9] for x in (lengths.text, lengths.audio, lengths.vision)), lengths.sizes)
    part = p.drops(ids[5:9], sub, 5, epoch=3, rate=0.5)
    assert all(np.array_equal(part[m], a[m][5:9]) for m in MODS)


def test_fixed_rate_needs_a_rate_and_hits_it():
    lengths = full_lengths(100, (50, 100, 100))
    ids = [f"s{i}" for i in range(100)]
    with pytest.raises(UserError, match="needs a rate"):
        get_policy("fixed-rate").drops(ids, lengths, 1, 0)
    d = get_policy("fixed-rate").drops(ids, lengths, 1, 0, rate=0.3)
    assert abs(per_sample_fraction(lengths, d).mean() - 0.3) < 0.02


def test_none_corrupts_nothing():
    lengths = full_lengths(5, (4, 5, 6))
    d = get_policy("none").drops([str(i) for i in range(5)], lengths, 1, 0)
    assert {m: d[m].shape for m in MODS} == {"text": (5, 4), "audio": (5, 5), "vision": (5, 6)}
    assert not any(d[m].any() for m in MODS)


def test_policies_never_drop_specials_or_padding():
    lengths = Lengths(np.array([5, 3]), np.array([2, 6]), np.array([0, 4]), (6, 6, 6))
    for name in ("per-sample-uniform", "per-element-uniform"):
        for epoch in range(20):
            d = get_policy(name).drops(["a", "b"], lengths, 1, epoch)
            for m in MODS:
                assert not (d[m] & ~lengths.droppable(m)).any()
