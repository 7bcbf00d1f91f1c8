"""DMD, DiCMoR and GLoMo: parameter parity with the official configurations, the flows'
invertibility and log-determinant, DiCMoR's recovery and two stages, DMD's distillation,
GLoMo's routing and text layers, and smm-iid end to end through the harness."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import random_split

from baselines.flows import Glow
from mer_bench.data.batch import make_batch
from mer_bench.data.schema import DataSpec
from mer_bench.errors import UserError
from mer_bench.models import build_model
from mer_bench.scenarios.base import apply_drops
from mer_bench.training.runner import RunConfig, run_cell

torch.set_num_threads(1)

MOSI_UNALIGNED = DataSpec(dims=(768, 5, 20), lens=(50, 375, 500), aligned=False, has_text_ids=True)
MOSI_ALIGNED = DataSpec(dims=(768, 5, 20), lens=(50, 50, 50), aligned=True, has_text_ids=True)
LENS = (8, 8, 8)
SMALL = DataSpec(dims=(12, 5, 6), lens=LENS, aligned=True, has_text_ids=True)
TINY_DMD = {"d_model": 8, "num_heads": 2, "layers": 1, "gd_size_homo": 4, "gd_size_hetero": 4}
TINY_DICMOR = {"d_model": 8, "num_heads": 2, "layers": 1, "mem_layers": 1, "n_flow": 2,
               "flow_hidden": 8, "rcan_blocks": 1, "rcan_reduction": 4,
               "kernel_text": 3, "kernel_audio": 3, "kernel_vision": 3}


def small_batch(n: int = 12, seed: int = 0):
    split = random_split(n, seed=seed, lens=LENS)
    split.audio_lengths[:] = LENS[1]  # aligned data: every modality has the text's grid
    split.vision_lengths[:] = LENS[2]
    return make_batch(split, np.arange(n))


def drop_vision(batch):
    """Every valid vision step dropped (the SMM pattern LA)."""
    drops = {
        "text": np.zeros(batch.valid_text.shape, bool),
        "audio": np.zeros(batch.valid_audio.shape, bool),
        "vision": batch.valid_vision.numpy().copy(),
    }
    return apply_drops(batch, drops)


# --- parameter parity -----------------------------------------------------------------
def test_dmd_parameters_equal_table_vi():
    m = build_model("dmd", MOSI_UNALIGNED, "binary")
    assert m.n_parameters() == 12_578_232
    assert sum(p.numel() for p in m.proj_cosine.parameters()) == 2_282_650


def test_dicmor_parameters_equal_the_official_config():
    m = build_model("dicmor", MOSI_ALIGNED, "binary")
    assert m.n_parameters() == 3_524_817
    assert 3_534_129 - m.n_parameters() == 96 * 96 + 96  # Table VI's gap: one Linear(96, 96)


def test_dicmor_refuses_unaligned_data():
    with pytest.raises(UserError, match="aligned"):
        build_model("dicmor", MOSI_UNALIGNED, "binary")
    p = subprocess.run(
        [sys.executable, "-m", "mer_bench.cli", "run", "--model", "dicmor", "--scenario",
         "rmfm-iid", "--scale", "0.05", "--epochs", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert errors == [p.stderr.strip().splitlines()[-1]] and "aligned" in errors[0]


# --- flows -----------------------------------------------------------------------------
def randomised_flow(mode: str, channels: int = 4, n_flow: int = 3) -> Glow:
    torch.manual_seed(0)
    flow = Glow(channels, n_flow, hidden=6, mode=mode).double()
    flow.train()
    flow(torch.randn(32, 5, channels, dtype=torch.float64))  # ActNorm's data-dependent init
    with torch.no_grad():
        for p in flow.parameters():  # leave the zero initialisation: a non-trivial map
            p.add_(0.3 * torch.randn_like(p))
    return flow.eval()


@pytest.mark.parametrize("mode", ["coupling", "glow"])
def test_flow_is_invertible(mode):
    flow = randomised_flow(mode)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.reverse(z), x, atol=1e-9)


@pytest.mark.parametrize("mode", ["coupling", "glow"])
def test_flow_log_determinant_matches_brute_force_jacobian(mode):
    flow = randomised_flow(mode)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = flow(x)
    for b in range(2):
        for t in range(3):
            jac = torch.autograd.functional.jacobian(lambda v: flow(v[None, None])[0][0, 0], x[b, t])
            assert math.isclose(float(torch.slogdet(jac)[1]), float(logdet[b, t]), abs_tol=1e-8)


# --- DiCMoR ------------------------------------------------------------------------------
def test_dicmor_recovers_dropped_steps_from_available_modalities():
    torch.manual_seed(0)
    m = build_model("dicmor", SMALL, "binary", **TINY_DICMOR).eval()
    batch = drop_vision(small_batch())
    proj = m._project(batch, frozen=False)
    seqs, replaced = m._recover(proj)
    assert torch.equal(replaced["vision"], proj["vision"][1])  # every valid vision step
    assert not replaced["text"].any() and not replaced["audio"].any()
    assert torch.equal(seqs["text"], proj["text"][0])
    assert not torch.allclose(seqs["vision"], proj["vision"][0])
    without = m._predict(proj, recover=False).scores
    assert not torch.allclose(m(batch).scores, without)


def test_dicmor_two_stages_follow_the_epoch_budget():
    torch.manual_seed(0)
    m = build_model("dicmor", SMALL, "binary", **TINY_DICMOR)
    opt = m.configure_optimizer()
    clean = small_batch()
    corrupted = drop_vision(clean)
    m.train()
    m.start_epoch(0, 4)
    assert m.stage == "complete" and m.hparams["complete_epochs"] == 2
    logs = m.train_step(clean, corrupted, opt)
    assert set(logs) == {"task", "aux"} and all(math.isfinite(v) for v in logs.values())
    m.start_epoch(2, 4)
    assert m.stage == "missing"
    before = m.proj["text"].conv.weight.detach().clone()
    m.zero_grad(set_to_none=True)
    m.losses(clean, corrupted)["aux"].backward()
    assert m.proj["text"].conv.weight.grad is None  # projections frozen, as the official
    assert m.refine["vision"].up.weight.grad.abs().sum() > 0  # recovery is trained
    m.zero_grad()
    m.train_step(clean, corrupted, opt)
    assert torch.equal(before, m.proj["text"].conv.weight)


def test_dicmor_flow_nll_prefers_the_right_class_prior():
    torch.manual_seed(0)
    m = build_model("dicmor", SMALL, "binary", **TINY_DICMOR).eval()
    with torch.no_grad():
        for k, prior in enumerate(m.priors):
            prior.lin.bias[:8] = float(k - 3)  # class means -3..3, unit sd
    batch = small_batch()
    proj = m._project(batch, frozen=True)
    with torch.no_grad():
        z = {mod: m.flow[mod](proj[mod][0])[0] for mod in proj}
    centre = torch.stack([z[mod].mean() for mod in z]).mean()
    y_near = torch.full_like(batch.y_reg, float(torch.round(centre).clamp(-3, 3)))
    y_far = torch.where(y_near > 0, torch.full_like(y_near, -3.0), torch.full_like(y_near, 3.0))
    assert m.flow_nll(proj, y_near) < m.flow_nll(proj, y_far)


# --- DMD -----------------------------------------------------------------------------------
def test_dmd_distillation_edges_and_unused_cosine_projections():
    torch.manual_seed(0)
    m = build_model("dmd", SMALL, "binary", **TINY_DMD).train()
    batch = small_batch()
    out = m(batch)
    reprs = torch.stack([out.extras["hetero"][k][0] for k in ("text", "vision", "audio")])
    logits = torch.stack([out.extras["hetero"][k][1] for k in ("text", "vision", "audio")])
    edges = m.gd_hetero(logits, reprs)
    assert edges.shape == (6, len(batch))
    assert torch.allclose(edges.sum(0), torch.ones(len(batch)))
    terms = m.losses(batch)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in m.proj_cosine.parameters())
    assert m.gd_homo.w_edge.weight.grad.abs().sum() > 0
    assert m.gd_hetero.w_repr.weight.grad.abs().sum() > 0
    for k in ("text", "audio", "vision"):
        assert m.homo_head[k].proj1.weight.grad.abs().sum() > 0


def test_dmd_flattened_features_are_zero_at_padded_steps():
    torch.manual_seed(0)
    spec = DataSpec(dims=(12, 5, 6), lens=(8, 10, 9), aligned=False, has_text_ids=True)
    m = build_model("dmd", spec, "binary", **TINY_DMD).eval()
    batch = make_batch(random_split(4, seed=1, lens=(8, 10, 9)), np.arange(4))
    e = m(batch).extras
    for k in ("text", "audio", "vision"):
        flat = e["c_flat"][k].view(4, -1, 8)
        assert torch.all(flat[~e["valid"][k]] == 0)
        assert flat[e["valid"][k]].abs().sum() > 0


# --- end to end ------------------------------------------------------------------------------
# rmfm-ood of every registered model (rmfm-iid too under `tox -e slow`) runs in
# tests/test_models_e2e.py; here smm-iid.
TINY_RUN = dict(dataset="synth-mosi", variant="aligned", scale=0.05, epochs=1)


@pytest.mark.parametrize(
    "model",
    ["glomo", *(pytest.param(m, marks=pytest.mark.slow) for m in ("dmd", "dicmor_all", "dicmor"))],
)
def test_runs_smm(model, tmp_path):
    rec = run_cell(RunConfig(model=model, scenario="smm-iid", **TINY_RUN), 1111, str(tmp_path))
    assert rec["status"] == "finished"
    head = rec["headline"]
    assert len(rec["metrics"]) == 7  # the seven presence patterns
    assert all(math.isfinite(v[head]) for v in rec["metrics"].values())
    assert rec["training_mode"] == ("one-to-one" if model == "dicmor" else "one-to-all")


# --- GLoMo ---------------------------------------------------------------------------------
TINY_GLOMO = {"d_model": 8, "num_heads": 2, "layers": 1, "fusion_heads": 2, "fusion_ff": 16,
              "fusion_layers": 1}


def test_glomo_parameters_at_mosi_dims():
    m = build_model("glomo", MOSI_UNALIGNED, "binary")
    assert m.n_parameters() == 2_084_999  # the docstring's breakdown
    assert sum(p.numel() for p in m.fusion.parameters()) == 865_984


def test_glomo_official_mosi_command_gives_the_issues_count():
    """The issue's 927,239 is the official README's MOSI command (d_l 48, 4 layers) at the
    official MOSI features (audio 74-d, vision 47-d); 913,415 at the suite's 5/20-d."""
    hp = {"d_model": 48, "layers": 4}
    official = DataSpec((768, 74, 47), MOSI_UNALIGNED.lens, False, True)
    assert build_model("glomo", official, "binary", **hp).n_parameters() == 927_239
    assert build_model("glomo", MOSI_UNALIGNED, "binary", **hp).n_parameters() == 913_415


