"""OOD repartition: the real MOSI text/labels, the split file round trip, serving by id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_label_csv

from mer_bench.data.schema import SPLITS, MMDataset, Split
from mer_bench.errors import UserError
from mer_bench.splits import apply, files, published, search, source, statistic

ROOT = Path(__file__).resolve().parents[1]
MOSI_CSV = ROOT.parent / "shared" / "data" / "mosi" / "label.csv"
needs_mosi = pytest.mark.skipif(not MOSI_CSV.is_file(), reason="../shared/data/mosi/label.csv absent")


@pytest.fixture(scope="module")
def mosi_src():
    return source.source_from_label_csv(MOSI_CSV)


@needs_mosi
@pytest.mark.parametrize("task", ["binary", "seven"])
@pytest.mark.parametrize("strength", ["max", None])
def test_mosi_ood_split_shifts_words_keeps_sizes_and_priors(mosi_src, task, strength):
    src = mosi_src
    doc, res = search.build_split_document(src, "mosi", task, seed=1111, strength=strength)
    iid, new = doc["iid"], doc["ood"]
    print(
        f"\nMOSI {task}: TV iid {iid['statistic']['tv']:.4f} -> ood {new['statistic']['tv']:.4f};"
        f" flip iid {iid['statistic']['flip']:.3f} -> ood {new['statistic']['flip']:.3f};"
        f" train-vs-valid TV ood {new['train_vs_valid']['tv']:.4f}; {res.seconds:.2f} s"
        f"\n  train priors iid {iid['priors']['train']}\n  train priors ood {new['priors']['train']}"
        f"\n  test priors  iid {iid['priors']['test']}\n  test priors  ood {new['priors']['test']}"
    )
    assert {s: len(doc["ids"][s]) for s in SPLITS} == {"train": 1284, "valid": 229, "test": 686}
    all_ids = sum((doc["ids"][s] for s in SPLITS), [])
    assert sorted(all_ids) == sorted(src.ids.tolist())  # a partition of the same samples
    assert new["statistic"]["tv"] > (2.5 if strength == "max" else 1.5) * iid["statistic"]["tv"]
    assert new["statistic"]["flip"] > iid["statistic"]["flip"]
    if task == "binary":  # test balance within 0.05 of training's (positive share of non-zero)
        share = {s: new["priors"][s][2] / (new["priors"][s][0] + new["priors"][s][2]) for s in SPLITS}
        assert abs(share["test"] - share["train"]) < 0.05
    # train and valid agree with each other (no more than an IID pair do, give or take noise)
    assert new["train_vs_valid"]["tv"] < iid["train_vs_valid"]["tv"] + 0.02
    p_iid, p_ood = np.array(iid["priors"]["train"]), np.array(new["priors"]["train"])
    # the search bounds the train+valid pool's priors; stratified valid sampling adds rounding
    slack = 2.0 / 1284
    assert np.all(np.abs(p_iid - p_ood) <= np.minimum(0.03, 0.25 * p_iid) + slack)
    t_iid, t_ood = np.array(iid["priors"]["test"]), np.array(new["priors"]["test"])
    assert np.all(np.abs(t_iid - t_ood) <= np.minimum(0.10, 0.5 * t_iid) + 1e-5)  # 6-dp json
    for s in SPLITS:
        assert min(new["priors"][s]) > 0  # every class present in every split
    assert res.seconds < 30

    # recomputing the statistic from the id lists alone gives the stored value
    rows = source.rows_from_ids(src, doc["ids"], "")
    index = statistic.WordIndex.build(src.texts, doc["params"]["min_count"])
    again = statistic.shift_statistic(index, src.labels(task), rows["train"], rows["test"], task)
    assert again == new["statistic"]


FAST = {"iters_per_sample": 5, "min_proposals": 10_000}


@needs_mosi
def test_strength_is_monotone_in_the_shift_statistic(mosi_src):
    tv = []
    for strength in (0.0, 0.25, 0.5, 0.75, "max"):
        doc, _ = search.build_split_document(mosi_src, "mosi", "binary", 1111, strength=strength,
                                             **FAST)
        tv.append(doc["ood"]["statistic"]["tv"])
    assert all(a < b for a, b in zip(tv, tv[1:])), tv
    assert tv[0] < doc["iid"]["statistic"]["tv"] + 0.05  # strength 0 stays near the IID split
    with pytest.raises(UserError, match="strength"):
        search.parse_strength("1.5")


@needs_mosi
@pytest.mark.parametrize("task", ["binary", "seven"])
def test_cider_priors_hit_published_train_counts_exactly(mosi_src, task):
    prior = published.published_train_priors("cider", "mosi", task)
    res = search.build_ood(mosi_src, task, 1111, train_priors=prior, **FAST)
    got = np.bincount(mosi_src.labels(task)[res.train], minlength=len(prior))
    want = np.floor(np.asarray(prior) * 1284 + 0.5).astype(int)  # these priors round exactly
    assert want.sum() == 1284 and got.tolist() == want.tolist()
    assert (len(res.train), len(res.valid), len(res.test)) == (1284, 229, 686)
    with pytest.raises(UserError, match="MOSI and MOSEI only"):
        published.published_train_priors("cider", "tiny", task)


@needs_mosi
def test_same_seed_same_split_other_seed_differs(mosi_src):
    a = search.build_ood(mosi_src, "binary", seed=7)
    b = search.build_ood(mosi_src, "binary", seed=7)
    c = search.build_ood(mosi_src, "binary", seed=8)
    for s in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, s), getattr(b, s))
    assert not np.array_equal(np.sort(a.test), np.sort(c.test))
    # row order of the input does not matter: rows are processed in id order
    perm = np.random.default_rng(0).permutation(len(mosi_src.ids))
    shuffled = source.SourceData(
        mosi_src.ids[perm], mosi_src.regression[perm], mosi_src.texts[perm], mosi_src.iid[perm]
    )
    d = search.build_ood(shuffled, "binary", seed=7)
    assert sorted(shuffled.ids[d.test]) == sorted(mosi_src.ids[a.test])


def test_words_and_stop_words():
    assert statistic.words("I didn't LIKE it, at ALL!") == ["i", "didn", "t", "like", "it", "at", "all"]
    assert statistic.content_words("the movie was really GOOD, good") == {"movie", "good"}


def test_shift_statistic_by_hand():
    # one word "w" in every document; train: w with 3 neg 1 pos; test: 1 neg 3 pos
    texts = np.array(["w"] * 8)
    labels = np.array([0, 0, 0, 2, 0, 2, 2, 2])
    index = statistic.WordIndex.build(texts, min_count=1)
    st = statistic.shift_statistic(index, labels, np.arange(4), np.arange(4, 8), "binary", alpha=0.0)
    assert st["tv"] == pytest.approx(0.5)  # |3/4 - 1/4|
    assert st["skew_train"] == pytest.approx(0.5) and st["skew_test"] == pytest.approx(0.5)
    assert st["flip"] == 0.0  # relative to each side's own prior, w leans nowhere


# ----------------------------------------------------------------------------- tiny dataset
def _tiny_dataset(n=(60, 20, 30), seed=0, name="tiny") -> MMDataset:
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "omega", "zeta"]
    splits = {}
    k = 0
    for s, m in zip(SPLITS, n):
        y = np.round(rng.uniform(-3, 3, m), 1).astype(np.float32)
        y[:3] = [-1.0, 0.0, 1.0]
        texts = [
            " ".join(rng.choice(vocab, size=4) .tolist() + (["good"] if v > 0 else ["bad"]))
            for v in y
        ]
        ids = np.array([f"v{(k + i) // 5}$_${(k + i) % 5}" for i in range(m)])
        k += m
        tb = np.zeros((m, 3, 8), dtype=np.int64)
        tb[:, 0, :3] = [101, 2000, 102]
        tb[:, 1, :3] = 1
        splits[s] = Split(
            text=rng.standard_normal((m, 8, 4)).astype(np.float32),
            audio=rng.standard_normal((m, 5, 2)).astype(np.float32),
            vision=rng.standard_normal((m, 6, 3)).astype(np.float32),
            audio_lengths=np.full(m, 5), vision_lengths=np.full(m, 6),
            regression_labels=y,
            classification_labels=np.where(y < 0, 0, np.where(y > 0, 2, 1)),
            id=ids, raw_text=np.array(texts), text_bert=tb,
        )
    return MMDataset(name=name, variant="unaligned", splits=splits, source="memory")


def _write_split(ds: MMDataset, task: str, root: Path) -> dict:
    src = source.source_from_splits(ds.splits)
    doc, _ = search.build_split_document(src, ds.name, task, seed=3, min_count=3)
    files.write_json_atomic(files.ood_json_path(ds.name, task, root), doc)
    return doc


def test_apply_ood_serves_rows_by_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path))
    ds = _tiny_dataset()
    doc = _write_split(ds, "binary", tmp_path)
    out = apply.apply_ood(ds, task="binary")
    assert out.counts() == {"train": 60, "valid": 20, "test": 30}
    by_id = {}
    for s in SPLITS:
        for r, v in enumerate(ds[s].id):
            by_id[v] = (s, r)
    for s in SPLITS:
        assert out[s].id.tolist() == doc["ids"][s]
        for r, v in enumerate(out[s].id):
            src_s, src_r = by_id[v]
            assert np.array_equal(out[s].text[r], ds[src_s].text[src_r])
            assert np.array_equal(out[s].vision[r], ds[src_s].vision[src_r])
            assert out[s].raw_text[r] == ds[src_s].raw_text[src_r]
            assert np.array_equal(out[s].text_bert[r], ds[src_s].text_bert[src_r])
    assert out.meta["distribution"] == "ood"
    assert out.meta["ood_split"]["algorithm_version"] == search.ALGORITHM_VERSION


def test_apply_ood_refuses_missing_or_mismatched(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path))
    ds = _tiny_dataset()
    with pytest.raises(UserError, match="mer-bench split build --dataset tiny --task seven"):
        apply.apply_ood(ds, task="seven")
    _write_split(ds, "seven", tmp_path)
    other = _tiny_dataset(seed=1)  # same ids, different labels/text
    with pytest.raises(UserError, match="built from different data") as e:
        apply.apply_ood(other, task="seven")
    assert "\n" not in str(e.value)
    # a file listing an unknown id
    path = files.ood_json_path("tiny", "seven", tmp_path)
    doc = json.loads(path.read_text())
    doc["ids"]["test"][0] = "nope$_$1"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="nope"):
        apply.apply_ood(ds, task="seven")


def test_cli_build_and_check_on_label_csv(tmp_path, capsys):
    from mer_bench.cli import main

    ds = _tiny_dataset(n=(120, 30, 50))
    csv = tmp_path / "tiny" / "label.csv"
    csv.parent.mkdir()
    write_label_csv(ds, csv)
    out = tmp_path / "splits"
    argv = ["split", "build", "--dataset", "tiny", "--task", "binary", "--label-csv", str(csv)]
    assert main([*argv, "--out", str(out), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    path = out / "tiny" / "binary" / "ood.json"
    assert str(path) in printed and "shift statistic" in printed
    doc = json.loads(path.read_text())
    for key in ("ids", "algorithm_version", "seed", "params", "source", "iid", "ood", "created_by"):
        assert key in doc
    assert doc["seed"] == 5 and "split build" in doc["created_by"]
    assert (out / "tiny" / "binary" / "cf_vocab.json").is_file()
    before = path.read_bytes()
    assert main([*argv, "--out", str(out), "--seed", "5"]) == 0
    assert path.read_bytes() == before  # byte-identical regeneration
    capsys.readouterr()
    assert main(["split", "check", "--task", "binary", "--label-csv", str(csv), "--path", str(path)]) == 0
    checked = capsys.readouterr().out
    assert "matches" in checked and "priors train" in checked
    assert main(["split", "check", "--dataset", "tiny", "--task", "binary", "--label-csv", str(csv),
                 "--split", "iid"]) == 0
    # a missing split file is one line on stderr and exit code 2
    assert main(["split", "check", "--task", "binary", "--path", str(tmp_path / "no.json"),
                 "--label-csv", str(csv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mer-bench split build" in err


def test_synth_source_matches_generated_data(tmp_path):
    synth = pytest.importorskip("mer_bench.data.synth")
    from mer_bench.data.mmsa import read_mmsa_pickle

    pkl = synth.synthesize("synth-mosi", scale=0.02, out=tmp_path / "s.pkl")
    ds = read_mmsa_pickle(pkl)
    from_data = source.source_from_splits(ds.splits)
    replayed = source.synth_source("synth-mosi", scale=0.02, verify=False)
    assert replayed is not None
    assert replayed.sha256() == from_data.sha256()
    assert np.array_equal(replayed.token_ids, from_data.token_ids)


def test_synth_replay_self_check():
    pytest.importorskip("mer_bench.data.synth")
    src = source.synth_source("synth-mosi")  # verify=True: replay checked against real output
    assert src is not None and len(src.ids) == 2199


def test_import_published_split_round_trip(tmp_path, monkeypatch):
    from mer_bench.data.mmsa import write_mmsa_pickle

    ds = _tiny_dataset(n=(40, 10, 20), name="pub")
    # a "published" repartition: same samples, moved between splits
    pooled = source.source_from_splits(ds.splits)
    order = np.random.default_rng(1).permutation(len(pooled.ids))
    picks = {"train": order[:40], "valid": order[40:50], "test": order[50:]}
    where = [(s, r) for s in SPLITS for r in range(len(ds[s]))]
    pub = MMDataset(
        "pub", "unaligned",
        {s: apply._gather(ds.splits, [where[i] for i in picks[s]]) for s in SPLITS},
    )
    pkl = write_mmsa_pickle(pub, tmp_path / "PUB_unaligned_50.pkl")
    path = published.import_published_split(pkl, "pub", "binary", out=tmp_path / "splits")
    doc = json.loads(path.read_text())
    assert doc["algorithm"] == "imported:cider"
    assert doc["ids"]["test"] == sorted(pub["test"].id.tolist())
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path / "splits"))
    served = apply.apply_ood(ds, task="binary")
    for s in SPLITS:
        assert sorted(served[s].id.tolist()) == sorted(pub[s].id.tolist())


def test_synthetic_without_matching_file_is_built_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path))
    ds = _tiny_dataset(name="synth-tiny")
    out = apply.apply_ood(ds, task="binary")  # no file: same algorithm, default seed, in memory
    assert out.meta["ood_split"]["built_in_memory"] is True
    assert out.counts() == ds.counts()
    _write_split(_tiny_dataset(seed=5, name="synth-tiny"), "binary", tmp_path)  # other data
    again = apply.apply_ood(ds, task="binary")
    assert again.meta["ood_split"]["built_in_memory"] is True
    assert all(np.array_equal(again[s].id, out[s].id) for s in SPLITS)


def test_scaled_real_dataset_serves_listed_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path))
    ds = _tiny_dataset()
    doc = _write_split(ds, "binary", tmp_path)
    small = MMDataset(
        ds.name, ds.variant, {s: ds[s].subset(np.arange(0, len(ds[s]), 2)) for s in SPLITS},
        meta={"scale": 0.5},
    )
    out = apply.apply_ood(small, task="binary")
    kept = set().union(*(small[s].id.tolist() for s in SPLITS))
    for s in SPLITS:
        assert out[s].id.tolist() == [v for v in doc["ids"][s] if v in kept]
