"""Loaders on small files written in exactly the real formats, and the safe unpickler."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from mer_bench.data import mmsa
from mer_bench.data.registry import DATASETS, clear_cache
from mer_bench.data.safe_pickle import safe_load, safe_torch_load
from mer_bench.data.schema import three_class
from mer_bench.datasets import load_dataset
from mer_bench.errors import DataError, UserError

ROOT = Path(__file__).resolve().parents[1]


def mmsa_split(n: int, rng, aligned: bool, la: int = 12, lv: int = 14, da: int = 5, dv: int = 20,
               dt: int = 16, lt: int = 10, lengths: bool = True, prefix: str = "") -> dict:
    """One split in MMSA's layout (float64/object arrays and lists, as MMSA writes them)."""
    tl = rng.integers(3, lt + 1, n)
    ids = np.zeros((n, 3, lt))
    for i, k in enumerate(tl):
        ids[i, 0, :k] = [101, *rng.integers(1000, 30000, k - 2), 102]
        ids[i, 1, :k] = 1
    y = np.round(rng.uniform(-3, 3, n), 1)
    y[0] = 0.0
    if aligned:
        la = lv = lt
    d = {
        "raw_text": np.array([f"words {i}" for i in range(n)], dtype=object),
        "text": rng.standard_normal((n, lt, dt)),
        "text_bert": ids,
        "audio": rng.standard_normal((n, la, da)),
        "vision": rng.standard_normal((n, lv, dv)),
        "regression_labels": y,
        "classification_labels": three_class(y).astype(np.float64),
        "annotations": np.array(["Positive"] * n, dtype=object),
        "id": np.array([f"{prefix}vid{i // 3}$_${i % 3}" for i in range(n)], dtype=object),
    }
    if lengths and not aligned:
        d["audio_lengths"] = list(rng.integers(1, la + 1, n))
        d["vision_lengths"] = list(rng.integers(1, lv + 1, n))
    return d


def mmsa_obj(aligned: bool, seed: int = 0, counts=(6, 3, 4), **kw) -> dict:
    rng = np.random.default_rng(seed)
    return {s: mmsa_split(n, rng, aligned, prefix="" if s == "train" else s, **kw)
            for s, n in zip(("train", "valid", "test"), counts)}  # ids unique across splits


