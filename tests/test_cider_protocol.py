"""CIDer's official switches under the harness: no valid/test label reaches a fair run, the
oracle-only switch is refused under `fair`, `batch_pe` evaluates at the training batch size,
`split_class_means` also holds during early stopping, and hyper-parameter provenance."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mer_bench.data.schema import three_class
from mer_bench.errors import UserError
from mer_bench.results.store import Store
from mer_bench.training import runner, trainer
from mer_bench.training.hpsource import DEFAULT_SOURCE
from mer_bench.training.runner import RunConfig, resolve, run_cell

TINY = dict(dataset="synth-mosi", scale=0.05, epochs=1, rates=(0.0, 1.0))


def _poison(split):
    """Valid/test labels replaced by reversed, negated ones (features and ids untouched)."""
    y = -split.regression_labels[::-1].copy()
    return replace(split, regression_labels=y, classification_labels=three_class(y))


@pytest.mark.parametrize("model", ["cider", "lf_dnn+maci"])
def test_fair_predictions_do_not_depend_on_valid_or_test_labels(model, tmp_path, monkeypatch):
    """One epoch (so early stopping has nothing to choose): every stored score, on test and
    on valid, with and without the counterfactual pass, is identical after poisoning."""
    import mer_bench.datasets as registry

    cfg = RunConfig(model=model, scenario="rmfm-iid", **TINY)
    clean = run_cell(cfg, 1111, str(tmp_path / "clean"))
    real = registry.load_dataset

    def poisoned(*a, **kw):
        ds = real(*a, **kw)
        ds.splits = {**ds.splits, "valid": _poison(ds["valid"]), "test": _poison(ds["test"])}
        return ds

    monkeypatch.setattr(registry, "load_dataset", poisoned)
    bad = run_cell(cfg, 1111, str(tmp_path / "bad"))
    a = Store(tmp_path / "clean").load_predictions(clean["run_id"])
    b = Store(tmp_path / "bad").load_predictions(bad["run_id"])
    keys = [k for k in a if "scores" in k or k.startswith("joint")]
    assert any("cf_scores" in k for k in keys) and any("valid_" in k for k in keys)
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["labels"], b["labels"])  # the poison did reach the store


def test_fair_refuses_the_label_reading_compat_switch(capsys):
    from mer_bench.cli import main

    with pytest.raises(UserError, match="fair protocol"):
        resolve(RunConfig(model="cider", scenario="rmfm-iid", compat="official"), 1111)
    with pytest.raises(UserError, match="fair protocol"):
        resolve(RunConfig(model="cider", scenario="rmfm-iid", compat="split_class_means"), 1111)
    r = resolve(RunConfig(model="cider", scenario="rmfm-iid", compat="official", protocol="paper"), 1111)
    assert "split_class_means" in r.compat
    assert resolve(RunConfig(model="cider", scenario="rmfm-iid", compat="batch_pe"), 1).compat == {"batch_pe"}
    assert main(["run", "--model", "cider", "--scenario", "rmfm-iid", "--compat", "official"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid/test labels" in err


@pytest.mark.parametrize("key", ["compat", "ablations"])
def test_hp_compat_and_ablations_are_refused(key):
    with pytest.raises(UserError, match="--compat / --ablate"):
        resolve(RunConfig(model="cider", scenario="rmfm-iid", hparams=((key, "official"),)), 1111)


def _spy_predict(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = trainer.predict

    def spy(model, split, drops_fn, device, batch_size=256, **kw):
        sizes.append(batch_size)
        return real(model, split, drops_fn, device, batch_size, **kw)

    monkeypatch.setattr(trainer, "predict", spy)
    monkeypatch.setattr(runner, "predict", spy)
    return sizes


def test_batch_pe_evaluates_with_the_training_batch_size(tmp_path, monkeypatch):
    sizes = _spy_predict(monkeypatch)
    rec = run_cell(RunConfig(model="cider", scenario="rmfm-iid", compat="batch_pe", **TINY), 1111,
                   str(tmp_path))
    assert rec["eval_batch_size"] == 128 and sizes and set(sizes) == {128}  # valid + test
    sizes.clear()
    plain = run_cell(RunConfig(model="cider", scenario="rmfm-iid", **TINY), 1111, str(tmp_path))
    assert plain["eval_batch_size"] == 256 and set(sizes) == {256}


def test_split_class_means_also_during_early_stopping(tmp_path, monkeypatch):
    from cider.maci import mean_of_class_means

    seen = []
    real = runner.train

    def spy(model, train_split, valid_split, *a, **kw):
        want = mean_of_class_means(valid_split, "binary")
        got = model.mcm.eval_feats.cpu().numpy()
        seen.append(model.mcm.eval_override and np.allclose(got, want[None, :].repeat(3, 0)))
        return real(model, train_split, valid_split, *a, **kw)

    monkeypatch.setattr(runner, "train", spy)
    rec = run_cell(RunConfig(model="cider", scenario="rmfm-iid", compat="split_class_means",
                             protocol="paper", **TINY), 1111, str(tmp_path))
    assert seen == [True] and rec["oracle"] is True


def test_hparams_source_and_hp_from_tuned(tmp_path):
    r = resolve(RunConfig(model="cider", scenario="rmfm-iid"), 1111)
    assert r.hparams_source == "official release, chosen on test by its authors"
    assert resolve(RunConfig(model="lf_dnn", scenario="rmfm-iid"), 1).hparams_source == DEFAULT_SOURCE
    best = tmp_path / "cider_best.json"
    best.write_text(json.dumps({
        "model": "cider", "objective": "validation headline metric on complete data (test never used)",
        "budget": {"trials": 7, "max_epochs": 5}, "best_params": {"hidden": 16, "layers": 1},
    }))
    r = resolve(RunConfig(model="cider", scenario="rmfm-iid", hp_from=f"tuned:{best}",
                          hparams=(("layers", 2),)), 1111)
    assert r.hparams == {"hidden": 16, "layers": 2}  # --hp wins over the tuned value
    assert r.hparams_source == "tuned on validation, 7 trials (cider_best.json); overridden by --hp: layers"
    for bad in (f"best:{best}", f"tuned:{tmp_path / 'missing.json'}"):
        with pytest.raises(UserError, match="--hp-from"):
            resolve(RunConfig(model="cider", scenario="rmfm-iid", hp_from=bad), 1111)
    with pytest.raises(UserError, match="tuned for 'cider'"):
        resolve(RunConfig(model="dlf", scenario="rmfm-iid", hp_from=f"tuned:{best}"), 1111)
