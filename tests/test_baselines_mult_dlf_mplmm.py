"""MulT, DLF and MPLMM baselines: shapes, training, missing-modality robustness, joint
representations and parameter counts at MOSI shapes."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from baselines.dlf import hinge_margin_loss
from baselines.mplmm import missing_pattern
from baselines.mult import TransformerEncoder
from mer_bench.data.batch import Batch, make_batch
from mer_bench.data.schema import DataSpec, Split, three_class
from mer_bench.models import MODELS
from mer_bench.scenarios.base import Lengths, apply_drops
from mer_bench.training.steps import micro_batches, slice_batch

torch.set_num_threads(1)

NAMES = ("mult", "dlf", "mplmm")
MODULES = {"mult": "baselines.mult", "dlf": "baselines.dlf", "mplmm": "baselines.mplmm"}
# Small widths keep the forward passes fast; structure (layers, heads, masks) is unchanged.
TINY = {
    "mult": {"d_model": 8, "num_heads": 2, "layers": 1, "mem_layers": 1},
    "dlf": {"d_model": 8, "num_heads": 2, "layers": 1},
    "mplmm": {"d_model": 8, "num_heads": 2, "layers": 1, "mem_layers": 1, "prompt_length": 3},
}
ALIGNED = DataSpec(dims=(12, 5, 7), lens=(8, 8, 8), aligned=True, has_text_ids=True)
UNALIGNED = DataSpec(dims=(12, 5, 7), lens=(8, 13, 11), aligned=False, has_text_ids=True)
MOSI = DataSpec(dims=(768, 5, 20), lens=(50, 375, 500), aligned=False, has_text_ids=True)
# Counts stated in each module's docstring (MOSI unaligned, binary, default hparams).
MOSI_COUNTS = {"mult": 2_571_551, "dlf": 3_566_105, "mplmm": 2_219_066}


def tiny_split(spec: DataSpec, n: int, seed: int = 0) -> Split:
    """Random features, zero-padded; the last sample has no valid audio frame (length 0)."""
    rng = np.random.default_rng(seed)
    lt, la, lv = spec.lens
    dt, da, dv = spec.dims
    t_len = rng.integers(3, lt + 1, n)
    bert = np.zeros((n, 3, lt), np.int64)
    for i, length in enumerate(t_len):
        bert[i, 0, :length] = rng.integers(1000, 2000, length)
        bert[i, 0, 0], bert[i, 0, length - 1] = 101, 102
        bert[i, 1, :length] = 1
    a_len = rng.integers(1, la + 1, n)
    a_len[-1] = 0
    v_len = rng.integers(1, lv + 1, n)
    y = rng.uniform(-3, 3, n).astype(np.float32)

    def feats(size: int, dim: int, lengths: np.ndarray) -> np.ndarray:
        x = rng.normal(size=(n, size, dim)).astype(np.float32)
        x[np.arange(size)[None, :] >= lengths[:, None]] = 0.0  # zero padding, as MMSA
        return x

    return Split(
        text=feats(lt, dt, t_len),
        audio=feats(la, da, a_len),
        vision=feats(lv, dv, v_len),
        audio_lengths=a_len,
        vision_lengths=v_len,
        regression_labels=y,
        classification_labels=three_class(y),
        id=np.array([f"s{i}" for i in range(n)]),
        raw_text=np.array(["text"] * n),
        text_bert=bert,
    )


def drop(batch: Batch, pattern: dict[int, tuple[str, ...]]) -> Batch:
    """Drop every droppable position of the listed modalities, per sample row."""
    lengths = Lengths.from_batch(batch)
    drops = {}
    for m in ("text", "audio", "vision"):
        mask = lengths.droppable(m).copy()
        for row in range(len(batch)):
            if m not in pattern.get(row, ()):
                mask[row] = False
        drops[m] = mask
    return apply_drops(batch, drops)


def build(name: str, spec: DataSpec, **hp):
    torch.manual_seed(0)
    return MODELS.get(name).cls(spec, "binary", **{**TINY[name], **hp})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("b", [1, 3])
def test_forward_shapes_and_joint(name, spec, b):
    model = build(name, spec).eval()
    batch = make_batch(tiny_split(spec, 4), np.arange(4 - b, 4))
    with torch.no_grad():
        out = model(batch)
    assert out.scores.shape == (b,)
    d = TINY[name]["d_model"]
    assert out.joint is not None and out.joint.shape == (b, 6 * d)
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.joint).all()
    assert model.output == "regression"
    assert type(model).training == "one-to-all" and type(model).paper


@pytest.mark.parametrize("name", NAMES)
def test_train_steps_reduce_loss_and_reach_parameters(name):
    spec = UNALIGNED
    model = build(name, spec)
    batch = make_batch(tiny_split(spec, 8, seed=1), np.arange(8))
    # every presence pattern, so every MPLMM generator path is used
    batch = drop(batch, {0: ("text",), 1: ("audio",), 2: ("vision",), 3: ("text", "audio"),
                         4: ("text", "vision"), 5: ("audio", "vision")})

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model.task_loss(model(batch), batch))

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    logs = model.train_step(batch, batch, opt)
    assert logs and all(np.isfinite(v) for v in logs.values())
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unreached, f"parameters without gradient: {unreached}"
    for _ in range(40):
        model.train()
        model.train_step(batch, batch, opt)
    assert eval_loss() < 0.8 * before


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dropped", [("text",), ("audio",), ("vision",), ("audio", "vision"),
                                     ("text", "audio", "vision")])
def test_zeroed_modalities_give_finite_outputs(name, dropped):
    spec = UNALIGNED
    model = build(name, spec)
    batch = drop(make_batch(tiny_split(spec, 3, seed=2), np.arange(3)),
                 {r: dropped for r in range(3)})
    for m in set(dropped) - {"text"}:  # text keeps its [CLS]/[SEP] features
        assert float(getattr(batch, m).abs().sum()) == 0.0
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.joint).all()
    model.train()
    logs = model.train_step(batch, batch, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert all(np.isfinite(v) for v in logs.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_at_mosi_shapes_matches_docstring(name):
    model = MODELS.get(name).cls(MOSI, "binary")
    n = model.n_parameters()
    print(f"{name}: {n:,} parameters at MOSI unaligned shapes")
    assert n == MOSI_COUNTS[name]
    assert f"{n:,}" in importlib.import_module(MODULES[name]).__doc__


def test_missing_pattern_rule():
    spec = ALIGNED
    batch = make_batch(tiny_split(spec, 5, seed=3), np.arange(5))
    lengths = Lengths.from_batch(batch)
    can = {m: lengths.droppable(m) for m in ("text", "audio", "vision")}
    drops = {m: np.zeros_like(can[m]) for m in can}
    drops["audio"][0] = can["audio"][0]  # row 0: audio fully dropped
    for m in can:  # row 1: everything dropped -> reset to complete
        drops[m][1] = can[m][1]
    v = np.flatnonzero(can["vision"][2])  # row 2: vision 1/3 dropped -> present
    drops["vision"][2, v[: len(v) // 3]] = True
    v = np.flatnonzero(can["vision"][3])  # row 3: vision mostly dropped -> missing
    drops["vision"][3, v[: max(1, int(np.ceil(0.8 * len(v))))]] = True
    miss = missing_pattern(apply_drops(batch, drops)).tolist()
    assert miss[0] == [False, True, False]
    assert miss[1] == [False, False, False]
    assert miss[2] == [False, False, False]
    assert miss[3] == [False, False, True]
    assert miss[4] == [False, True, False]  # no audio frame at all counts as missing


def test_hinge_margin_loss_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 4, generator=g)
    ids = torch.tensor([0.5, 0.5, 0.5, -1.0, -1.0, -1.0, 2.0, 2.0, 0.5])
    cos = torch.nn.functional.cosine_similarity(feats[:, None], feats[None], dim=-1)
    per_anchor = []
    for i in range(9):
        sim = [p for p in range(9) if p != i and ids[p] == ids[i]]
        dif = [q for q in range(9) if ids[q] != ids[i]]
        if sim and dif:
            vals = [max(0.0, 0.15 * abs(ids[i] - ids[q]) - cos[i, p] + cos[i, q])
                    for p in sim for q in dif]
            per_anchor.append(sum(vals) / len(vals))
    expected = sum(per_anchor) / len(per_anchor)
    got = hinge_margin_loss(feats, ids, chunk=4)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)
    assert hinge_margin_loss(feats[:3], ids[:3]).item() == 0.0  # no dissimilar partner


def test_padding_mask_ignores_padded_keys():
    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, 2, causal=True).eval()
    x, kv = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    valid = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    other = kv.clone()
    other[0, 4:] = 100.0  # change padded frames only
    a = enc(x, kv=kv, kv_valid=valid)
    b = enc(x, kv=other, kv_valid=valid)
    assert torch.allclose(a[0], b[0], atol=1e-5)
    none_valid = torch.zeros(2, 7, dtype=torch.bool)  # no valid key: no NaN
    assert torch.isfinite(enc(x, kv=kv, kv_valid=none_valid)).all()


def test_micro_batches_cover_the_batch():
    batch = make_batch(tiny_split(ALIGNED, 5), np.arange(5))
    parts = list(micro_batches(batch, 2))
    assert [len(p) for p in parts] == [2, 3]  # a trailing micro-batch of one is merged
    assert torch.equal(torch.cat([p.index for p in parts]), batch.index)
    assert torch.equal(slice_batch(batch, 1, 3).text_ids, batch.text_ids[1:3])


@pytest.mark.parametrize("base_aux", [1.0, 0.0])
def test_dlf_maci_keeps_dlf_auxiliary_objective(base_aux):
    """`dlf+maci` trains the MCM's NLL plus DLF's auxiliary terms (the reconstruction decoders
    and the margin loss's alignment layers are reached only through them)."""
    from cider.maci import MACI

    spec = UNALIGNED
    dlf = build("dlf", spec)
    split = tiny_split(spec, 8, seed=1)
    batch = make_batch(split, np.arange(8))
    dlf.eval()  # no dropout: the split objective and DLF's own losses sum to the same total
    with torch.no_grad():
        terms = dlf.objective(batch, dlf(batch))
        total = dlf.losses(batch)
    assert set(terms) == {"task", "aux"}
    assert torch.allclose(sum(terms.values()), sum(total.values()), rtol=1e-5)
    model = MACI(dlf, base_aux=base_aux, counterfactual=False)
    model.prepare(split)
    model.train()
    logs = model.train_step(batch, batch, model.configure_optimizer())
    assert set(logs) == ({"nll", "base_aux"} if base_aux else {"nll"})
    reached = {n: p.grad is not None for n, p in model.base.named_parameters()}
    aux_only = [n for n in reached if n.startswith(("decoder.", "align."))]
    assert aux_only and all(reached[n] == bool(base_aux) for n in aux_only)