def dump(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.mark.parametrize("top", ["MOSI", "CMU-MOSI"])
@pytest.mark.parametrize("variant", ["aligned", "unaligned"])
def test_mmsa_layouts(tmp_path, top, variant):
    obj = mmsa_obj(variant == "aligned")
    dump(obj, tmp_path / top / "Processed" / f"{variant}_50.pkl")
    found = mmsa.find_mmsa_file(tmp_path, "mosi", variant)
    ds = mmsa.read_mmsa_pickle(found, "mosi", variant)
    tr = ds["train"]
    assert ds.variant == variant and ds.counts() == {"train": 6, "valid": 3, "test": 4}
    assert tr.text.dtype == np.float32 and tr.audio.dtype == np.float32
    assert tr.text_bert.dtype == np.int64 and tr.classification_labels.dtype == np.int64
    assert tr.id.dtype.kind == "U" and tr.raw_text.dtype.kind == "U"
    assert tr.id[1] == "vid0$_$1"
    np.testing.assert_allclose(tr.text, obj["train"]["text"].astype(np.float32))
    if variant == "aligned":  # MMSA/CIDer: aligned lengths are the text lengths
        np.testing.assert_array_equal(tr.audio_lengths, obj["train"]["text_bert"][:, 1].sum(1))
    else:
        np.testing.assert_array_equal(tr.audio_lengths, obj["train"]["audio_lengths"])
    assert len(ds.sha256) == 64


def test_missing_lengths_use_text_lengths(tmp_path):
    obj = mmsa_obj(False, lengths=False)
    ds = mmsa.read_mmsa_pickle(dump(obj, tmp_path / "x.pkl"), "x", "unaligned")
    np.testing.assert_array_equal(ds["test"].vision_lengths, obj["test"]["text_bert"][:, 1].sum(1))


def test_missing_classification_labels_derived(tmp_path):
    obj = mmsa_obj(True)
    for s in obj.values():
        del s["classification_labels"]
    ds = mmsa.read_mmsa_pickle(dump(obj, tmp_path / "x.pkl"))
    np.testing.assert_array_equal(ds["train"].classification_labels,
                                  three_class(obj["train"]["regression_labels"]))
    assert ds["train"].classification_labels[0] == 1  # y == 0 is neutral


def test_neg_inf_audio_becomes_zero_other_nonfinite_is_error(tmp_path):
    obj = mmsa_obj(False)
    obj["valid"]["audio"][1, 2, 3] = -np.inf
    ds = mmsa.read_mmsa_pickle(dump(obj, tmp_path / "a.pkl"))
    assert ds["valid"].audio[1, 2, 3] == 0.0 and np.isfinite(ds["valid"].audio).all()
    obj["test"]["vision"][0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"b\.pkl \[test\]: 'vision' contains NaN"):
        mmsa.read_mmsa_pickle(dump(obj, tmp_path / "b.pkl"))


def test_missing_key_and_wrong_shape(tmp_path):
    obj = mmsa_obj(False)
    del obj["valid"]["audio"]
    with pytest.raises(DataError, match=r"\[valid\]: missing key 'audio'"):
        mmsa.read_mmsa_pickle(dump(obj, tmp_path / "k.pkl"))
    obj = mmsa_obj(False)
    obj["train"]["vision"] = obj["train"]["vision"][:, :, 0]
    with pytest.raises(DataError, match=r"'vision' must be 3-D"):
        mmsa.read_mmsa_pickle(dump(obj, tmp_path / "s.pkl"))
    obj = mmsa_obj(False)
    obj["test"]["audio"] = obj["test"]["audio"][:, :, :4]
    with pytest.raises(DataError, match=r"\[test\]: 'audio' shape .* differs from train"):
        mmsa.read_mmsa_pickle(dump(obj, tmp_path / "d.pkl"))


def test_missing_files_name_the_paths_and_the_fix(tmp_path):
    with pytest.raises(UserError) as e:
        mmsa.find_mmsa_file(tmp_path, "mosei", "aligned")
    msg = str(e.value)
    assert "MOSEI/Processed/aligned_50.pkl" in msg and "CMU-MOSEI" in msg
    assert "--data-root" in msg and "MER_BENCH_DATA" in msg


def test_cider_ood_joblib_pickle(tmp_path):
    obj = mmsa_obj(False, seed=3)
    path = tmp_path / "OOD_MOSI" / "binary" / "MOSI_unaligned_50.pkl"
    path.parent.mkdir(parents=True)
    joblib.dump(obj, path)
    assert b"NumpyArrayWrapper" in path.read_bytes()[:4000]
    ds = mmsa.read_cider_ood(tmp_path, "mosi", "binary", "unaligned")
    np.testing.assert_allclose(ds["valid"].vision, obj["valid"]["vision"].astype(np.float32))
    assert list(ds["test"].raw_text) == list(obj["test"]["raw_text"])
    joblib.dump(obj, path, compress=3)  # compressed joblib files too
    np.testing.assert_array_equal(mmsa.read_cider_ood(tmp_path, "mosi").splits["train"].id,
                                  obj["train"]["id"].astype(str))


def test_casp_pickle(tmp_path):
    rng = np.random.default_rng(5)
    obj = {
        s: {
            "text": rng.standard_normal((n, 44, 768)).astype(np.float32),
            "audio": rng.standard_normal((n, 44, 25)).astype(np.float32),
            "vision": rng.standard_normal((n, 44, 171)).astype(np.float32),
            "regression_labels": rng.uniform(-3, 3, (n, 1)).astype(np.float32),
        }
        for s, n in (("train", 5), ("valid", 3), ("test", 4))
    }
    dump(obj, tmp_path / "MSA_cross_datasets" / "mosi.pkl")
    ds = mmsa.read_casp(tmp_path, "mosi")
    assert ds.spec.dims == (768, 25, 171) and ds.spec.lens == (44, 44, 44)
    assert ds.variant == "aligned" and not ds.spec.has_text_ids
    assert (ds["train"].audio_lengths == 44).all()
    np.testing.assert_array_equal(ds["test"].classification_labels,
                                  three_class(obj["test"]["regression_labels"].ravel()))


def test_label_csv(tmp_path):
    p = tmp_path / "label.csv"
    p.write_text("video_id,clip_id,text,label,annotation,mode\n"
                 "abc,1,hello there,1.2,Positive,train\nabc,2,,0.0,Neutral,valid\n"
                 "0123,10,no,-2,Negative,test\n")
    df = mmsa.read_label_csv(p)
    assert list(df["id"]) == ["abc$_$1", "abc$_$2", "0123$_$10"]
    assert df["label"].tolist() == [1.2, 0.0, -2.0] and df["text"].iloc[1] == ""
    # `annotation` is optional (derived from the label's sign); the others are required
    p.write_text("video_id,clip_id,text,label,mode\nabc,1,x,1,train\nabc,2,y,-0.4,test\n")
    assert mmsa.read_label_csv(p)["annotation"].tolist() == ["Positive", "Negative"]
    p.write_text("video_id,clip_id,text,annotation,mode\nabc,1,x,Positive,train\n")
    with pytest.raises(DataError, match="missing column.*label"):
        mmsa.read_label_csv(p)
    p.write_text("video_id,clip_id,text,label,annotation,mode\nabc,1,x,1,Positive,dev\n")
    with pytest.raises(DataError, match="bad mode.*'dev'"):
        mmsa.read_label_csv(p)


def test_real_label_csv(shared_data):
    df = mmsa.read_label_csv(shared_data / "mosi" / "label.csv")
    assert df.groupby("mode").size().to_dict() == {"train": 1284, "valid": 229, "test": 686}
    tr = df[df["mode"] == "train"]["label"].to_numpy()
    assert np.bincount(three_class(tr)).tolist() == [552, 53, 679]


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("writer", ["pickle", "joblib"])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    obj = mmsa_obj(True)
    obj["train"]["id"] = _Evil(str(marker))
    path = tmp_path / "evil.pkl"
    if writer == "pickle":
        dump(obj, path)
    else:
        joblib.dump(obj, path)
    with pytest.raises(DataError, match=r"evil\.pkl: refused to unpickle posix\.system|refused to unpickle nt\.system"):
        safe_load(path)
    assert not marker.exists()


def test_other_globals_refused(tmp_path):
    import collections

    dump({"train": collections.Counter("ab")}, tmp_path / "c.pkl")
    with pytest.raises(DataError, match="refused to unpickle collections.Counter"):
        safe_load(tmp_path / "c.pkl")


def test_truncated_file(tmp_path):
    path = dump(mmsa_obj(True), tmp_path / "t.pkl")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.pkl: truncated or corrupt pickle"):
        mmsa.read_mmsa_pickle(path)


def test_safe_torch_load(tmp_path):
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert safe_torch_load(tmp_path / "ok.pt")["w"].sum() == 2
    torch.save({"x": _Evil(str(tmp_path / "pwned"))}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="refused to load checkpoint"):
        safe_torch_load(tmp_path / "bad.pt")
    assert not (tmp_path / "pwned").exists()


def test_writer_roundtrip_is_mmsa_layout_and_deterministic(tmp_path):
    ds = mmsa.read_mmsa_pickle(dump(mmsa_obj(False), tmp_path / "in.pkl"), "x", "unaligned")
    a = mmsa.write_mmsa_pickle(ds, tmp_path / "a.pkl")
    b = mmsa.write_mmsa_pickle(ds, tmp_path / "b.pkl")
    assert a.read_bytes() == b.read_bytes()
    with open(a, "rb") as f:
        raw = pickle.load(f)  # a stock unpickler (as MMSA/CIDer use) reads it
    assert list(raw["train"]) == list(mmsa.MMSA_KEYS)
    back = mmsa.read_mmsa_pickle(a, "x", "unaligned")
    for s in ("train", "valid", "test"):
        for key in ("text", "audio", "vision", "audio_lengths", "text_bert", "id", "raw_text"):
            np.testing.assert_array_equal(getattr(back[s], key), getattr(ds[s], key))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_registry_entries_and_path_loading(tmp_path, monkeypatch):
    assert {"synth-mosi", "synth-mosei", "mosi", "mosei"} <= set(DATASETS.names())
    assert DATASETS.get("mosi").cross_partner == "mosei"
    assert DATASETS.get("synth-mosi").cross_partner == "synth-mosei"
    path = dump(mmsa_obj(True), tmp_path / "mine.pkl")
    ds = load_dataset(str(path))
    assert ds.variant == "aligned" and load_dataset(str(path)) is ds  # cached, not reloaded
    monkeypatch.setenv("MER_BENCH_DATA", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="MOSI unaligned features not found"):
        load_dataset("mosi")


def test_registry_real_mosi_from_data_root(tmp_path):
    counts = (1284, 229, 686)
    obj = mmsa_obj(True, counts=counts, dt=4, lt=6, da=2, dv=3)
    dump(obj, tmp_path / "CMU-MOSI" / "Processed" / "aligned_50.pkl")
    ds = load_dataset("mosi", "aligned", data_root=tmp_path)
    assert ds.counts() == dict(zip(("train", "valid", "test"), counts))
    small = load_dataset("mosi", "aligned", data_root=tmp_path, scale=0.1)
    assert small.counts()["train"] == 128


# ----------------------------------------------------------------------------- CLI
def _verify_cli(path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MER_BENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "mer_bench.cli", "data", "verify", str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    obj = mmsa_obj(False)
    obj["train"]["id"] = _Evil(str(tmp_path / "pwned"))
    out["malicious"] = dump(obj, tmp_path / "evil.pkl")
    p = dump(mmsa_obj(False), tmp_path / "trunc.pkl")
    p.write_bytes(p.read_bytes()[:500])
    out["truncated"] = p
    obj = mmsa_obj(False)
    obj["valid"]["text"] = obj["valid"]["text"][:, :, :3]
    out["shape"] = dump(obj, tmp_path / "shape.pkl")
    obj = mmsa_obj(False)
    del obj["test"]["regression_labels"]
    out["key"] = dump(obj, tmp_path / "key.pkl")
    obj = mmsa_obj(False)
    obj["train"]["text"][0, 0, 0] = np.nan
    out["nan"] = dump(obj, tmp_path / "nan.pkl")
    out["count"] = dump(mmsa_obj(True), tmp_path / "MOSI" / "Processed" / "aligned_50.pkl")
    return out


def test_verify_cli_errors_are_one_line_exit_2(tmp_path):
    expect = {
        "malicious": "refused to unpickle",
        "truncated": "truncated or corrupt",
        "shape": "differs from train",
        "key": "missing key 'regression_labels'",
        "nan": "contains NaN",
        "count": "expected 1284",
    }
    for kind, path in _bad_files(tmp_path).items():
        r = _verify_cli(path, tmp_path / "cache")
        assert r.returncode == 2, (kind, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, kind
        assert expect[kind] in r.stderr and str(path.name) in r.stderr, (kind, r.stderr)
    assert not (tmp_path / "pwned").exists()


def test_verify_cli_ok_on_good_file(tmp_path):
    r = _verify_cli(dump(mmsa_obj(False), tmp_path / "good.pkl"), tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("OK") and "sha256" in r.stdout
