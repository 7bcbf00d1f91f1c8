"""Missing modes: measured rates, nesting, protected positions, determinism, batch independence."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mer_bench.data.batch import make_batch
from mer_bench.data.schema import CLS_ID, SEP_ID, UNK_ID, Split
from mer_bench.errors import UserError
from mer_bench.scenarios import (
    MODES,
    SCENARIOS,
    apply_drops,
    check_compatible,
    get_scenario,
)
from mer_bench.scenarios.base import GridPoint, Lengths, rate_point
from mer_bench.scenarios.smm import PATTERNS, pattern_rate

MODS = ("text", "audio", "vision")
RATE_MODES = ("rmfm", "trmfm", "rmm", "tmfm", "stmfm")
ALIGNED = {"tmfm", "stmfm"}


def make_lengths(n, sizes, seed=0, specials=True, full=False, min_len=0):
    g = np.random.default_rng(seed)
    if full:
        lens = [np.full(n, s) for s in sizes]
    else:
        lens = [g.integers(min_len, s + 1, n) for s in sizes]
    return Lengths(lens[0], lens[1], lens[2], tuple(sizes), text_specials=specials)


def ids_for(n, prefix="s"):
    return [f"{prefix}{i}" for i in range(n)]


def drops_at(mode, lengths, rate, seed=1111, ids=None):
    sc = get_scenario(mode)
    ids = ids or ids_for(len(lengths))
    point = GridPoint(str(rate), rate) if isinstance(rate, tuple) else rate_point(rate)
    return sc.drops(ids, lengths, point, seed)


def sizes_for(mode, big=False):
    if mode in ALIGNED:
        return (50, 50, 50)
    return (50, 100, 120) if big else (12, 15, 9)


# ----------------------------------------------------------------------------- registry
def test_every_mode_crossed_with_every_distribution():
    modes = {"rmfm", "trmfm", "rmm", "tmfm", "stmfm", "smm"}
    assert set(MODES.names()) == modes
    assert set(SCENARIOS.names()) == {f"{m}-{d}" for m in modes for d in ("iid", "ood", "cross")}
    for name, sc in SCENARIOS.items():
        assert sc.definition and sc.version
        if name.startswith("smm"):
            assert sc.grid_labels() == list(PATTERNS) and not sc.numeric
        else:
            assert sc.grid_labels() == [str(round(0.1 * i, 1)) for i in range(11)] and sc.numeric


def test_get_scenario_accepts_bare_mode_and_rejects_unknown():
    assert get_scenario("rmfm").name == "rmfm-iid"
    assert get_scenario("rmm", "ood").name == "rmm-ood"
    assert get_scenario("smm-cross").name == "smm-cross"
    with pytest.raises(UserError, match="unknown scenario 'nope'"):
        get_scenario("nope")


def test_aligned_only_modes_refuse_unaligned_data():
    for mode in ("tmfm", "stmfm"):
        sc = get_scenario(mode)
        with pytest.raises(UserError) as e:
            check_compatible(sc, aligned=False)
        assert str(e.value) == f"scenario {mode}-iid needs aligned data; use --variant aligned"
        check_compatible(sc, aligned=True)
        with pytest.raises(UserError, match="aligned"):  # the mode itself checks the shapes
            drops_at(mode, make_lengths(4, (10, 20, 20)), 0.5)
    check_compatible(get_scenario("rmfm"), aligned=False)


def test_smm_refuses_rates_and_bad_patterns():
    with pytest.raises(UserError, match="presence patterns"):
        get_scenario("smm").with_rates([0.1])
    with pytest.raises(UserError, match="unknown SMM pattern"):
        pattern_rate("LL")
    with pytest.raises(UserError):
        drops_at("smm", make_lengths(3, (5, 5, 5)), 0.5)


def test_rates_out_of_range_are_user_errors():
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        drops_at("rmfm", make_lengths(3, (5, 6, 7)), 1.5)
    with pytest.raises(UserError, match="3 values"):
        drops_at("trmfm", make_lengths(3, (5, 6, 7)), (0.1, 0.2))


# ----------------------------------------------------------------------------- measured rates
@pytest.mark.parametrize("mode", ["rmfm", "trmfm", "tmfm"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_elementwise_modes_drop_the_requested_fraction(mode, rate):
    lengths = make_lengths(300, sizes_for(mode, big=True), full=True)
    d = drops_at(mode, lengths, rate)
    for m in MODS:
        can = lengths.droppable(m) & (lengths.droppable("text") if mode in ALIGNED else True)
        frac = d[m].sum() / can.sum()
        assert abs(frac - rate) < 0.02, (m, frac)


def test_trmfm_uses_one_rate_per_modality():
    lengths = make_lengths(300, (50, 100, 120), full=True)
    d = drops_at("trmfm", lengths, (0.1, 0.5, 0.9))
    for m, r in zip(MODS, (0.1, 0.5, 0.9)):
        assert abs(d[m].sum() / lengths.droppable(m).sum() - r) < 0.02


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_rmm_drops_whole_modalities_at_the_requested_rate(rate):
    lengths = make_lengths(3000, (8, 6, 5), min_len=3)
    d = drops_at("rmm", lengths, rate)
    for m in MODS:
        can = lengths.droppable(m)
        any_drop = d[m].any(1)
        assert np.array_equal(d[m], can & any_drop[:, None])  # all or nothing
        assert abs(any_drop[can.any(1)].mean() - rate) < 0.04
    # modalities are drawn independently: all three missing about r^3 of the time
    all3 = d["text"].any(1) & d["audio"].any(1) & d["vision"].any(1)
    assert abs(all3.mean() - rate**3) < 0.04


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.7, 1.0])
def test_stmfm_is_one_contiguous_block_of_exact_length(rate):
    lengths = make_lengths(200, (50, 50, 50), min_len=2)
    lengths = Lengths(lengths.text, lengths.text, lengths.text, lengths.sizes)
    d = drops_at("stmfm", lengths, rate)
    for i in range(200):
        row = d["text"][i]
        k = int(np.round((lengths.text[i] - 2) * rate))
        assert row.sum() == k
        if k:
            where = np.flatnonzero(row)
            assert where[-1] - where[0] + 1 == k  # contiguous
            assert where[0] >= 1 and where[-1] <= lengths.text[i] - 2
        for m in ("audio", "vision"):
            assert np.array_equal(d[m][i], row)


def test_stmfm_rounds_half_to_even():
    lengths = Lengths(np.array([7, 5]), np.array([7, 5]), np.array([7, 5]), (7, 7, 7))
    d = drops_at("stmfm", lengths, 0.5)  # (7-2)*0.5 = 2.5 -> 2; (5-2)*0.5 = 1.5 -> 2
    assert d["text"].sum(1).tolist() == [2, 2]


def test_tmfm_masks_are_identical_across_modalities():
    lengths = make_lengths(50, (50, 50, 50))
    lengths = Lengths(lengths.text, lengths.text, lengths.text, lengths.sizes)
    d = drops_at("tmfm", lengths, 0.4)
    assert np.array_equal(d["text"], d["audio"]) and np.array_equal(d["text"], d["vision"])
    assert d["text"].any()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_smm_patterns_are_exact(pattern):
    lengths = make_lengths(20, (10, 12, 14))
    d = drops_at("smm", lengths, pattern_rate(pattern))
    for m, letter in zip(MODS, "LAV"):
        expected = np.zeros_like(d[m]) if letter in pattern else lengths.droppable(m)
        assert np.array_equal(d[m], expected)
    assert get_scenario("smm").grid[PATTERNS.index(pattern)].rate == pattern_rate(pattern)
    assert pattern_rate("LA") == (0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("mode", RATE_MODES)
@pytest.mark.parametrize("specials", [True, False])
def test_rate_zero_drops_nothing_and_rate_one_every_droppable_position(mode, specials):
    lengths = make_lengths(40, sizes_for(mode), specials=specials)
    zero, one = drops_at(mode, lengths, 0.0), drops_at(mode, lengths, 1.0)
    for m in MODS:
        assert not zero[m].any()
        if mode in ALIGNED:  # shared steps: droppable in text and valid in m
            expected = lengths.droppable(m) & lengths.droppable("text")
        else:
            expected = lengths.droppable(m)
        assert np.array_equal(one[m], expected), m


@pytest.mark.parametrize("mode", RATE_MODES + ("smm",))
def test_cls_sep_and_padding_are_never_dropped(mode):
    lengths = make_lengths(60, sizes_for(mode))
    rate = (1.0, 1.0, 1.0) if mode == "smm" else 1.0
    d = drops_at(mode, lengths, rate)
    for m in MODS:
        pos = np.arange(d[m].shape[1])[None, :]
        assert not (d[m] & (pos >= lengths.of(m)[:, None])).any()  # padding
    t = lengths.text
    rows = np.flatnonzero(t > 0)
    assert not d["text"][rows, 0].any()  # [CLS]
    assert not d["text"][rows, t[rows] - 1].any()  # [SEP]


def test_text_without_special_tokens_is_fully_droppable():
    lengths = make_lengths(10, (8, 6, 5), specials=False, full=True)
    d = drops_at("rmfm", lengths, 1.0)
    assert d["text"].all()


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(RATE_MODES),
    seed=st.integers(0, 2**31),
    rates=st.lists(st.floats(0, 1), min_size=2, max_size=4),
    n=st.integers(1, 6),
)
def test_masks_are_nested_across_rates(mode, seed, rates, n):
    lengths = make_lengths(n, sizes_for(mode), seed=seed % 1000)
    rates = sorted(rates)
    masks = [drops_at(mode, lengths, r, seed=seed) for r in rates]
    for lo, hi in zip(masks[:-1], masks[1:]):
        for m in MODS:
            assert not (lo[m] & ~hi[m]).any()


@pytest.mark.parametrize("mode", RATE_MODES)
def test_same_seed_same_masks_other_seed_different(mode):
    lengths = make_lengths(30, sizes_for(mode), min_len=5)
    a, b = drops_at(mode, lengths, 0.5, seed=1), drops_at(mode, lengths, 0.5, seed=1)
    c = drops_at(mode, lengths, 0.5, seed=2)
    assert all(np.array_equal(a[m], b[m]) for m in MODS)
    assert any(not np.array_equal(a[m], c[m]) for m in MODS)


def test_scenario_streams_differ_between_modes():
    lengths = make_lengths(30, (12, 15, 9), min_len=5)
    a, b = drops_at("rmfm", lengths, 0.5), drops_at("trmfm", lengths, 0.5)
    assert any(not np.array_equal(a[m], b[m]) for m in MODS)


@settings(max_examples=20, deadline=None)
@given(mode=st.sampled_from(RATE_MODES), perm_seed=st.integers(0, 1000))
def test_a_samples_mask_does_not_depend_on_its_batch(mode, perm_seed):
    n = 12
    lengths = make_lengths(n, sizes_for(mode), seed=3, min_len=4)
    ids = ids_for(n)
    full = drops_at(mode, lengths, 0.6, ids=ids)
    perm = np.random.default_rng(perm_seed).permutation(n)[: n // 2]  # other order, other peers
    sub = Lengths(lengths.text[perm], lengths.audio[perm], lengths.vision[perm], lengths.sizes)
    part = drops_at(mode, sub, 0.6, ids=[ids[i] for i in perm])
    for m in MODS:
        assert np.array_equal(part[m], full[m][perm])


def test_mask_generation_leaves_global_rngs_untouched():
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    np_state, py_state, t_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    for mode in RATE_MODES:
        drops_at(mode, make_lengths(8, sizes_for(mode)), 0.5)
    from mer_bench.scenarios import get_policy

    for policy in ("per-sample-uniform", "per-element-uniform"):
        get_policy(policy).drops(ids_for(8), make_lengths(8, (9, 9, 9)), 1, 0)
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(np_state, after))
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), t_state)


# ----------------------------------------------------------------------------- apply_drops
def tiny_split(n=6, lt=8, la=10, lv=7, seed=0):
    g = np.random.default_rng(seed)
    t_len = g.integers(3, lt + 1, n)
    ids = g.integers(1000, 2000, (n, lt))
    attn = np.arange(lt)[None, :] < t_len[:, None]
    ids[np.arange(n), 0] = CLS_ID
    ids[np.arange(n), t_len - 1] = SEP_ID
    ids[~attn] = 0
    text_bert = np.stack([ids, attn.astype(np.int64), np.zeros_like(ids)], axis=1)
    y = g.uniform(-3, 3, n).astype(np.float32)
    return Split(
        text=g.normal(size=(n, lt, 4)).astype(np.float32) + 5,
        audio=g.normal(size=(n, la, 3)).astype(np.float32) + 5,
        vision=g.normal(size=(n, lv, 2)).astype(np.float32) + 5,
        audio_lengths=g.integers(0, la + 1, n),
        vision_lengths=g.integers(1, lv + 1, n),
        regression_labels=y,
        classification_labels=np.where(y < 0, 0, 2).astype(np.int64),
        id=np.array([f"v{i}$_$0" for i in range(n)]),
        raw_text=np.array(["x"] * n),
        text_bert=text_bert.astype(np.int64),
    )


def test_apply_drops_sets_unk_zeroes_features_and_keeps_specials():
    split = tiny_split()
    batch = make_batch(split, np.arange(len(split)))
    lengths = Lengths.from_batch(batch)
    d = drops_at("rmfm", lengths, 0.6, ids=[str(i) for i in split.id])
    out = apply_drops(batch, d)
    dt = torch.as_tensor(d["text"])
    assert (out.text_ids[dt] == UNK_ID).all()
    assert torch.equal(out.text_ids[~dt], batch.text_ids[~dt])
    assert (out.text_ids[:, 0] == CLS_ID).all()
    assert (out.text_ids[torch.arange(len(split)), batch.text_len - 1] == SEP_ID).all()
    for m in MODS:
        dm = torch.as_tensor(d[m])
        x, x0 = getattr(out, m), getattr(batch, m)
        assert (x[dm] == 0).all() and torch.equal(x[~dm], x0[~dm])
        assert torch.equal(getattr(out, f"missing_{m}"), dm)
    assert dt.any()
