"""Cross-dataset: compatible pairs are fitted to the training length; others are refused."""

from __future__ import annotations

import numpy as np
import pytest

from mer_bench.data import cross
from mer_bench.data.registry import DATASETS, DatasetEntry
from mer_bench.data.schema import SPLITS, MMDataset, Split
from mer_bench.datasets import load_cross
from mer_bench.errors import UserError


def _ds(name, length, dims=(6, 3, 4), variant="aligned", text_ids=False, left_pad=False, n=5, seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for s in SPLITS:
        lens = rng.integers(2, length + 1, n)
        lens[0] = length
        valid = np.arange(length)[None, :] < lens[:, None]
        if left_pad:
            valid = valid[:, ::-1]

        def feat(d, valid=valid):
            return (rng.standard_normal((n, length, d)) + 5).astype(np.float32) * valid[..., None]

        tb = None
        if text_ids:
            ids = np.where(valid, 2000, 0)
            ids[:, 0] = 101
            ids[np.arange(n), lens - 1] = 102
            tb = np.stack([ids, valid.astype(np.int64), np.zeros_like(ids)], axis=1)
        y = rng.uniform(-3, 3, n).astype(np.float32)
        splits[s] = Split(
            text=feat(dims[0]), audio=feat(dims[1]), vision=feat(dims[2]),
            audio_lengths=lens.astype(np.int64), vision_lengths=lens.astype(np.int64),
            regression_labels=y, classification_labels=np.where(y < 0, 0, 2),
            id=np.array([f"{name}{s}{i}" for i in range(n)]), raw_text=np.array(["x"] * n),
            text_bert=tb,
        )
    return MMDataset(name=name, variant=variant, splits=splits, source=f"mem:{name}")


@pytest.mark.parametrize("left_pad", [False, True])
def test_compatible_pair_is_fitted_to_train_length(left_pad):
    a, b = _ds("a", 4), _ds("b", 7, left_pad=left_pad, seed=1)
    out = cross.combine(a, b)
    assert out["train"] is a["train"] and out["valid"] is a["valid"]
    t = out["test"]
    assert t.text.shape == (5, 4, 6) and t.audio.shape == (5, 4, 3) and t.vision.shape == (5, 4, 4)
    assert np.array_equal(t.id, b["test"].id)
    src = b["test"].text
    # the kept window is on the content side: the padding is what goes first
    expect = src[:, -4:] if left_pad else src[:, :4]
    assert np.array_equal(t.text, expect)
    assert out.meta["cross"]["fitted_to"] == 4 and out.meta["cross"]["test_length"] == 7
    assert out.meta["cross"]["truncated"] == int((b["test"].text_lengths > 4).sum())
    # shorter test data is zero-padded
    back = cross.combine(b, a)  # `a` keeps its padding at the end
    assert back["test"].text.shape[1] == 7 and np.all(back["test"].text[:, 4:] == 0)
    assert np.array_equal(back["test"].text[:, :4], a["test"].text)


def test_text_ids_are_cut_with_sep_kept():
    a, b = _ds("a", 4, text_ids=True), _ds("b", 7, text_ids=True, seed=2)
    t = cross.combine(a, b)["test"]
    assert t.text_bert.shape == (5, 3, 4)
    lens = t.text_lengths
    assert lens.max() <= 4
    for r in range(5):
        assert t.text_bert[r, 0, lens[r] - 1] == 102 and t.text_bert[r, 0, 0] == 101


def test_incompatible_pairs_refused_in_one_line():
    a = _ds("a", 4)
    with pytest.raises(UserError, match="feature dims") as e:
        cross.combine(a, _ds("b", 4, dims=(6, 5, 4)))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="aligned"):
        cross.combine(_ds("u", 4, variant="unaligned"), _ds("b", 4))
    with pytest.raises(UserError, match="token ids"):
        cross.combine(a, _ds("b", 4, text_ids=True))


@pytest.fixture
def registered():
    names = []

    def add(name, ds, partner, kind="synthetic-test"):
        DATASETS.register(name, DatasetEntry(name, kind, ("aligned", "unaligned"), "test only",
                                             lambda variant, root, scale: ds, partner))
        names.append(name)

    yield add
    for n in names:
        DATASETS._items.pop(n, None)


def test_load_cross_uses_registry_partner(registered):
    registered("xa-test", _ds("xa", 4), "xb-test")
    registered("xb-test", _ds("xb", 6, seed=4), "xa-test")
    registered("xc-test", _ds("xc", 4, dims=(6, 25, 171)), "xa-test")
    out = load_cross("xa-test", variant="aligned", task="binary")
    assert out["test"].id[0].startswith("xbtest") and out["test"].text.shape[1] == 4
    with pytest.raises(UserError, match="feature dims"):
        load_cross("xc-test", variant="aligned")


def test_embedded_cross_pair_is_casp_shaped_and_shares_one_world(tmp_path):
    """synth-mosi -> synth-mosei uses the CASP-shaped twins: 768/25/171, aligned, 44 vs 75
    positions; the partner's in-memory test split is the one its file would hold."""
    from mer_bench.data import mmsa, synth
    from mer_bench.datasets import load_dataset

    ds = load_dataset("synth-mosi", "aligned", "cross", scale=0.02)
    assert ds.spec.dims == (768, 25, 171) and ds.spec.lens == (44, 44, 44)
    assert ds.meta["cross"]["test"] == "synth-mosei" and ds.meta["cross"]["test_length"] == 75
    assert len(ds["train"]) == round(1274 * 0.02)
    # the partner's file, written in CASP's own layout and read by the CASP reader
    path = synth.synthesize("synth-mosei-casp", "aligned", scale=0.02,
                            out=tmp_path / "MSA_cross_datasets" / "mosei.pkl")
    raw = mmsa.safe_load_with_hash(path)[0]["test"]
    assert not {"audio_lengths", "vision_lengths", "classification_labels"} & set(raw)
    full = mmsa.read_casp(tmp_path, "mosei")
    fitted, truncated = cross.fit_length(full["test"], 44)
    assert truncated == ds.meta["cross"]["truncated"] > 0
    for key in ("text", "audio", "vision", "text_bert", "regression_labels"):
        np.testing.assert_array_equal(getattr(ds["test"], key), getattr(fitted, key))
    # one world: both sides draw their words from the same vocabulary
    vocab = set(synth.build_vocabulary(synth.DEFAULT_SEED).ids.tolist())
    for split in (ds["train"], ds["test"]):
        words = set(split.text_bert[:, 0].ravel().tolist()) - {0, 101, 102}
        assert words <= vocab
    back = load_dataset("synth-mosei", "aligned", "cross", scale=0.02)
    assert back.spec.lens == (75, 75, 75) and back.meta["cross"]["truncated"] == 0


def test_embedded_cross_pair_refuses_unaligned():
    from mer_bench.datasets import load_dataset

    with pytest.raises(UserError, match="aligned only"):
        load_dataset("synth-mosi", "unaligned", "cross", scale=0.02)
