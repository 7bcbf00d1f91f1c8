"""The harness end to end at tiny scale: run, resume, determinism, report, plot, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from mer_bench.cli import main
from mer_bench.results.store import Store
from mer_bench.training import runner
from mer_bench.training.runner import RunConfig, run_cell, run_cells

TINY = dict(dataset="synth-mosi", scale=0.05, epochs=2, rates=(0.0, 0.5, 1.0))


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mer_bench.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    a = run_cell(cfg, 1111, str(tmp_path / "a"))
    b = run_cell(cfg, 1111, str(tmp_path / "b"))
    assert a["run_id"] == b["run_id"]
    assert a["metrics"] == b["metrics"]
    c = run_cell(cfg, 1112, str(tmp_path / "a"))
    assert c["run_id"] != a["run_id"]


def test_record_has_provenance_and_tidy_rows(tmp_path):
    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY)
    rec = run_cell(cfg, 1111, str(tmp_path))
    for key in ("config", "git_commit", "versions", "environment", "train_policy", "tau",
                "timings", "peak_memory_mb", "data", "auilc", "compat", "seed", "model_hparams"):
        assert key in rec
    from baselines.lf_dnn import LFDNN

    assert rec["model_hparams"] == json.loads(json.dumps(LFDNN.defaults))
    assert rec["train_policy"] == "per-sample-uniform"
    assert rec["data"]["sha256"]
    rows = pd.read_csv(Store(tmp_path).rows_path(rec["run_id"]), dtype={"rate": str})
    assert list(rows.columns) == ["run_id", "model", "dataset", "variant", "task", "scenario",
                                  "protocol", "seed", "rate", "metric", "value"]
    assert set(rows["rate"]) == {"0.0", "0.5", "1.0"}
    preds = Store(tmp_path).load_predictions(rec["run_id"])
    assert preds["scores@0.5"].shape[0] == preds["labels"].shape[0]


def test_only_rmfm_runs_keep_joint_representations(tmp_path):
    """Fig. 8 plots RMFM runs only; other scenarios' files do not carry the (large) joints."""
    store = Store(tmp_path)
    kept = {}
    for scenario in ("rmfm-iid", "rmm-iid"):  # one shared training
        rec = run_cell(RunConfig(model="lf_dnn", scenario=scenario, **TINY), 1111, str(tmp_path))
        kept[scenario] = [k for k in store.load_predictions(rec["run_id"]) if k.startswith("joint@")]
    assert kept["rmfm-iid"] and not kept["rmm-iid"]


def test_interrupted_grid_resumes_without_recomputing(tmp_path, monkeypatch):
    cfgs = [RunConfig(model="lf_dnn", scenario=s, **TINY) for s in ("rmfm-iid", "rmm-iid")]
    cells = [(cfgs[0], 1111), (cfgs[1], 1112)]
    calls: list[tuple[str, int]] = []
    real = runner.run_cell

    def flaky(cfg, seed, results, force=False, progress=False):
        calls.append((cfg.scenario, seed))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the grid is killed during the second cell
        return real(cfg, seed, results, force=force, progress=progress)

    monkeypatch.setattr(runner, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, results=str(tmp_path), progress=False)
    store = Store(tmp_path)
    ids = [runner.identified(c, s)[0].run_id for c, s in cells]  # run ids carry the data's identity
    done = [i for i in ids if store.is_done(i)]
    assert len(done) == 1
    first_mtime = store.record_path(done[0]).stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(runner, "run_cell", real)
    recomputed: list[tuple[str, int]] = []

    def counting(cfg, seed, results, force=False, progress=False):
        recomputed.append((cfg.scenario, seed))
        return real(cfg, seed, results, force=force, progress=progress)

    monkeypatch.setattr(runner, "run_cell", counting)
    records = run_cells(cells, results=str(tmp_path), progress=False)
    assert recomputed == [("rmm-iid", 1112)]
    assert len(records) == 2
    assert store.record_path(done[0]).stat().st_mtime_ns == first_mtime


