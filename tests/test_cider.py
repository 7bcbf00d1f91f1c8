"""CIDer: parameter counts, MCA/WSAM semantics, ablation and compat switches, training smoke."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_split

from cider.compat import COMPAT_SWITCHES, expand_compat
from cider.maci import class_features
from cider.mct import BRANCHES, MCA
from cider.model import ABLATIONS, CIDer, attn_kl, expand_ablations
from cider.wsam import WSAM, wsam_query_mask
from mer_bench.data.batch import make_batch
from mer_bench.data.schema import DataSpec, Split
from mer_bench.errors import UserError
from mer_bench.models import build_model
from mer_bench.scenarios.base import apply_drops

torch.set_num_threads(1)

MOSI = DataSpec(dims=(768, 5, 20), lens=(50, 375, 500), aligned=False, has_text_ids=True)
MOSI_ALIGNED = DataSpec(dims=(768, 5, 20), lens=(50, 50, 50), aligned=True, has_text_ids=True)
DIMS, LENS = (12, 5, 6), (8, 14, 11)
SPEC = DataSpec(dims=DIMS, lens=LENS, aligned=False, has_text_ids=True)
TINY = {"hidden": 8, "layers": 1, "heads": 2}


def corrupt(batch, rate: float = 0.5, seed: int = 0):
    """Drop valid positions at random (never [CLS]/[SEP]), as the harness does."""
    rng = np.random.default_rng(seed)
    drops = {}
    for m in ("text", "audio", "vision"):
        d = (rng.random(getattr(batch, f"valid_{m}").shape) < rate) & getattr(batch, f"valid_{m}").numpy()
        if m == "text":
            d[:, 0] = False
            d[np.arange(len(batch)), batch.text_len.numpy() - 1] = False
        drops[m] = d
    return apply_drops(batch, drops)


def make(task: str = "binary", spec: DataSpec = SPEC, split: Split | None = None, **hp) -> CIDer:
    torch.manual_seed(0)
    model = build_model("cider", spec, task, **{**TINY, **hp})
    if split is not None:
        model.prepare(split, cf_vocab=np.array([1001, 1003, 1005]))
    return model


# ----------------------------------------------------------------------------- parameter count
@pytest.mark.parametrize(
    "task,layers,expected", [("binary", 2, 244_086), ("binary", 3, 276_566), ("seven", 2, 251_806)]
)
def test_parameter_count_matches_official(task, layers, expected):
    c = 3 if task == "binary" else 7
    assert expected == 177_389 + 32_480 * layers + 193 * c * c
    assert build_model("cider", MOSI, task, layers=layers).n_parameters() == expected


def test_aligned_drops_wsam_and_compat_restores_it():
    unaligned = build_model("cider", MOSI, "binary", layers=2).n_parameters()
    aligned = build_model("cider", MOSI_ALIGNED, "binary", layers=2)
    # aligned recon heads map 50 -> 50 frames instead of 50 -> 375/500, so compare with the
    # official aligned count (204,561 with the unused WSAM modules)
    assert aligned.n_parameters() == 204_561 - 8_448
    assert not hasattr(aligned, "wsam_a")
    official = build_model("cider", MOSI_ALIGNED, "binary", layers=2, compat="wsam_aligned")
    assert official.n_parameters() == 204_561
    assert unaligned == 244_086


# ----------------------------------------------------------------------------- MCA / WSAM
def reference_mca(mca: MCA, x: torch.Tensor, lens, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The official formulation: seven full-size masked softmaxes over one score map;
    `noise` (B, H, N, N), if given, multiplies the full (LAV) branch's attention (dropout)."""
    b, n, e = x.shape
    h = mca.heads
    q, k, v = mca.in_proj(x).chunk(3, dim=-1)
    q = q.view(b, n, h, -1).transpose(1, 2) * mca.scaling
    k = k.view(b, n, h, -1).transpose(1, 2)
    v = v.view(b, n, h, -1).transpose(1, 2)
    s = q @ k.transpose(-1, -2)
    modality = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))
    outs = []
    for i, (_, keys) in enumerate(BRANCHES):
        inside = torch.isin(modality, torch.tensor(keys))
        mask = torch.zeros(n, n)
        mask[:, ~inside] = -1e9
        mask[~inside, :] = -1e9
        p = torch.softmax(s + mask, dim=-1) * inside[:, None].float()
        if noise is not None and i == 0:
            p = p * noise
        o = (p @ (v * inside[:, None].float())).transpose(1, 2).reshape(b, n, e)
        outs.append(mca.out_proj[i](o))
    cut = np.cumsum([0, *lens])
    per = []
    for m, (summ, idx) in enumerate(zip((mca.s_l, mca.s_a, mca.s_v), ((0, 1, 2, 4), (0, 1, 3, 5), (0, 2, 3, 6)))):
        rows = slice(cut[m], cut[m + 1])
        per.append(summ(torch.cat([outs[i][:, rows] for i in idx], dim=-1)))
    return mca.final_out_proj(torch.cat(per, dim=1))