def test_glomo_moe_routes_each_sample_to_top_two_experts():
    from baselines.glomo import NoisyTopKMoE

    torch.manual_seed(0)
    moe = NoisyTopKMoE(6, 4, experts=3, hidden=5, k=2)
    with torch.no_grad():
        moe.w_gate.normal_()
        moe.w_noise.normal_()
    x = torch.randn(10, 6)
    gates, load = moe.eval()._gates(x)
    assert torch.equal((gates > 0).sum(1), torch.full((10,), 2))
    assert torch.allclose(gates.sum(1), torch.ones(10))
    y, loss = moe(x)
    manual = torch.log((gates[..., None] * torch.stack([e(x) for e in moe.experts], 1).exp()).sum(1))
    assert torch.allclose(y, manual, atol=1e-5)
    moe.train()
    _, loss = moe(x)
    loss.backward()
    assert float(loss.detach()) > 0 and moe.w_noise.grad.abs().sum() > 0  # differentiable load


def test_glomo_reads_encoder_layers_when_the_harness_gives_them():
    torch.manual_seed(0)
    m = build_model("glomo", SMALL, "binary", **TINY_GLOMO).eval()
    batch = small_batch()
    base = m(batch).scores
    assert m.hparams["text_layers"] == "token features as both layers"
    batch.text_layers = (torch.randn_like(batch.text), torch.randn_like(batch.text))
    assert not torch.allclose(m(batch).scores, base)
    assert m.hparams["text_layers"] == "encoder's last two layers"


def test_glomo_pooling_ignores_padded_steps():
    from baselines.glomo import masked_adaptive_max

    x = torch.randn(2, 6, 3)
    valid = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    loud = x.masked_fill(~valid[..., None], 100.0)
    assert torch.equal(masked_adaptive_max(x, valid, 3), masked_adaptive_max(loud, valid, 3))
    assert torch.all(masked_adaptive_max(x, valid, 3)[1, 2] == 0)  # a window with no valid step