def test_training_is_shared_across_scenarios(tmp_path):
    a = run_cell(RunConfig(model="lf_dnn", scenario="rmfm-iid", **TINY), 1111, str(tmp_path))
    b = run_cell(RunConfig(model="lf_dnn", scenario="trmfm-iid", **TINY), 1111, str(tmp_path))
    assert a["train_keys"] == b["train_keys"]
    assert b["checkpoint_reused"] and not a["checkpoint_reused"]
    # the complete-data point uses the same weights, so it scores the same
    assert a["metrics"]["0.0"] == b["metrics"]["0.0"]
    # --force retrains (code may have changed since the checkpoint), once per shared training
    runner._FRESH.clear()
    cells = [(RunConfig(model="lf_dnn", scenario=s, **TINY), 1111) for s in ("rmfm-iid", "trmfm-iid")]
    forced = run_cells(cells, results=str(tmp_path), force=True, progress=False)
    assert [r["checkpoint_reused"] for r in forced] == [False, True]
    assert forced[0]["metrics"] == a["metrics"]  # same seed, same code: same result


def _fake_store(root, protocol_values):
    """A store with hand-made runs (predictions with the given Non0_acc_2 per rate): two
    models, two protocols, two seeds."""
    import numpy as np

    store = Store(root)
    y = np.tile([0, 2], 50)
    for protocol, model, seed, vals in protocol_values:
        rid = f"{model}__synth-mosi__unaligned__binary__rmfm-iid__{protocol}__s{seed}__x"
        grid = ["0.0", "0.5", "1.0"]
        preds = {"ids": np.array([f"i{i}" for i in range(100)]), "labels": y,
                 "y_reg": np.where(y == 2, 1.0, -1.0)}
        for r, v in zip(grid, vals):
            pred = np.where(np.arange(100) < round(100 * v), y, 2 - y)
            preds[f"scores@{r}"] = np.eye(3)[pred].astype(np.float32)
        rec = {"run_id": rid, "model": model, "scenario": "rmfm-iid", "seed": seed,
               "dataset": "synth-mosi", "variant": "unaligned", "task": "binary",
               "protocol": protocol, "grid": grid, "config_hash": "x", "status": "finished",
               "output": "classification", "tau": {"tau": 0.0}, "train_policy": "x",
               "training": {"epochs_run": 1}}
        rows = pd.DataFrame([dict(run_id=rid, model=model, dataset="synth-mosi",
                                  variant="unaligned", task="binary", scenario="rmfm-iid",
                                  protocol=protocol, seed=seed, rate=r, metric="Non0_acc_2",
                                  value=v) for r, v in zip(grid, vals)])
        store.write_run(rid, rec, rows, preds)
    return store


def test_report_never_mixes_protocols(tmp_path):
    from mer_bench.results.report import write_report

    _fake_store(tmp_path, [
        ("fair", "m1", 1, [0.8, 0.6, 0.4]),
        ("fair", "m1", 2, [0.8, 0.6, 0.4]),
        ("fair", "m2", 1, [0.7, 0.5, 0.3]),
        ("paper", "m2", 1, [0.99, 0.99, 0.99]),
    ])
    write_report(tmp_path, n_boot=200)
    md = (tmp_path / "leaderboard.md").read_text()
    fair, paper = md.split("## paper protocol")
    assert "99.00" not in fair and "99.00 [" in paper
    assert "ORACLE" in paper
    # m1 is best among fair runs at every rate, and is bold there (two seeds: std shown)
    assert "**80.00 ± 0.00 [" in fair
    auilc = pd.read_csv(tmp_path / "tables" / "fair_synth-mosi_unaligned_binary_auilc.csv",
                        index_col=0)
    assert set(auilc.index) == {"m1", "m2"}
    assert auilc.loc["m1", "seeds"] == 2 and auilc.loc["m2", "seeds"] == 1
    # trapezoid over [0, 0.5, 1]: (0.8+0.6)/2*0.5 + (0.6+0.4)/2*0.5 = 0.6
    assert auilc.loc["m1"].astype(str).str.contains("60.00").any()