@pytest.mark.parametrize("lens", [(5, 5, 5), (4, 9, 6)])
def test_mca_equals_seven_masked_softmaxes(lens):
    torch.manual_seed(0)
    mca = MCA(8, 2).eval()
    x = torch.randn(3, sum(lens), 8) * 3
    out, scores = mca(x, lens, need_scores=True)
    torch.testing.assert_close(out, reference_mca(mca, x, lens), atol=1e-5, rtol=1e-4)
    assert scores.full().shape == (3, 2, sum(lens), sum(lens))


def test_wsam_masks_specials_and_padding():
    torch.manual_seed(0)
    wsam = WSAM(8)
    text, audio = torch.randn(2, 6, 8), torch.randn(2, 9, 8)
    valid_text = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    rows = wsam_query_mask(valid_text, torch.tensor([4, 6]), specials=True)
    assert rows.tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]]
    key_ok = torch.arange(9)[None, :] < torch.tensor([[5], [9]])
    out = wsam(text, audio, rows, key_ok)
    # excluded rows ([CLS], [SEP], padding) output only the (zero-initialised) bias
    assert torch.allclose(out[~rows], torch.zeros(1, 8))
    # padded frames do not influence the output
    audio2 = audio.clone()
    audio2[0, 5:] = 100.0
    torch.testing.assert_close(wsam(text, audio2, rows, key_ok), out)


# ----------------------------------------------------------------------------- switches
def test_compat_expansion_and_errors():
    assert expand_compat("official") == frozenset(COMPAT_SWITCHES)
    assert expand_compat("") == expand_compat(None) == frozenset()
    assert expand_compat("batch_pe, stale_cv") == {"batch_pe", "stale_cv"}
    assert expand_compat(("wsam_aligned",)) == {"wsam_aligned"}
    assert set(COMPAT_SWITCHES) == {
        "batch_pe", "double_teacher_grad", "per_element_train", "split_class_means", "stale_cv",
        "wsam_aligned",
    }
    with pytest.raises(UserError, match="batch_pe"):
        expand_compat("bogus")
    with pytest.raises(UserError, match="no_mcm"):
        make(ablations=("no_such_thing",))


def _per_sample_scores(model, batch, perm):
    model.eval()
    with torch.no_grad():
        a = model(batch).scores
        b = model(make_batch_perm(batch, perm)).scores
    return a, b[np.argsort(perm)]


def make_batch_perm(batch, perm):
    from dataclasses import fields

    p = torch.as_tensor(perm)
    return batch.with_(
        **{f.name: getattr(batch, f.name)[p] for f in fields(batch) if getattr(batch, f.name) is not None}
    )


def test_batch_order_dependence_only_under_official_compat():
    split = random_split(12)
    batch = make_batch(split, np.arange(12))
    perm = np.random.default_rng(1).permutation(12)
    a, b = _per_sample_scores(make(split=split), batch, perm)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a, b = _per_sample_scores(make(split=split, compat="official"), batch, perm)
    assert (a - b).abs().max() > 1e-3


def test_ablation_names_match_table_v():
    table_v = {"no_recon", "no_attn", "no_joint", "no_mssd", "no_mcm", "no_cf", "no_maci", "no_wsam", "no_mct"}
    assert set(ABLATIONS) == table_v | {"no_teacher"}
    assert expand_ablations("no_mssd") == {"no_mssd", "no_recon", "no_attn", "no_joint"}
    assert expand_ablations("no_teacher") == {"no_teacher", "no_mssd", "no_recon", "no_attn", "no_joint"}


def _one_step(model, split, seed=0):
    batch = make_batch(split, np.arange(len(split)))
    model.train()
    return model.train_step(batch, corrupt(batch, seed=seed), model.configure_optimizer())


def test_loss_ablations_remove_their_terms():
    split = random_split()
    full = _one_step(make(split=split), split)
    assert {"teacher_nll", "nll", "recon", "attn", "joint"} <= set(full)
    for name, term in (("no_recon", "recon"), ("no_attn", "attn"), ("no_joint", "joint")):
        model = make(split=split, ablations=(name,))
        losses = _one_step(model, split)
        assert term not in losses and "teacher_nll" in losses
    assert not hasattr(make(ablations=("no_recon",)), "recon_text")
    assert make(w_recon=0.0)._weights().keys() == {"attn", "joint"}


