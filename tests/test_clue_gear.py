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


@pytest.mark.parametrize(
    "model", ["mag_bert+clue", pytest.param("mult+clue", marks=pytest.mark.slow), "gear"]
)
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


# --- the base keeps its own training under CLUE -----------------------------------------
def _tiny_cider_clue(**hp):
    from helpers import random_split

    from mer_bench.data.batch import make_batch
    from mer_bench.scenarios.base import apply_drops

    split = random_split(n=16)
    spec = DataSpec((12, 5, 6), (8, 14, 11), False, True)
    torch.manual_seed(0)
    model = build_model("cider+clue", spec, "binary", hidden=8, layers=1, heads=2, **hp)
    model.prepare(split, cf_vocab=np.array([1001, 1003]))
    clean = make_batch(split, np.arange(len(split)))
    rng = np.random.default_rng(0)
    drops = {m: (rng.random(getattr(clean, f"valid_{m}").shape) < 0.5)
             & getattr(clean, f"valid_{m}").numpy() for m in ("text", "audio", "vision")}
    drops["text"][:, 0] = False
    return model.train(), clean, apply_drops(clean, drops)


def test_cider_clue_keeps_ciders_teacher_student_step(monkeypatch):
    """cider+clue runs CIDer's own step (teacher step on the complete batch, then the student
    step with reconstruction, attention and joint distillation) with CLUE's terms added to
    the student objective; before, it trained CIDer on its task loss alone."""
    import cider.model
    from baselines.clue import hosts_terms

    model, clean, corrupted = _tiny_cider_clue()
    assert hosts_terms(model.base) and model.delegates()
    calls = {"attn_kl": 0, "recon_loss": 0}
    for name in calls:
        real = getattr(cider.model, name)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(cider.model, name, spy)
    opt = model.configure_optimizer()
    steps = []
    monkeypatch.setattr(opt, "step", lambda *a, _s=opt.step, **k: (steps.append(1), _s(*a, **k))[1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logs = model.train_step(clean, corrupted, opt)
    assert {"base_teacher_nll", "base_nll", "base_recon", "base_attn", "base_joint",
            "fused_ce", "text_ce", "kl"} == set(logs)
    assert calls == {"attn_kl": 1, "recon_loss": 1} and len(steps) == 2  # teacher + student
    assert all(np.isfinite(v) for v in logs.values())
    moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"base", "branch", "constant"} <= moved  # CIDer, the text branch and c all learn


def test_cider_clue_base_loss_zero_drops_ciders_step_other_weights_refused():
    from mer_bench.errors import UserError

    model, clean, corrupted = _tiny_cider_clue(**{"clue.base_loss": 0.0})
    assert not model.delegates()
    assert set(model.train_step(clean, corrupted, model.configure_optimizer())) == {
        "fused_ce", "text_ce", "kl"}
    with pytest.raises(UserError, match="base_loss"):
        _tiny_cider_clue(**{"clue.base_loss": 0.5})


@pytest.mark.parametrize("base", ["mult", "mag_bert"])
def test_objective_bases_step_is_their_objective_with_their_micro_batches(base):
    """MulT and MAG-BERT have no step of their own beyond their objective: under CLUE one
    step is CLUE's terms plus the base's `objective()` over the base's micro-batches, with
    CLUE's clipping, exactly as before CIDer's step was kept (a fixed-seed `mult+clue` run's
    losses and predictions were unchanged by that change)."""
    from baselines.clue import hosts_terms
    from mer_bench.training.steps import accumulated_step

    spec = DataSpec((12, 5, 6), (8, 8, 8), True, True)
    batch = dummy_batch(spec, n=6)
    g = torch.Generator().manual_seed(0)
    batch = batch.with_(text=torch.randn(batch.text.shape, generator=g),
                        audio=torch.randn(batch.audio.shape, generator=g),
                        vision=torch.randn(batch.vision.shape, generator=g),
                        y_reg=torch.linspace(-2, 2, 6), y3=torch.tensor([0, 2, 0, 2, 1, 2]))
    results = []
    for kept in (True, False):
        torch.manual_seed(0)
        hp = {"micro_batch": 2} if base == "mult" else {}  # three accumulated micro-batches
        model = build_model(f"{base}+clue", spec, "binary", **hp).train()
        assert not hosts_terms(model.base) and not model.delegates()
        opt = model.configure_optimizer()
        torch.manual_seed(1)
        if kept:
            logs = model.train_step(batch, batch, opt)
        else:
            logs = accumulated_step(model, batch, opt, model.objective,
                                    **{**model.base.step_options(), "clip_value": 1.0})
        results.append((logs, [p.detach().clone() for p in model.parameters()]))
    (logs, params), (ref_logs, ref_params) = results
    assert logs == ref_logs and "base_task" in logs
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params))