def test_cli_run_report_plot_end_to_end(tmp_path):
    res = tmp_path / "res"
    p = cli("run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--scale", "0.05",
            "--epochs", "2", "--rates", "0,0.5,1", "--results", str(res))
    assert p.returncode == 0, p.stderr
    assert "AUILC" in p.stdout
    records = list((res / "runs").glob("*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["status"] == "finished"
    # rerun: nothing recomputed
    p = cli("run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--scale", "0.05",
            "--epochs", "2", "--rates", "0,0.5,1", "--results", str(res))
    assert p.returncode == 0 and "already finished" in p.stdout
    assert cli("report", "--results", str(res)).returncode == 0
    assert (res / "leaderboard.md").exists()
    p = cli("plot", "--results", str(res))
    assert p.returncode == 0, p.stderr
    assert list((res / "figures").glob("curve_*.png"))


def test_default_store_is_local_never_the_committed_board(tmp_path, monkeypatch):
    """A user's first `run && report && plot` writes to local-results/ (or $MER_BENCH_RESULTS)
    and leaves a checkout's committed `results/` untouched."""
    monkeypatch.setattr("mer_bench.alloc._applied", {})
    monkeypatch.delenv("MER_BENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    run = ["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--scale", "0.05",
           "--epochs", "1", "--rates", "0,1"]
    assert main(run) == 0 and main(["report", "--bootstrap", "50"]) == 0
    assert len(list((tmp_path / "local-results" / "runs").glob("lf_dnn__*.json"))) == 1
    assert (tmp_path / "local-results" / "leaderboard.md").is_file()
    assert not (tmp_path / "results").exists()
    monkeypatch.setenv("MER_BENCH_RESULTS", str(tmp_path / "mine"))
    assert main(run) == 0
    assert len(list((tmp_path / "mine" / "runs").glob("lf_dnn__*.json"))) == 1


def test_cli_cross_dataset_run_on_the_embedded_pair(tmp_path):
    """`*-cross` on the embedded default: train on synth-mosi's CASP-shaped twin, test on
    synth-mosei's, with CIDer's counterfactual pass (the twins carry token ids)."""
    res = tmp_path / "res"
    p = cli("run", "--model", "cider", "--scenario", "rmfm-cross", "--variant", "aligned",
            "--scale", "0.02", "--epochs", "1", "--rates", "0,1", "--results", str(res))
    assert p.returncode == 0, p.stderr
    rec = json.loads(next((res / "runs").glob("*.json")).read_text())
    assert rec["distribution"] == "cross" and rec["status"] == "finished"
    assert rec["data"]["cross"]["test"] == "synth-mosei"
    assert rec["data"]["cross"]["fitted_to"] == 44


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--model", "nope", "--scenario", "rmfm-iid"], "unknown model"),
        (["run", "--model", "lf_dnn", "--scenario", "nope-iid"], "scenario"),
        (["run", "--model", "lf_dnn", "--scenario", "tmfm-iid"], "aligned"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-cross"], "--variant aligned"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--rates", "0,x"], "rate"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--rates", "0,1.5"], "rate"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--seeds", "a"], "seed"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--dataset", "nope"], "dataset"),
        (["run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--hp", "bogus=1"], "bogus"),
        (["report", "--results", "/nonexistent/results"], "results"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, needle, capsys, monkeypatch):
    # In-process (a subprocess per case costs a torch import); the entry point's own exit code
    # is checked by test_cli_error_exit_code_through_the_entry_point.
    # Leave the test process's allocator alone; monkeypatch restores alloc's cache afterwards.
    monkeypatch.setattr("mer_bench.alloc._applied", {})
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2, capsys.readouterr()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert needle in err.lower()


@pytest.mark.parametrize("args", [["run", "--model", "nope", "--scenario", "rmfm-iid"],
                                  ["run", "--model", "lf_dnn", "--scenario", "rmfm-iid",
                                   "--rates", "0,x"]])
def test_cli_error_exit_code_through_the_entry_point(args):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_cli_missing_real_data_file(tmp_path):
    p = cli("run", "--model", "lf_dnn", "--scenario", "rmfm-iid", "--dataset", "mosi",
            "--data-root", str(tmp_path), "--results", str(tmp_path / "r"))
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


@pytest.mark.slow
def test_ray_backend_runs_a_small_grid(tmp_path):
    pytest.importorskip("ray")
    cells = [(RunConfig(model="lf_dnn", scenario=s, **TINY), 1111) for s in ("rmfm-iid", "rmm-iid")]
    records = run_cells(cells, results=str(tmp_path), jobs=2, backend="ray", progress=False)
    assert len(records) == 2
    assert all(Store(tmp_path).is_done(r["run_id"]) for r in records)
