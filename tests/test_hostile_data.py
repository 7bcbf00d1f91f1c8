"""Data inputs built to hurt: compression bombs, shared-reference nesting, huge transcript
fields, out-of-range labels, empty splits, duplicate ids, bad sidecars, a tampered cache; and
a `label.csv` without the redundant `annotation` column."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from helpers import random_split

from mer_bench.data.mmsa import dataset_from_obj, read_label_csv, split_items, write_mmsa_pickle
from mer_bench.data.safe_pickle import safe_load
from mer_bench.data.schema import MMDataset
from mer_bench.errors import DataError


def _csv(tmp_path, rows, columns=("video_id", "clip_id", "text", "label", "annotation", "mode")):
    path = tmp_path / "label.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_compressed_bomb_is_refused(tmp_path):
    n = 80 * 2**20  # 80 MiB of zeros in a BINBYTES8 opcode, a few hundred KiB compressed
    z = zlib.compressobj()
    parts = [z.compress(b"\x80\x04\x8e" + struct.pack("<Q", n))]
    chunk = bytes(2**20)
    parts += [z.compress(chunk) for _ in range(n // len(chunk))]
    parts.append(z.compress(b".") + z.flush())
    path = tmp_path / "bomb.pkl"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 2**20
    with pytest.raises(DataError, match="compression bomb"):
        safe_load(path)


def test_shared_reference_nesting_and_depth_are_refused(tmp_path):
    a = [0] * 1000
    b = [a] * 1000
    c = [b] * 1000  # 10^9 items when walked, a few KiB as a pickle
    (tmp_path / "wide.pkl").write_bytes(pickle.dumps({"train": c}))
    with pytest.raises(DataError, match="items"):
        safe_load(tmp_path / "wide.pkl")
    deep: list = []
    for _ in range(200):
        deep = [deep]
    (tmp_path / "deep.pkl").write_bytes(pickle.dumps(deep))
    with pytest.raises(DataError, match="deeply"):
        safe_load(tmp_path / "deep.pkl")


def _obj(**splits):
    return {s: dict(split_items(sp)) for s, sp in splits.items()}


def test_huge_transcript_field_is_refused(tmp_path):
    obj = _obj(train=random_split(8, 0), valid=random_split(8, 1), test=random_split(8, 2))
    obj["train"]["raw_text"] = ["x" * 10_000_000] + [""] * 7
    with pytest.raises(DataError, match="raw_text"):
        dataset_from_obj(obj, "big.pkl", "big")
    path = _csv(tmp_path, [["v", "1", "y" * 10_000_000, 1.0, "Positive", "train"]])
    with pytest.raises(DataError, match="transcript at data row 1"):
        read_label_csv(path)


def test_label_range_and_non_numeric_labels_are_named(tmp_path):
    rows = [["v", "1", "ok", 1.0, "Positive", "train"], ["v", "2", "bad", 7.5, "Positive", "test"]]
    with pytest.raises(DataError, match=r"label 7.5 at data row 2 is outside \[-3, 3\]"):
        read_label_csv(_csv(tmp_path, rows))
    rows[1][3] = "high"
    with pytest.raises(DataError, match="non-numeric or non-finite label 'high' at data row 2"):
        read_label_csv(_csv(tmp_path, rows))


def test_label_csv_without_annotation_is_accepted(tmp_path, shared_data):
    full = read_label_csv(shared_data / "mosi" / "label.csv")
    src = pd.read_csv(shared_data / "mosi" / "label.csv", dtype=str, keep_default_na=False)
    path = tmp_path / "no_annotation.csv"
    src.drop(columns=["annotation"]).to_csv(path, index=False)
    df = read_label_csv(path)
    assert (df["annotation"].to_numpy() == full["annotation"].to_numpy()).all()
    assert len(df) == 2199


def _pickle(tmp_path, train, valid, test):
    ds = MMDataset("t", "unaligned", {"train": train, "valid": valid, "test": test}, "t")
    return write_mmsa_pickle(ds, tmp_path / "t.pkl")


def test_verify_rejects_duplicate_ids_and_empty_splits(tmp_path):
    from mer_bench.data.verify import verify

    a, b = random_split(12, 0), random_split(12, 1)  # both use ids s0..s11
    path = _pickle(tmp_path, a, b, random_split(12, 2).subset(np.arange(0)))
    with pytest.raises(DataError, match="(empty|in both train and valid)"):
        verify(str(path))
    b.id[:] = [f"v{i}" for i in range(12)]
    c = random_split(12, 2)
    c.id[:] = [f"t{i}" for i in range(12)]
    path = _pickle(tmp_path, a, b, c.subset(np.arange(0)))
    with pytest.raises(DataError, match="empty"):
        verify(str(path))
    c.id[1] = "t0"
    path = _pickle(tmp_path, a, b, c)
    with pytest.raises(DataError, match="'t0' appears twice"):
        verify(str(path))
    c.id[1] = "t1"
    assert verify(str(_pickle(tmp_path, a, b, c))).endswith("OK")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"counts": {"train": "many"}}',
                                  '{"sha256": 5}'])
def test_malformed_sidecar_is_one_line(tmp_path, text):
    from mer_bench.data.verify import verify

    path = _pickle(tmp_path, random_split(6, 0), random_split(6, 1), random_split(6, 2))
    (tmp_path / "t.pkl.json").write_text(text)
    with pytest.raises(DataError, match="malformed sidecar"):
        verify(str(path))


def test_tampered_synthetic_cache_is_detected_and_regenerated(tmp_path, capsys):
    from mer_bench.data.registry import clear_cache
    from mer_bench.data.synth import cache_path, read_sidecar, synthesize
    from mer_bench.datasets import load_dataset

    good = load_dataset("synth-mosi", scale=0.05)
    cached = cache_path("synth-mosi", "unaligned", None, 0.05)
    other = synthesize("synth-mosi", scale=0.05, seed=7, out=tmp_path / "other.pkl")
    shutil.copyfile(other, cached)  # same shapes, other content: only the checksum tells
    clear_cache()
    ds = load_dataset("synth-mosi", scale=0.05)
    assert "does not match the checksum" in capsys.readouterr().err
    assert ds.sha256 == good.sha256 == read_sidecar(cached)["sha256"]
    assert json.loads((cached.parent / f"{cached.name}.json").read_text())["seed"] != 7


def test_encoder_features_are_checked_for_magnitude():
    from mer_bench.data.realtext import _check_features
    from mer_bench.errors import UserError

    _check_features(np.ones((2, 3, 4), dtype=np.float32), "ok")
    with pytest.raises(UserError, match="magnitude"):
        _check_features(np.full((2, 3, 4), 1e6, dtype=np.float32), "cache")
    with pytest.raises(UserError, match="non-finite"):
        _check_features(np.array([np.inf], dtype=np.float32), "cache")
