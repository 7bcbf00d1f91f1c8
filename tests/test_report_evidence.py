"""Report, plots and compare rebuilt from `predictions/` alone, with intervals, marks and flags."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mer_bench.results.store import Store
from mer_bench.training.runner import RunConfig, run_cells

TINY = dict(dataset="synth-mosi", variant="aligned", scale=0.05, epochs=2)


def _cfg(model: str, scenario: str, **kw) -> RunConfig:
    rates = None if scenario.startswith("smm") else (0.0, 0.5, 1.0)
    return RunConfig(model=model, scenario=scenario, rates=rates, **TINY, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    cells = [(_cfg(m, s), seed)
             for m in ("lf_dnn",) for s in ("rmfm-iid", "smm-iid") for seed in (1111, 1112)]
    cells.append((_cfg("cider", "rmfm-iid"), 1111))  # a counterfactual model: tau from valid
    run_cells(cells, results=str(root), progress=False)
    return root


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_report_and_plots_rebuild_identically_from_predictions_alone(store, tmp_path):
    from mer_bench.results.curves import write_plots
    from mer_bench.results.report import write_report

    write_report(store, out=tmp_path / "a", n_boot=200)
    write_plots(store, out=tmp_path / "a" / "figures", n_boot=200)
    bare = tmp_path / "bare"
    shutil.copytree(store, bare)
    shutil.rmtree(bare / "checkpoints")
    for p in (bare / "runs").glob("*.csv"):  # the stored metric values are not needed either
        p.unlink()
    write_report(bare, out=tmp_path / "b", n_boot=200)
    write_plots(bare, out=tmp_path / "b" / "figures", n_boot=200)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") and len(files) > 10
    assert any(str(f).endswith(".png") for f in files)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    # the recomputed per-rate values equal what the runs stored
    per_rate = pd.read_csv(tmp_path / "a" / "per_rate.csv", dtype={"rate": str})
    stored = Store(store).table()
    merged = stored.merge(per_rate, on=["run_id", "rate", "metric"], suffixes=("", "_new"))
    assert len(merged) == len(stored)
    assert np.allclose(merged["value"], merged["value_new"], equal_nan=True, rtol=0, atol=0)


def test_leaderboard_cells_marks_flags_and_robustness(store, tmp_path):
    from mer_bench.results.report import write_report

    write_report(store, out=tmp_path, n_boot=200)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Majority-class predictor on the IID test set" in md
    assert " ± " in md and " [" in md and "ER vs lf_dnn" in md and "L removed" in md
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert {"mean", "std", "lo", "hi", "n", "mark", "converged"} <= set(cells.columns)
    assert (cells["lo"] <= cells["mean"] + 1e-12).all() and (cells["mean"] <= cells["hi"] + 1e-12).all()
    two = cells[(cells["model"] == "lf_dnn") & (cells["quantity"] == "AUILC")]
    assert (two["n"] == 2).all()
    # effective robustness of the reference against itself is exactly 0, with a 0 interval
    er = cells[(cells["model"] == "lf_dnn") & cells["quantity"].str.startswith("ER")]
    assert len(er) and (er[["mean", "lo", "hi"]] == 0).all().all()
    # a not-converged model is never marked best or tied
    assert (cells.loc[~cells["converged"], "mark"].isna()).all()
    # every column with at least two converged models has exactly one best
    col = cells[cells["converged"]].groupby(["dataset", "variant", "scenario", "quantity",
                                             "metric"])
    for _, g in col:
        if len(g) >= 2 and g["quantity"].iloc[0] == "AUILC":
            assert (g["mark"] == "best").sum() == 1


def test_cli_compare_models_and_stores(store):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mer_bench.cli", *args],
                              capture_output=True, text=True, timeout=300)

    p = cli("compare", "--models", "lf_dnn,cider", "--scenario", "rmfm-iid",
            "--results", str(store), "--bootstrap", "200")
    assert p.returncode == 0, p.stderr
    assert "AUILC:" in p.stdout and "McNemar" in p.stdout and "paired-bootstrap p" in p.stdout
    p = cli("compare", "--results", str(store), "--against", str(store), "--models", "lf_dnn",
            "--bootstrap", "200")
    assert p.returncode == 0, p.stderr
    self_row = [ln for ln in p.stdout.splitlines() if ln.count("lf_dnn") == 2]
    assert self_row and all("+0.00 [+0.00, +0.00]" in ln for ln in self_row)
    p = cli("compare", "--models", "lf_dnn,nope", "--scenario", "rmfm-iid", "--results", str(store))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    p = cli("compare", "--models", "lf_dnn", "--results", str(store))
    assert p.returncode == 2


def test_every_model_of_a_twenty_model_board_gets_its_own_curve_style():
    from types import SimpleNamespace

    from mer_bench.results.curves import model_styles

    labels = [f"m{i:02d}" for i in range(20)]
    ev = SimpleNamespace(cells={("fair", "d", "aligned", "binary", "rmfm-iid", m): [] for m in labels})
    styles = model_styles(ev)
    assert len({(s["color"], s["ls"], s["marker"]) for s in styles.values()}) == 20


def test_leaderboard_names_the_majority_class_of_each_test_set(tmp_path):
    from mer_bench.results.report import write_report

    run_cells([(_cfg("lf_dnn", s), 1111) for s in ("rmfm-iid", "rmfm-ood")],
              results=str(tmp_path / "s"), progress=False)
    write_report(tmp_path / "s", out=tmp_path, n_boot=50)
    line = next(x for x in (tmp_path / "leaderboard.md").read_text().splitlines()
                if x.startswith("Majority-class predictor"))
    assert "IID test set: Non0_acc_2" in line and "; on the OOD test set " in line
