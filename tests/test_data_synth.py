"""Synthetic datasets: determinism, shapes, counts, exact class counts, provenance, verify/info."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mer_bench.data import synth
from mer_bench.data.mmsa import read_mmsa_pickle
from mer_bench.data.registry import clear_cache
from mer_bench.data.schema import CLS_ID, SEP_ID, seven_class, three_class
from mer_bench.data.verify import info, verify
from mer_bench.datasets import load_dataset
from mer_bench.errors import DataError, UserError

SCALE = 0.02


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    a = synth.synthesize("synth-mosi", scale=SCALE, seed=5, out=tmp_path / "a.pkl", d_text=16)
    b = synth.synthesize("synth-mosi", scale=SCALE, seed=5, out=tmp_path / "b.pkl", d_text=16)
    c = synth.synthesize("synth-mosi", scale=SCALE, seed=6, out=tmp_path / "c.pkl", d_text=16)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("variant", ["unaligned", "aligned"])
def test_synth_mosi_shapes_counts_and_tokens(tmp_path, variant):
    p = synth.synthesize("synth-mosi", variant=variant, scale=SCALE, out=tmp_path / "s.pkl")
    ds = read_mmsa_pickle(p, "synth-mosi", variant)
    assert ds.counts() == synth.split_counts("synth-mosi", SCALE) == {
        "train": 26, "valid": 8, "test": 14}
    la, lv = (50, 50) if variant == "aligned" else (375, 500)
    assert ds.spec.dims == (768, 5, 20) and ds.spec.lens == (50, la, lv)
    for s in ("train", "valid", "test"):
        sp = ds[s]
        ids, mask = sp.text_bert[:, 0], sp.text_bert[:, 1]
        n_tok = mask.sum(1)
        assert (ids[:, 0] == CLS_ID).all()
        assert (ids[np.arange(len(sp)), n_tok - 1] == SEP_ID).all()
        inner = ids[(mask == 1) & (np.arange(50)[None] > 0) & (np.arange(50)[None] < n_tok[:, None] - 1)]
        assert (inner >= 1000).all() and (inner < 30522).all()
        assert (ids[mask == 0] == 0).all() and (sp.text_bert[:, 2] == 0).all()
        # raw_text spells the ids: one word per token
        assert [len(t.split()) for t in sp.raw_text] == (n_tok - 2).tolist()
        assert (sp.text[mask == 0] == 0).all() and (np.abs(sp.text[mask == 1]).sum(-1) > 0).all()
        valid_a = np.arange(la)[None] < sp.audio_lengths[:, None]
        assert (sp.audio[~valid_a] == 0).all()
        if variant == "aligned":
            np.testing.assert_array_equal(sp.audio_lengths, n_tok)
        np.testing.assert_array_equal(sp.classification_labels, three_class(sp.regression_labels))


def test_raw_text_words_map_to_ids_via_sidecar(tmp_path):
    p = synth.synthesize("synth-mosi", scale=SCALE, out=tmp_path / "s.pkl", d_text=8)
    side = json.loads((tmp_path / "s.pkl.json").read_text())
    assert side["seed"] == synth.DEFAULT_SEED and side["version"] == synth.GENERATOR_VERSION
    assert side["d_text"] == 8 and "knobs" in side and len(side["sha256"]) == 64
    word_id = {v["word"]: v["id"] for v in side["vocabulary"]}
    kinds = {v["kind"] for v in side["vocabulary"]}
    assert {"positive", "negative", "negator", "topic-0", "topic-23", "filler"} <= kinds
    ds = read_mmsa_pickle(p)
    sp = ds["test"]
    for row, text in zip(sp.text_bert[:, 0], sp.raw_text):
        words = text.split()
        assert [word_id[w] for w in words] == row[1 : len(words) + 1].tolist()


def test_exact_class_counts_full_scale_labels_only():
    labels = synth.synth_labels("synth-mosi")
    tr = labels["train"]
    assert len(tr) == 1284 and labels["valid"].shape == (229,) and labels["test"].shape == (686,)
    assert np.bincount(seven_class(tr), minlength=7).tolist() == [24, 199, 227, 248, 227, 313, 46]
    assert np.bincount(three_class(tr), minlength=3).tolist() == [552, 53, 679]
    assert tr.min() >= -3 and tr.max() <= 3 and (tr == 0).sum() == 53
    mosei = synth.synth_labels("synth-mosei")
    assert {k: len(v) for k, v in mosei.items()} == {"train": 16326, "valid": 1871, "test": 4659}
    assert np.bincount(three_class(mosei["train"])).tolist() == [4738, 3540, 8048]
    assert np.bincount(seven_class(mosei["train"])).tolist() == [311, 1305, 2039, 6798, 4117, 1549, 207]
    # valid/test keep the train proportions (rounded)
    v3 = np.bincount(three_class(labels["test"]), minlength=3) / 686
    np.testing.assert_allclose(v3, np.array([552, 53, 679]) / 1284, atol=2 / 686)


def test_synth_text_matches_the_file(tmp_path):
    p = synth.synthesize("synth-mosei", variant="aligned", scale=0.002, out=tmp_path / "m.pkl",
                         d_text=8)
    ds = read_mmsa_pickle(p)
    text, vocab = synth.synth_text("synth-mosei", scale=0.002)
    assert ds.spec.dims == (8, 74, 35)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(text[s]["text_bert"], ds[s].text_bert)
        np.testing.assert_array_equal(text[s]["id"], ds[s].id)
        np.testing.assert_array_equal(text[s]["regression_labels"], ds[s].regression_labels)


def test_registry_generates_on_first_use_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_CACHE", str(tmp_path))
    clear_cache()
    ds = load_dataset("synth-mosi", "aligned", scale=SCALE)
    path = tmp_path / "synth" / "synth-mosi" / f"aligned_50_scale{SCALE:g}.pkl"
    assert path.is_file() and ds.source == str(path) and ds.meta["synthetic"]
    assert load_dataset("synth-mosi", "aligned", scale=SCALE) is ds
    assert synth.cache_path("synth-mosi", "unaligned", seed=7).name == "unaligned_50_seed7.pkl"
    clear_cache()


def test_verify_and_info_on_synthetic_file(tmp_path):
    p = synth.synthesize("synth-mosi", scale=SCALE, out=tmp_path / "s.pkl", d_text=8)
    report = verify(str(p))
    assert report.endswith("OK") and "(as expected)" in report and "matches its sidecar" in report
    table = info(str(p))
    assert "train" in table and "8x" not in table.split("\n")[0] and "generator v" in table
    # a file changed after generation no longer matches its sidecar
    data = bytearray(p.read_bytes())
    data[-20] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(DataError):
        verify(str(p))


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown synthetic dataset"):
        synth.synthesize("synth-iemocap")
    with pytest.raises(UserError, match="--scale"):
        synth.split_counts("synth-mosi", 2.0)
