"""Split files: structural validation on load (one line, exit 2) and where splits are looked
up (user location, then the shipped ones) and written (never into the package)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_label_csv

from mer_bench.data.schema import SPLITS, MMDataset, Split
from mer_bench.errors import UserError
from mer_bench.splits import apply, files, search, source


def _tiny(n=(40, 10, 20), seed=0) -> MMDataset:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(12)]
    splits = {}
    for s, m in zip(SPLITS, n):
        y = np.round(rng.uniform(-3, 3, m), 1).astype(np.float32)
        texts = [" ".join(rng.choice(words, 5)) for _ in range(m)]
        splits[s] = Split(
            text=rng.standard_normal((m, 4, 3)).astype(np.float32),
            audio=rng.standard_normal((m, 4, 2)).astype(np.float32),
            vision=rng.standard_normal((m, 4, 2)).astype(np.float32),
            audio_lengths=np.full(m, 4), vision_lengths=np.full(m, 4),
            regression_labels=y, classification_labels=np.sign(y).astype(np.int64) + 1,
            id=np.array([f"{s}{i}$_$1" for i in range(m)]), raw_text=np.array(texts),
        )
    return MMDataset(name="tiny", variant="aligned", splits=splits, source="memory")


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path))
    ds = _tiny()
    doc, _ = search.build_split_document(source.source_from_splits(ds.splits), "tiny", "binary",
                                         3, min_count=3, min_proposals=2000)
    path = files.out_json_path("tiny", "binary")
    files.write_json_atomic(path, doc)
    return ds, doc, path


def _break(path: Path, doc: dict, how: str) -> None:
    doc = json.loads(json.dumps(doc))
    ids = doc["ids"]
    if how == "overlap":  # the defect of issue 15: test drawn from train
        ids["test"] = ids["train"][: len(ids["test"])]
    elif how == "duplicate":
        ids["valid"][1] = ids["valid"][0]
    elif how == "size":
        doc["ood"]["sizes"]["test"] += 1
    elif how == "missing":  # a known id left out of every split
        ids["train"] = ids["train"][1:]
        doc["ood"]["sizes"]["train"] -= 1
    elif how == "unknown":
        ids["train"][0] = "nope$_$9"
    elif how == "type":
        ids["test"] = "abc"
    elif how == "empty":
        ids["valid"], doc["ood"]["sizes"]["valid"] = [], 0
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("how", "message"), [
    ("overlap", "share"), ("duplicate", "duplicate"), ("size", "states"), ("missing", "leaves"),
    ("unknown", "not in the data"), ("type", "list of id strings"), ("empty", "empty"),
])
def test_broken_split_is_refused_in_one_line(built, how, message):
    ds, doc, path = built
    assert apply.apply_ood(ds, "binary").counts() == {"train": 40, "valid": 10, "test": 20}
    _break(path, doc, how)
    with pytest.raises(UserError, match=message) as e:
        apply.apply_ood(ds, "binary")
    assert "\n" not in str(e.value)


def test_not_json_is_one_line(tmp_path):
    p = tmp_path / "ood.json"
    p.write_text("{ nope")
    with pytest.raises(UserError, match="cannot read split") as e:
        files.read_split_json(p)
    assert "\n" not in str(e.value)
    p.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        files.read_split_json(p)


def test_split_check_reports_checks_and_probe_and_refuses_broken_files(built, tmp_path, capsys):
    from mer_bench.cli import main

    ds, doc, path = built
    csv = write_label_csv(ds, tmp_path / "label.csv")
    args = ["split", "check", "--task", "binary", "--label-csv", str(csv), "--path", str(path)]
    assert main([*args, "--probe", "text"]) == 0
    out = capsys.readouterr().out
    assert "disjoint and duplicate-free: ok" in out and "covers the data's 70 ids: ok" in out
    assert "probe" in out and "majority" in out and "iid" in out and "ood" in out
    _break(path, doc, "overlap")
    assert main([*args, "--probe", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "share" in err and "Traceback" not in err


def test_lookup_order_user_then_shipped_and_build_never_writes_into_the_package(
        tmp_path, monkeypatch):
    shipped = files.shipped_dir()
    assert shipped is not None and (shipped / "synth-mosi" / "binary" / "ood.json").is_file()
    monkeypatch.delenv("MER_BENCH_SPLITS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    user = files.user_dir()
    assert user == tmp_path / "xdg" / "mer-bench" / "splits"
    # nothing built yet: the shipped file is found
    assert files.ood_json_path("synth-mosi", "binary") == shipped / "synth-mosi" / "binary" / "ood.json"
    # a split the user built is found first, and was written to the user location
    assert files.out_json_path("synth-mosi", "binary") == user / "synth-mosi" / "binary" / "ood.json"
    files.write_json_atomic(files.out_json_path("synth-mosi", "binary"), {"ids": {}})
    assert files.ood_json_path("synth-mosi", "binary") == user / "synth-mosi" / "binary" / "ood.json"
    monkeypatch.setenv("MER_BENCH_SPLITS", str(tmp_path / "env"))
    assert files.out_json_path("x", "seven").parent.parent.parent == tmp_path / "env"
    assert files.out_json_path("x", "seven", tmp_path / "o") == tmp_path / "o" / "x" / "seven" / "ood.json"
    # an installed package (no checkout) finds the wheel's copy under <prefix>/share
    import mer_bench.paths as paths

    fake = tmp_path / "prefix"
    (fake / "share" / "mer-bench" / "splits").mkdir(parents=True)
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(files.sysconfig, "get_path", lambda name: str(fake))
    assert files.shipped_dir() == fake / "share" / "mer-bench" / "splits"


def test_wheel_ships_the_committed_splits_as_data_files():
    """pyproject maps every committed split file to <prefix>/share/mer-bench/splits."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())
    data_files = conf["tool"]["setuptools"]["data-files"]
    shipped = {str(p.relative_to(root)) for p in (root / "splits").rglob("*") if p.is_file()}
    listed = set()
    for dest, patterns in data_files.items():
        assert dest.startswith("share/mer-bench/splits")
        for pat in patterns:
            listed |= {str(p.relative_to(root)) for p in root.glob(pat)}
    assert shipped and shipped <= listed


