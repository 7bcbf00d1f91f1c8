"""EMT-DLFR and LNLN baselines (and the shared layers in baselines/common.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import baselines.emt_dlfr as emt_mod
import baselines.lnln as lnln_mod
from baselines.common import MultiHeadAttention, PreLNEncoder, masked_mean, sinusoidal_positions
from baselines.emt_dlfr import EMTDLFR, EMTDLFRAll
from baselines.lnln import LNLN
from mer_bench.data.batch import Batch, make_batch
from mer_bench.data.schema import DataSpec, Split
from mer_bench.models import MODELS
from mer_bench.scenarios.base import Lengths, apply_drops

torch.set_num_threads(1)

MOSI = DataSpec(dims=(768, 5, 20), lens=(50, 375, 500), aligned=False, has_text_ids=True)
DIMS = (12, 3, 4)
SPECS = {
    "aligned": DataSpec(dims=DIMS, lens=(7, 7, 7), aligned=True, has_text_ids=True),
    "unaligned": DataSpec(dims=DIMS, lens=(7, 9, 11), aligned=False, has_text_ids=True),
    "no_ids": DataSpec(dims=DIMS, lens=(7, 9, 11), aligned=False, has_text_ids=False),
}
TINY = {
    "emt_dlfr": dict(
        a_lstm_hidden_size=6,
        v_lstm_hidden_size=6,
        audio_out=4,
        video_out=4,
        d_model=8,
        heads=2,
        fusion_layers=2,
        gmc_tokens_pred_dim=4,
        text_pred_dim=4,
        audio_pred_dim=2,
        video_pred_dim=2,
        post_fusion_dim=8,
        update_epochs=1,
    ),
    "lnln": dict(hidden=8, heads=2, dim_head=4, mlp_dim=8, n_tokens=2, warmup_fraction=0.0),
}
NO_DROPOUT = {
    "emt_dlfr": dict(attn_dropout=0.0, ff_dropout=0.0, post_fusion_dropout=0.0),
    "lnln": {},
}
CLASSES = {"emt_dlfr": EMTDLFR, "lnln": LNLN}


def make_split(spec: DataSpec, n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    (dt, da, dv), (lt, la, lv) = spec.dims, spec.lens
    y = rng.uniform(-3, 3, n).astype(np.float32)
    text_bert = None
    if spec.has_text_ids:
        text_bert = np.zeros((n, 3, lt), np.int64)
        for i, length in enumerate(rng.integers(4, lt + 1, n)):
            text_bert[i, 0, :length] = rng.integers(1000, 2000, length)
            text_bert[i, 0, 0], text_bert[i, 0, length - 1] = 101, 102
            text_bert[i, 1, :length] = 1
    if spec.aligned:
        a_len = v_len = text_bert[:, 1].sum(1) if text_bert is not None else np.full(n, lt)
    else:
        a_len, v_len = rng.integers(1, la + 1, n), rng.integers(1, lv + 1, n)

    def frames(length: np.ndarray, t: int, d: int) -> np.ndarray:
        x = rng.normal(size=(n, t, d)).astype(np.float32)
        x[np.arange(t)[None, :] >= np.asarray(length)[:, None]] = 0.0  # zero padding, as MMSA
        return x

    t_len = text_bert[:, 1].sum(1) if text_bert is not None else np.full(n, lt)
    return Split(
        text=frames(t_len, lt, dt),
        audio=frames(a_len, la, da),
        vision=frames(v_len, lv, dv),
        audio_lengths=np.asarray(a_len, np.int64),
        vision_lengths=np.asarray(v_len, np.int64),
        regression_labels=y,
        classification_labels=np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.int64),
        id=np.array([f"s{i}" for i in range(n)]),
        raw_text=np.array([""] * n),
        text_bert=text_bert,
    )


def corrupt(batch: Batch, rate: float, seed: int = 1) -> Batch:
    lengths = Lengths.from_batch(batch)
    rng = np.random.default_rng(seed)
    drops = {}
    for m in ("text", "audio", "vision"):
        ok = lengths.droppable(m)
        drops[m] = ok & (rng.random(ok.shape) < rate)
    return apply_drops(batch, drops)


def build(name: str, spec: DataSpec, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return CLASSES[name](spec, "binary", **{**TINY[name], **extra})


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


# --- shared layers ----------------------------------------------------------------------
def test_attention_ignores_padded_keys_and_survives_empty_rows():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).eval()
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = attn(x, ctx, valid)
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 100.0
    assert torch.allclose(out[0], attn(x, ctx2, valid)[0], atol=1e-6)
    # no valid key: zero context vector (then the output bias), never NaN
    assert finite(out) and torch.allclose(out[1], attn.to_out.bias.expand(3, -1))
    enc = PreLNEncoder(8, 2, 2, 16)
    assert finite(enc(x, torch.zeros(2, 3, dtype=torch.bool)))


def test_positions_and_masked_mean():
    pe = sinusoidal_positions(4, 5)
    assert pe.shape == (4, 5) and torch.allclose(pe[0, 1::2], torch.ones(2))
    x = torch.arange(6.0).view(1, 3, 2)
    assert torch.equal(
        masked_mean(x, torch.tensor([[True, True, False]])), torch.tensor([[1.0, 2.0]])
    )
    assert torch.equal(masked_mean(x, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))


# --- both models -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["emt_dlfr", "lnln"])
@pytest.mark.parametrize("variant", list(SPECS))
@pytest.mark.parametrize("b", [1, 3])
def test_forward_shapes(name, variant, b):
    spec = SPECS[variant]
    model = build(name, spec).eval()
    batch = corrupt(make_batch(make_split(spec, b), np.arange(b)), 0.3)
    with torch.no_grad():
        out = model(batch)
    assert out.scores.shape == (b,)
    assert out.joint is not None and out.joint.shape[0] == b and out.joint.ndim == 2
    assert finite(out.scores) and finite(out.joint)


@pytest.mark.parametrize("name", ["emt_dlfr", "lnln"])
@pytest.mark.parametrize("variant", ["aligned", "unaligned"])
def test_train_step_reduces_loss(name, variant):
    spec = SPECS[variant]
    model = build(name, spec, **NO_DROPOUT[name])
    split = make_split(spec, 8, seed=3)
    clean = make_batch(split, np.arange(8))
    cor = corrupt(clean, 0.4)

    def task_error() -> float:
        model.eval()
        with torch.no_grad():
            return float((model(cor).scores - cor.y_reg).abs().mean())

    before = task_error()
    opt = model.configure_optimizer()
    for g in opt.param_groups:  # speed the tiny problem up; same rule for both models
        g["lr"] = 3e-3
    model.train()
    totals = [sum(model.train_step(clean, cor, opt).values()) for _ in range(40)]
    assert all(np.isfinite(totals))
    assert np.mean(totals[-5:]) < np.mean(totals[:5])
    assert task_error() < before


@pytest.mark.parametrize("name", ["emt_dlfr", "lnln"])
@pytest.mark.parametrize("b", [1, 3])
def test_fully_missing_modalities_give_no_nan(name, b):
    spec = SPECS["unaligned"]
    split = make_split(spec, b, seed=5)
    split.audio_lengths[0] = 0  # an empty sequence as well
    split.audio[0] = 0.0
    clean = make_batch(split, np.arange(b))
    cor = corrupt(clean, 1.0)
    assert not cor.audio.any() and not cor.vision.any()
    model = build(name, spec)
    opt = model.configure_optimizer()
    model.train()
    terms = model.train_step(clean, cor, opt)
    assert all(np.isfinite(v) for v in terms.values())
    assert all(finite(p) for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(cor)
    assert finite(out.scores) and finite(out.joint)


# --- parameter counts (paper Table VI, without BERT) and registration ----------------------
@pytest.mark.parametrize(
    ("name", "module", "count"),
    [("emt_dlfr", emt_mod, 2_322_779), ("lnln", lnln_mod, 6_483_012)],
)
def test_parameter_count_at_mosi_shapes(name, module, count):
    model = CLASSES[name](MOSI, "binary")
    assert model.n_parameters() == count
    assert f"{count:,}" in module.__doc__


def test_registration_and_training_policy():
    assert MODELS.get("emt_dlfr").cls is EMTDLFR and EMTDLFR.training == "one-to-one"
    assert MODELS.get("emt_dlfr_all").cls is EMTDLFRAll and EMTDLFRAll.training == "one-to-all"
    assert MODELS.get("lnln").cls is LNLN and LNLN.training == "one-to-all"
    for cls in (EMTDLFR, EMTDLFRAll, LNLN):
        assert cls.output == "regression" and cls.paper
    with pytest.raises(TypeError):
        EMTDLFR(SPECS["aligned"], "binary", no_such_hparam=1)


# --- EMT-DLFR specifics --------------------------------------------------------------------
def test_emt_recon_only_on_dropped_positions_and_accumulation():
    spec = SPECS["unaligned"]
    clean = make_batch(make_split(spec, 4), np.arange(4))
    model = build("emt_dlfr", spec, update_epochs=2)
    model.train()
    assert model.losses(clean, clean)["recon"].item() == 0.0
    assert model.losses(clean, corrupt(clean, 0.5))["recon"].item() > 0.0
    opt = model.configure_optimizer()
    w0 = model.head.weight.detach().clone()
    model.train_step(clean, corrupt(clean, 0.5), opt)
    assert torch.equal(model.head.weight, w0)  # gradient accumulated, no update yet
    model.train_step(clean, corrupt(clean, 0.5), opt)
    assert not torch.equal(model.head.weight, w0)


def test_emt_optimizer_groups_follow_official_rates():
    model = build("emt_dlfr", SPECS["aligned"])
    groups = model.configure_optimizer().param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# --- LNLN specifics ------------------------------------------------------------------------
def test_lnln_completeness_label_is_kept_fraction():
    spec = SPECS["unaligned"]
    clean = make_batch(make_split(spec, 3), np.arange(3))
    droppable = Lengths.from_batch(clean).droppable("text")
    drops = np.zeros_like(droppable)
    first = np.flatnonzero(droppable[0])
    drops[0, first[:2]] = True
    drops[1] = droppable[1]
    label = LNLN.completeness_label(apply_drops(clean, {"text": drops}))
    expected = [1 - 2 / len(first), 0.0, 1.0]
    assert torch.allclose(label, torch.tensor(expected))


@pytest.mark.parametrize("epochs", [8, 200])
def test_lnln_lr_reaches_its_peak_within_the_budget(epochs):
    """Warm-up and cosine are fractions of the run's budget: from 0 at epoch 0 to the peak
    (lr 1e-4) within the first tenth of any budget, then down again before the end."""
    spec = SPECS["aligned"]
    model = build("lnln", spec, warmup_fraction=0.1)  # the official default
    opt = model.configure_optimizer()
    model.start_epoch(0, epochs)
    sched = model.configure_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(model.lr)
    assert 1 <= peak <= max(1, round(0.1 * epochs)) + 1
    assert lrs[-1] < 0.1 * model.lr