def _count_passes(monkeypatch, model):
    calls = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda b, **kw: calls.append(b) or real(b, **kw))
    return calls


def test_no_mssd_is_table_v_and_keeps_the_teacher_step(monkeypatch):
    """Table V's w/o MSSD drops the three distillation losses only; the teacher step stays."""
    split = random_split()
    model = make(split=split, ablations=("no_mssd",))
    calls = _count_passes(monkeypatch, model)
    losses = _one_step(model, split)
    assert set(losses) == {"teacher_nll", "nll"} and len(calls) == 2
    assert not calls[0].missing_text.any() and calls[1].missing_text.any()


def test_no_teacher_is_plain_corrupted_training(monkeypatch):
    split = random_split()
    model = make(split=split, ablations=("no_teacher",))
    calls = _count_passes(monkeypatch, model)
    losses = _one_step(model, split)
    assert set(losses) == {"nll"} and len(calls) == 1
    assert calls[0].missing_text.any()  # it trained on the corrupted view
    full = make(split=split)
    calls = _count_passes(monkeypatch, full)
    _one_step(full, split)
    assert len(calls) == 2 and not calls[0].missing_text.any()


def test_no_mcm_no_cf_no_maci():
    split = random_split()
    base = make(split=split)
    assert base.mcm is not None and base.counterfactual
    no_mcm = make(split=split, ablations=("no_mcm",))
    assert no_mcm.mcm is None and not any("mcm" in n for n, _ in no_mcm.named_parameters())
    assert no_mcm.head.out_features == 3 and no_mcm.counterfactual
    assert not make(split=split, ablations=("no_cf",)).counterfactual
    no_maci = make(split=split, ablations=("no_maci",))
    assert no_maci.mcm is None and not no_maci.counterfactual
    batch = make_batch(split, np.arange(4))
    no_mcm.eval()
    with torch.no_grad():
        assert torch.allclose(no_mcm(batch).scores.exp().sum(-1), torch.ones(4))


def test_no_wsam_consumes_full_length_sequences():
    split = random_split()
    model = make(split=split, ablations=("no_wsam",))
    assert not hasattr(model, "wsam_a") and not model.use_wsam
    assert model.recon_audio.time.in_features == LENS[1]
    seen = {}

    def hook(mod, args, out):
        seen["lens"] = args[1]

    model.mct.register_forward_hook(hook)
    losses = _one_step(model, split)
    assert seen["lens"] == LENS and np.isfinite(list(losses.values())).all()
    assert make().recon_audio.time.in_features == LENS[0]  # WSAM compresses to T_l


def test_no_mct_uses_vanilla_attention():
    split = random_split()
    model = make(split=split, ablations=("no_mct",))
    names = [n for n, _ in model.named_modules()]
    assert not any(n.endswith("s_l") for n in names)
    assert type(model.mct.layers[0].self_attn).__name__ == "VanillaAttention"
    assert "attn" in _one_step(model, split)


# ----------------------------------------------------------------------------- training
def test_training_smoke_loss_decreases():
    split = random_split(32)
    model = make(split=split)
    batch = make_batch(split, np.arange(32))
    bad = corrupt(batch, seed=3)
    opt = model.configure_optimizer()
    model.train()
    history = [model.train_step(batch, bad, opt) for _ in range(30)]
    first, last = history[0], history[-1]
    assert set(first) == {"teacher_nll", "nll", "recon", "attn", "joint"}
    assert last["teacher_nll"] < first["teacher_nll"] and last["nll"] < first["nll"]
    assert sum(last.values()) < sum(first.values())


def test_double_teacher_grad_changes_the_update():
    split = random_split()
    a, b = make(split=split), make(split=split, compat="double_teacher_grad")
    batch = make_batch(split, np.arange(len(split)))
    bad = corrupt(batch)
    for m in (a, b):
        torch.manual_seed(5)
        m.train()
        m.train_step(batch, bad, m.configure_optimizer())
    assert not torch.allclose(a.proj2.weight, b.proj2.weight)


def test_recon_uses_dropped_positions_only():
    split = random_split()
    batch = make_batch(split, np.arange(len(split)))
    model = make(split=split)
    model.train()
    losses = model.train_step(batch, batch, model.configure_optimizer())  # nothing dropped
    assert losses["recon"] == 0.0


