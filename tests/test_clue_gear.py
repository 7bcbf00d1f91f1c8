"""CLUE (`+clue`), MAG-BERT and GEAR: parameter parity with Table VI, the alpha mechanism
(validation in `fair`, oracle in `paper`), the official objectives, and end-to-end runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from baselines.clue import ALPHA_GRID, fuse
from cider.maci import dummy_batch
from mer_bench.data.schema import DataSpec
from mer_bench.metrics import debias
from mer_bench.models import build_model
from mer_bench.training.runner import RunConfig, run_cell

MOSI = DataSpec((768, 5, 20), (50, 375, 500), False, True)
TINY = dict(dataset="synth-mosi", variant="aligned", scale=0.05, epochs=1, rates=(0.0, 1.0))


def test_parameter_parity_with_table_vi():
    assert build_model("gear", MOSI, "binary").n_parameters() == 372_071
    clue = build_model("mag_bert+clue", MOSI, "binary")
    parts = clue.parameter_breakdown()
    assert parts["clue_parameters"] == 3_798_579
    assert clue.n_parameters() == parts["base_parameters"] + 3_798_579
    reg = build_model("mult+clue", MOSI, "binary").parameter_breakdown()
    assert reg["adapter_parameters"] == 4 and reg["base_parameters"] == 2_571_551


def test_ls_lists_the_new_models_and_the_wrapper():
    out = subprocess.run([sys.executable, "-m", "mer_bench.cli", "ls", "models"],
                         capture_output=True, text=True, check=True).stdout
    assert "gear" in out and "mag_bert" in out
    assert "clue" in out.split("wrappers")[1]


def test_suite_debias_has_the_official_argmax():
    """log-softmax scores minus alpha log-softmax cf = official o1 - alpha o2 up to a
    per-sample constant; the binary neutral column is never predicted."""
    torch.manual_seed(0)
    clue = build_model("mag_bert+clue", MOSI, "binary").eval()
    o_m, o_t = torch.randn(64, 2), torch.randn(64, 2)
    o1, o2 = fuse(o_m, o_t), fuse(torch.full_like(o_t, 0.7), o_t)
    s, cf = clue._to_suite(o1, -1e4).numpy(), clue._to_suite(o2, 0.0).numpy()
    for a in ALPHA_GRID:
        mine = debias(s, cf, a).argmax(1)
        official = (o1 - a * o2).argmax(1).numpy()
        assert set(mine) <= {0, 2}
        assert np.array_equal(mine, np.where(official == 1, 2, 0))


def test_clue_kl_term_trains_only_the_constant():
    torch.manual_seed(0)
    clue = build_model("mag_bert+clue", MOSI, "binary")
    batch = dummy_batch(MOSI, n=4)
    batch = batch.with_(text=torch.randn_like(batch.text), y3=torch.tensor([0, 2, 1, 2]))
    clue.objective(batch)["kl"].backward()
    assert clue.constant.grad is not None and clue.constant.grad.abs() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in clue.branch.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in clue.base.parameters())


def test_gear_swaps_after_epoch_five_from_the_harness_hook():
    torch.manual_seed(0)
    gear = build_model("gear", MOSI, "binary").eval()  # eval: no dropout, same features
    batch = dummy_batch(MOSI, n=8)
    batch = batch.with_(text=torch.randn_like(batch.text), audio=torch.randn_like(batch.audio),
                        vision=torch.randn_like(batch.vision), y_reg=torch.linspace(-3, 3, 8))
    gear.start_epoch(4, 8)
    assert not gear.swapping()
    before = gear.objective(batch)
    gear.start_epoch(5, 8)
    assert gear.swapping()
    after = gear.objective(batch)
    # the swap adds a term to every biased branch and to the fusion loss
    assert all(after[k] > before[k] for k in ("gce_text", "gce_audio", "gce_vision"))
    assert after["task"] > before["task"]


def test_gear_official_switches_off_and_bad_values():
    from mer_bench.errors import UserError

    gear = build_model("gear", MOSI, "binary", gce="", weight="")
    batch = dummy_batch(MOSI, n=4)
    assert float(gear.objective(batch)["gce_text"].detach()) == 0.0
    with pytest.raises(UserError):
        build_model("gear", MOSI, "binary", gce="cubic")
    assert len(gear.configure_optimizer().param_groups) == 3  # no text encoder: 3 of 4 groups


def test_mag_bert_records_its_gate_input_and_alignment():
    m = build_model("mag_bert", MOSI, "binary")
    assert m.hparams["gate_input"].startswith("fixed token features")
    assert m.hparams["alignment"].startswith("adaptive average pooling")
    out = m.eval()(dummy_batch(MOSI, n=2))
    assert out.scores.shape == (2, 3) and out.joint.shape == (2, 768)


@pytest.mark.parametrize("model", ["mag_bert+clue", "mult+clue", "gear"])
def test_rmfm_ood_end_to_end(model, tmp_path):
    rec = run_cell(RunConfig(model=model, scenario="rmfm-ood", **TINY), 1111, str(tmp_path))
    assert rec["status"] == "finished" and rec["distribution"] == "ood"
    assert np.isfinite(rec["metrics"]["0.0"][rec["headline"]])
    if model.endswith("+clue"):
        assert rec["output"] == "classification"
        tau = rec["tau"]
        assert tau["strength"] == "alpha" and tau["chosen_on"] == "valid"
        assert tau["tau"] in ALPHA_GRID and tau["grid"] == list(ALPHA_GRID)
        assert not rec["oracle"]
        paper = run_cell(RunConfig(model=model, scenario="rmfm-ood", protocol="paper", **TINY),
                         1111, str(tmp_path))
        assert paper["oracle"] and paper["checkpoint_reused"]
        assert paper["tau"]["chosen_on"].startswith("test (oracle")
        assert all(set(v.values()) <= set(ALPHA_GRID) for v in paper["tau"]["tau"].values())
    else:
        assert rec["output"] == "regression" and not rec["tau"]["counterfactual"]


def test_strength_selection_uses_the_given_grid():
    from mer_bench.metrics import oracle_tau_metrics, select_tau

    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(3), 40))
    cf = np.log(rng.dirichlet(np.ones(3), 40))
    y = rng.integers(0, 3, 40)
    alpha, table = select_tau([logp], [cf], [y], "binary", grid=ALPHA_GRID)
    assert alpha in ALPHA_GRID and list(table) == list(ALPHA_GRID)
    _, taus = oracle_tau_metrics(logp, cf, y, "binary", grid=ALPHA_GRID)
    assert set(taus.values()) <= set(ALPHA_GRID)


def test_clue_optimiser_groups_branch_slow_adapter_at_base_rate():
    clue = build_model("mult+clue", MOSI, "binary")
    groups = clue.configure_optimizer().param_groups
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert by_id[id(clue.constant)] == 1e-5
    assert all(by_id[id(p)] == 1e-5 for p in clue.branch.parameters())
    assert all(by_id[id(p)] == clue.base.lr for p in clue.adapter.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(clue.parameters()))


def test_regression_adapter_starts_as_the_base_decision_rule():
    from baselines.clue import regression_adapter

    centre = torch.arange(-3.0, 4.0).repeat_interleave(9)
    s = (centre + torch.linspace(-0.45, 0.45, 9).repeat(7)).view(-1, 1)  # off the boundaries
    s = torch.cat([s, torch.tensor([[-5.0], [5.0]])])
    nonzero = s.view(-1).abs() > 1e-6
    assert torch.equal(regression_adapter(2)(s).argmax(1)[nonzero], (s.view(-1) > 0).long()[nonzero])
    nearest = torch.clamp(torch.round(s.view(-1)), -3, 3).long() + 3
    assert torch.equal(regression_adapter(7)(s).argmax(1), nearest)
