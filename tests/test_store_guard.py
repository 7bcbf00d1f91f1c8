"""The store under hostile input: data identity in every key, safe run ids, corrupt and
foreign files, checkpoints, claims, orphaned workers, umask, unusable results locations."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mer_bench.data.synth import synthesize
from mer_bench.errors import UserError
from mer_bench.results.store import CellBusy, Store
from mer_bench.training import runner
from mer_bench.training.keys import dataset_slug, model_code_version
from mer_bench.training.runner import RunConfig, run_cell, run_cells

TINY = dict(dataset="synth-mosi", scale=0.05, epochs=1, rates=(0.0, 1.0))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- item 2
def test_dataset_path_stays_inside_results_and_changed_data_is_a_new_cell(tmp_path):
    data = tmp_path / "data"
    synthesize("synth-mosi", scale=0.05, out=data / "x.pkl")
    res = tmp_path / "deep" / "results"
    # a relative path with `..` components, as `--dataset ../../x.pkl` would be
    rel = os.path.relpath(data / "x.pkl", Path.cwd())
    assert rel.startswith("..")
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", dataset=rel, epochs=1, rates=(0.0, 1.0))
    before = _files(tmp_path)
    a = run_cell(cfg, 1111, str(res))
    assert "/" not in a["run_id"] and a["run_id"].split("__")[1] == "file-x"
    assert all(res in p.parents for p in _files(tmp_path) - before)
    assert a["data"]["identity"]["sha256"] == a["data"]["sha256"]

    # same path, other data: not "already finished", and the checkpoint is not reused
    synthesize("synth-mosi", scale=0.05, seed=7, out=data / "x.pkl")
    runner._FRESH.clear()
    from mer_bench.data.registry import clear_cache

    clear_cache()
    b = run_cell(cfg, 1111, str(res))
    assert b["run_id"] != a["run_id"]
    assert b["train_keys"] != a["train_keys"] and not b["checkpoint_reused"]
    assert b["data"]["sha256"] != a["data"]["sha256"]


def test_slug_is_safe_for_any_dataset_argument():
    assert dataset_slug("synth-mosi") == "synth-mosi"
    for bad in ("../../x.pkl", "/abs/dir/x.pkl", "a__b.pkl", "..", "we ird/$(x).pkl"):
        slug = dataset_slug(bad)
        assert slug.startswith("file-") and "/" not in slug and "__" not in slug
        assert ".." not in slug


def test_training_key_covers_data_split_and_model_code(monkeypatch):
    r = runner.resolve(RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY), 1111)
    ident = {"sha256": "a", "split_sha256": "b"}
    k1 = runner.replace(r, data=ident).train_key()
    assert runner.replace(r, data={**ident, "sha256": "c"}).train_key() != k1
    assert runner.replace(r, data={**ident, "split_sha256": "c"}).train_key() != k1
    monkeypatch.setattr(runner, "model_code_version", lambda model: "other-code")
    assert runner.replace(r, data=ident).train_key() != k1
    assert model_code_version("lf_dnn") == model_code_version("lf_dnn")
    assert model_code_version("lf_dnn") != model_code_version("mult")


def test_ood_record_keeps_its_split_and_identity(tmp_path):
    iid = runner.identified(RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY), 1111)[0]
    rec = run_cell(RunConfig(model="lf_dnn", scenario="rmfm-ood", **TINY), 1111, str(tmp_path))
    split = rec["data"]["ood_split"]
    assert split["built_in_memory"] is True and "path" in split
    assert rec["data"]["identity"]["split_sha256"] != iid.data["split_sha256"]
    assert rec["data"]["identity"]["sha256"] == iid.data["sha256"]


# ----------------------------------------------------------------------------- item 5
def _good_run(store: Store, rid: str, seed: int = 1) -> None:
    grid, vals = ["0.0", "1.0"], [0.8, 0.4]
    rows = pd.DataFrame([dict(run_id=rid, model="m", dataset="synth-mosi", variant="unaligned",
                              task="binary", scenario="rmfm-iid", protocol="fair", seed=seed,
                              rate=g, metric="Non0_acc_2", value=v) for g, v in zip(grid, vals)])
    rec = {"run_id": rid, "model": "m", "scenario": "rmfm-iid", "seed": seed, "grid": grid,
           "metrics": {g: {"Non0_acc_2": v} for g, v in zip(grid, vals)},
           "output": "classification", "tau": {"tau": 0.0}, "train_policy": "x",
           "training": {"epochs_run": 1}}
    store.write_run(rid, rec, rows, {"labels": __import__("numpy").zeros(1)})


def test_corrupt_and_foreign_files_are_named_and_skipped(tmp_path, capsys):
    store = Store(tmp_path)
    for rid in ("good", "trunc", "foreign", "renamed", "csvlies", "csvseed"):
        _good_run(store, rid)
    runs = tmp_path / "runs"
    (runs / "trunc.json").write_text('{"run_id": "tru')
    (runs / "foreign.json").write_text("[1, 2, 3]")
    rec = json.loads((runs / "renamed.json").read_text())
    (runs / "renamed.json").write_text(json.dumps({**rec, "run_id": "someone-else"}))
    (runs / "csvlies.csv").write_text((runs / "csvlies.csv").read_text().replace("0.8", "0.99"))
    (runs / "csvseed.csv").write_text((runs / "csvseed.csv").read_text().replace(",1,", ",2,"))
    (runs / "binary.csv").write_bytes(b"\x00\xff" * 10)
    (runs / "binary.json").write_bytes(b"\x00\xff" * 10)
    df = store.table()
    assert set(df["run_id"]) == {"good"}
    # records whose own JSON is sound are listed; their CSV rows are not scored
    assert [r["run_id"] for r in store.records()] == ["csvlies", "csvseed", "good"]
    err = capsys.readouterr().err
    for name in ("trunc.json", "foreign.json", "renamed.json", "csvlies.csv", "csvseed.csv",
                 "binary.json"):
        assert name in err, name
    assert not store.is_done("trunc") and store.is_done("good")


def test_report_on_a_store_of_only_bad_files_is_one_line(tmp_path, capsys):
    from mer_bench.cli import main

    store = Store(tmp_path)
    _good_run(store, "a")
    (tmp_path / "runs" / "a.json").write_text("not json")
    assert main(["report", "--results", str(tmp_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no finished runs" in last
    (tmp_path / "predictions").mkdir(exist_ok=True)
    (tmp_path / "predictions" / "a.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="a.npz"):
        store.load_predictions("a")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mer-bench-pwned",))


def test_checkpoints_go_through_the_safe_loader_and_must_match(tmp_path):
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    rec = run_cell(cfg, 1111, str(tmp_path))
    ckpt = Store(tmp_path).checkpoint_path(rec["train_keys"][0])
    other = RunConfig(model="lf_dnn", scenario="trmfm-iid", **TINY)  # shares the training
    good = ckpt.read_bytes()

    ckpt.write_bytes(b"garbage")
    with pytest.raises(UserError, match="--force"):
        run_cell(other, 1111, str(tmp_path))
    ckpt.write_bytes(pickle.dumps({"model": _Evil(), "info": {}}))
    with pytest.raises(UserError, match="--force"):
        run_cell(other, 1111, str(tmp_path))
    assert not Path("/tmp/mer-bench-pwned").exists()
    state = torch.load(__import__("io").BytesIO(good), weights_only=True)
    torch.save({**state, "seed": 9}, ckpt)  # e.g. copied in from another seed's training
    with pytest.raises(UserError, match="seed 9"):
        run_cell(other, 1111, str(tmp_path))
    runner._FRESH.clear()
    assert not run_cell(other, 1111, str(tmp_path), force=True)["checkpoint_reused"]


def test_a_claimed_cell_is_not_trained_twice(tmp_path, monkeypatch):
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    r, _ = runner.identified(cfg, 1111)
    store = Store(tmp_path)
    with store.claim(r.run_id):  # a live process (this one) computes the cell
        with pytest.raises(CellBusy, match="being computed"):
            run_cell(cfg, 1111, str(tmp_path))
        assert run_cells([(cfg, 1111)], results=str(tmp_path), progress=False) == []
    assert not store.claim_path(r.run_id).exists()
    # a claim left by a dead process is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    store.claim_path(r.run_id).write_text(f"{dead} {__import__('socket').gethostname()}")
    assert run_cell(cfg, 1111, str(tmp_path))["status"] == "finished"


def test_a_training_shared_by_cells_is_not_trained_twice_at_once(tmp_path):
    # rmfm-iid and trmfm-iid share one IID training: a second grid reaching the other cell
    # while the first trains must skip it, not train the same checkpoint again beside it
    first = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    other = RunConfig(model="lf_dnn", scenario="trmfm-iid", **TINY)
    r, _ = runner.identified(other, 1111)
    key = r.train_key()
    assert key == runner.identified(first, 1111)[0].train_key()
    store = Store(tmp_path)
    with store.claim_training(key):  # a live process (this one) trains it
        with pytest.raises(CellBusy, match="training .* is running"):
            run_cell(other, 1111, str(tmp_path))
        assert run_cells([(other, 1111)], results=str(tmp_path), progress=False) == []
        assert not store.checkpoint_path(key).exists() and not store.is_done(r.run_id)
    assert not store.training_claim_path(key).exists()
    assert not run_cell(other, 1111, str(tmp_path))["checkpoint_reused"]
    assert run_cell(first, 1111, str(tmp_path))["checkpoint_reused"]
    assert not list((tmp_path / "checkpoints").glob("*.claim"))


def test_orphaned_worker_exits(tmp_path):
    child = (
        f"import os, sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r});"
        "from mer_bench.training.watchdog import exit_when_orphaned;"
        "exit_when_orphaned(int(sys.argv[1]), 0.05); time.sleep(60)"
    )
    # the shell starts the worker and dies at once, as a killed grid parent would
    script = f'{sys.executable} -c "{child}" $$ >/dev/null 2>&1 & echo $!; sleep 3'
    sh = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(sh.stdout.readline())
    time.sleep(2)
    assert _alive(pid)  # a worker whose parent lives keeps running
    sh.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in state


# ----------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_store_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        _good_run(Store(tmp_path), "u")
    finally:
        os.umask(old)
    for p in (tmp_path / "runs" / "u.json", tmp_path / "runs" / "u.csv",
              tmp_path / "predictions" / "u.npz"):
        assert p.stat().st_mode & 0o777 == mode, p


# ----------------------------------------------------------------------------- item 4 (store)
def _no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("trained although the results location is unusable")

    monkeypatch.setattr(runner, "train", boom)


def test_unusable_results_location_is_found_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_cells([(cfg, 1111)], results=str(a_file), progress=False)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "runs").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_cell(cfg, 1111, str(tmp_path / "r"))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(UserError, match="free"):
        run_cell(cfg, 1111, str(tmp_path / "full"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_results_location(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(UserError, match="not writable"):
        run_cell(RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY), 1111, str(ro / "r"))


def test_write_failure_after_training_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "write_run", full)
    with pytest.raises(UserError, match="kept") as e:
        run_cell(RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY), 1111, str(tmp_path))
    assert "No space left" in str(e.value) and "\n" not in str(e.value)
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_grid_workers_stop_when_the_parent_is_killed(tmp_path):
    """`kill -9` of `grid --jobs 2`: its joblib workers exit instead of training on."""
    import signal

    res = tmp_path / "res"
    parent = subprocess.Popen(
        [sys.executable, "-m", "mer_bench.cli", "grid", "--models", "lf_dnn", "--scenarios",
         "rmfm-iid,rmfm-ood", "--scale", "0.05", "--epochs", "500", "--patience", "500",
         "--jobs", "2", "--quiet", "--results", str(res)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((res / "runs").glob("*.claim"))) < 2:
        time.sleep(0.5)  # both workers are computing a cell
    workers = _children(parent.pid)
    assert len(list((res / "runs").glob("*.claim"))) == 2 and workers
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    assert not list((res / "runs").glob("*.json"))  # nothing half-finished was recorded