def test_version_1_files_still_load_and_record_their_version(built):
    ds, doc, path = built
    old = json.loads(json.dumps(doc))
    old["algorithm_version"] = "1.0"
    del old["params"]["strength"]
    path.write_text(json.dumps(old))
    served = apply.apply_ood(ds, "binary")
    assert served.meta["ood_split"]["algorithm_version"] == "1.0"
    assert served.meta["ood_split"]["strength"] == "max"
    assert search.ALGORITHM_VERSION == "2.0" and search.DEFAULT_STRENGTH == 0.9


def test_default_strength_is_per_dataset_and_recorded(built):
    """synth-mosei's calibrated default (0.7) is used when no strength is given, and recorded;
    an explicit strength wins; other datasets keep DEFAULT_STRENGTH."""
    ds, _, _ = built
    src = source.source_from_splits(ds.splits)
    assert search.parse_strength(None, "mosi") == search.DEFAULT_STRENGTH
    assert search.parse_strength(None, "synth-mosei") == search.DATASET_STRENGTH["synth-mosei"]
    assert search.parse_strength("0.3", "synth-mosei") == 0.3
    doc, _ = search.build_split_document(src, "synth-mosei", "binary", 1111, min_count=3)
    assert doc["params"]["strength"] == search.DATASET_STRENGTH["synth-mosei"] != 0.9
    doc, _ = search.build_split_document(src, "tiny", "binary", 1111, min_count=3)
    assert doc["params"]["strength"] == search.DEFAULT_STRENGTH
    root = Path(__file__).resolve().parents[1]
    committed = json.loads((root / "splits/synth-mosei/binary/ood.json").read_text())
    assert committed["params"]["strength"] == search.DATASET_STRENGTH["synth-mosei"]


@pytest.mark.slow
def test_installed_wheel_finds_shipped_splits_and_builds_outside_the_package(tmp_path):
    """Build the wheel, install it under a fresh prefix (no checkout on the path), and run the
    main job's cheap twin and a split build from there."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "whl"), str(root)], check=True)
    wheel = next((tmp_path / "whl").glob("mer_bench-*.whl"))
    prefix = tmp_path / "prefix"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)],
                   check=True)
    site_dir = next(prefix.glob("lib/python*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site_dir), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "MER_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("MER_BENCH_SPLITS", None)
    run = tmp_path / "cwd"
    run.mkdir()
    code = ("import mer_bench.splits.files as f; print(f.shipped_dir()); "
            "print(f.ood_json_path('mosi', 'binary'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=run, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0] == str(prefix / "share" / "mer-bench" / "splits") and Path(out[1]).is_file()
    before = sorted(p for p in prefix.rglob("*") if p.is_file())
    cli = [sys.executable, "-c", "import sys; from mer_bench.cli import main; sys.exit(main())"]
    subprocess.run([*cli, "split", "build", "--dataset", "synth-mosi", "--task", "binary"],
                   cwd=run, env=env, check=True, capture_output=True)
    assert (tmp_path / "xdg" / "mer-bench" / "splits" / "synth-mosi" / "binary" / "ood.json").is_file()
    subprocess.run([*cli, "run", "--model", "lf_dnn", "--scenario", "rmfm-ood", "--scale", "0.1",
                    "--epochs", "1"], cwd=run, env=env, check=True, capture_output=True)
    after = sorted(p for p in prefix.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert [p for p in after if p not in before] == []  # nothing written into the install


def test_an_ood_view_does_not_keep_its_base_in_memory(monkeypatch):
    """The repartitioned view copies what its cells read; the base leaves the cache (it was a
    second copy of the data), and a cached view is served without rebuilding the base."""
    from mer_bench.data import registry
    from mer_bench.datasets import load_dataset

    registry.clear_cache()
    view = load_dataset("synth-mosi", "aligned", "ood", scale=0.05)
    base_key = registry.iid_source("synth-mosi", "aligned", None, 0.05)[0]
    assert base_key not in registry._CACHE and (*base_key, "ood", "binary") in registry._CACHE

    def no_rebuild(*a, **k):
        raise AssertionError("the base was rebuilt")

    monkeypatch.setattr(registry, "iid_source", lambda *a, **k: (base_key, no_rebuild))
    monkeypatch.setattr("mer_bench.datasets.iid_source", registry.iid_source)
    assert load_dataset("synth-mosi", "aligned", "ood", scale=0.05) is view
    registry.clear_cache()