def test_mcm_priors_and_split_class_means():
    split = random_split(30)
    feats, priors, present = class_features(split, "binary")
    labels = split.labels("binary")
    assert np.allclose(priors, np.bincount(labels, minlength=3) / 30) and present.all()
    i = int(np.flatnonzero(labels == 2)[0])
    la = split.audio_lengths
    mean_a = np.stack([split.audio[j, : la[j]].mean(0) for j in np.flatnonzero(labels == 2)]).mean(0)
    assert np.allclose(feats[2, DIMS[0] : DIMS[0] + DIMS[1]], mean_a, atol=1e-5)
    assert i >= 0

    model = make(split=split)
    assert torch.allclose(model.mcm.train_priors, torch.as_tensor(priors))
    batch = make_batch(split, np.arange(8))
    model.eval()
    with torch.no_grad():
        before = model(batch).scores
        model.prepare_eval(random_split(20, seed=9))  # default: ignored
        assert torch.equal(model(batch).scores, before)
    compat = make(split=split, compat="split_class_means")
    compat.eval()
    with torch.no_grad():
        ref = compat(batch).scores
        compat.prepare_eval(random_split(20, seed=9))
        assert not torch.allclose(compat(batch).scores, ref)


def test_counterfactual_scores_change_text_only():
    split = random_split()
    model = make(split=split)
    batch = make_batch(split, np.arange(6))
    model.eval()
    with torch.no_grad():
        p, cf = model(batch).scores, model.counterfactual_scores(batch)
    assert cf.shape == p.shape and not torch.allclose(p, cf)
    assert torch.allclose(cf.exp().sum(-1), torch.ones(6), atol=1e-5)


def test_batch_pe_indexes_by_batch_position():
    from cider.mct import add_positions, sinusoidal_table

    x = torch.zeros(3, 5, 8)
    assert torch.allclose(add_positions(x, by_batch=False)[1], sinusoidal_table(5, 8))
    by_batch = add_positions(x, by_batch=True)
    assert torch.allclose(by_batch[2], sinusoidal_table(3, 8)[2].expand(5, 8))


def test_default_confounder_is_the_mean_of_training_class_means():
    """Valid/test: every class gets one confounder, the mean of the *training* class means
    (label-free, the official single vector); `train-class` keeps the per-class means."""
    split = random_split(30)
    feats, _, _ = class_features(split, "binary")
    model = make(split=split)
    expected = torch.as_tensor(feats).mean(0, keepdim=True).expand(3, -1)
    torch.testing.assert_close(model.mcm.eval_default(), expected)
    per_class = make(split=split, mcm_eval="train-class")
    torch.testing.assert_close(per_class.mcm.eval_default(), torch.as_tensor(feats))
    batch = make_batch(split, np.arange(8))
    for m in (model, per_class):
        m.eval()
    with torch.no_grad():
        # same weights, different confounders -> different valid/test scores
        assert not torch.allclose(model(batch).scores, per_class(batch).scores)
        # and the default really uses one vector for all classes
        conf = model.mcm.encode_confounders(model.mcm.eval_default())
        torch.testing.assert_close(conf[0], conf[2])
    with pytest.raises(UserError, match="mcm_eval"):
        make(mcm_eval="test-mean")


def test_attn_kl_sums_elementwise_terms_in_float32():
    """Close student and teacher over many long rows: the old difference of two large dot
    products lost the value to cancellation; summing the KL terms keeps it."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, 150, 150, generator=g) * 4
    student = (teacher + 1e-3 * torch.randn(teacher.shape, generator=g)).requires_grad_()
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(student.double(), -1).reshape(-1, 150),
        torch.log_softmax(teacher.double(), -1).reshape(-1, 150), log_target=True, reduction="sum",
    ) / (16 * 8)
    value = attn_kl(student, teacher)
    assert abs(float(value.detach()) - float(ref.detach())) < 1e-2 * float(ref.detach())
    value.backward()
    ref_grad = torch.autograd.grad(
        torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.softmax(teacher, -1),
                                   reduction="sum") / (16 * 8), student)[0]
    torch.testing.assert_close(student.grad, ref_grad, atol=1e-7, rtol=1e-4)


def test_aligned_and_id_free_data():
    aligned_lens = (8, 8, 8)
    split = random_split(lens=aligned_lens)
    spec = DataSpec(dims=DIMS, lens=aligned_lens, aligned=True, has_text_ids=True)
    for compat in ("", "official"):
        model = make("seven", spec=spec, split=split, compat=compat)
        assert model.recon_audio.time.in_features == 8 and not model.use_wsam
        assert np.isfinite(list(_one_step(model, split).values())).all()
    # CASP-style data: no token ids, so no special tokens and no counterfactual view
    split.text_bert = None
    spec = DataSpec(dims=DIMS, lens=aligned_lens, aligned=True, has_text_ids=False)
    model = build_model("cider", spec, "binary", **TINY)
    model.prepare(split, cf_vocab=None)
    assert not model.counterfactual
    assert np.isfinite(list(_one_step(model, split).values())).all()
