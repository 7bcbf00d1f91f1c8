"""Issue 13's fast paths equal the paths they replaced: fused attention against the masked
softmax written out (the code before the change, kept here as the reference), a fixed-seed
training giving the same metrics with either, and the allocator settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_split

from cider.wsam import NEG, WSAM
from mer_bench.alloc import tune_allocator
from mer_bench.data.schema import DataSpec
from mer_bench.models import build_model
from mer_bench.scenarios import get_policy
from mer_bench.training.trainer import TrainSettings, predict, score, seed_torch, train

torch.set_num_threads(1)


def reference_wsam(self: WSAM, text, other, query_ok, key_ok):
    """WSAM as written before the fused kernel: materialised masked softmax times the mask."""
    e = self.dim
    w, b = self.in_proj.weight, self.in_proj.bias
    q = torch.nn.functional.linear(text, w[:e], b[:e]) * self.scaling
    kv = torch.nn.functional.linear(other, w[e:], b[e:])
    k, v = kv[..., :e], kv[..., e:]
    allowed = query_ok.unsqueeze(2) & key_ok.unsqueeze(1)
    scores = torch.bmm(q, k.transpose(1, 2)).masked_fill(~allowed, NEG)
    weights = torch.softmax(scores, dim=-1) * allowed.to(scores.dtype)
    return self.out_proj(torch.bmm(self.attn_dropout(weights), v))


def _wsam_inputs(b: int = 6, t: int = 7, t_o: int = 13, e: int = 16):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(b, t, e, generator=g, requires_grad=True)
    other = torch.randn(b, t_o, e, generator=g, requires_grad=True)
    key_ok = torch.arange(t_o)[None] < torch.tensor([13, 5, 0, 1, 9, 13])[:, None]  # one empty
    query_ok = torch.rand(b, t, generator=g) > 0.3
    query_ok[4] = False  # a sample without any usable text row
    return text, other, query_ok, key_ok


def test_fused_wsam_equals_the_masked_softmax_forward_and_backward():
    torch.manual_seed(1)
    m = WSAM(16)
    text, other, query_ok, key_ok = _wsam_inputs()
    outs, grads = [], []
    for fn in (m.forward, lambda *a: reference_wsam(m, *a)):
        text.grad = other.grad = None
        m.zero_grad()
        out = fn(text, other, query_ok, key_ok)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([text.grad.clone(), other.grad.clone(), m.in_proj.weight.grad.clone()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for g_new, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g_new, g_ref, rtol=1e-5, atol=1e-6)
    # excluded rows (no query, or no key) are the output bias, exactly as before
    assert torch.equal(outs[0][2], m.out_proj.bias.detach().expand(7, 16))
    assert torch.equal(outs[0][4], m.out_proj.bias.detach().expand(7, 16))


def _short_training() -> tuple[dict[str, float], np.ndarray]:
    tr, va = random_split(48, seed=1), random_split(24, seed=2)
    spec = DataSpec(dims=(12, 5, 6), lens=(8, 14, 11), aligned=False, has_text_ids=True)
    seed_torch(1111)
    model = build_model("cider", spec, "binary", hidden=8, layers=2, heads=2)
    model.prepare(tr)
    train(model, tr, va, TrainSettings(epochs=2, patience=3, batch_size=16),
          get_policy("per-sample-uniform").bind(1111), [])
    assert model.use_wsam
    scores = predict(model, va, None, "cpu")["scores"]
    return score(model.output, "binary", scores, va), scores


def reference_mca_forward(self, x, lens, need_scores=False):
    """MCA as the official seven full-size masked softmaxes (tests/test_cider.py), plus the
    raw scaled scores of the layer when asked."""
    from test_cider import reference_mca

    scores = None
    if need_scores:
        b, n, _ = x.shape
        q, k, _v = self.in_proj(x).chunk(3, dim=-1)
        q = q.view(b, n, self.heads, -1).transpose(1, 2) * self.scaling
        scores = q @ k.view(b, n, self.heads, -1).transpose(1, 2).transpose(-1, -2)
    return reference_mca(self, x, lens), scores


def test_fixed_seed_training_gives_the_same_metrics_with_the_reference_attention(monkeypatch):
    from cider.mct import MCA

    fused, fused_scores = _short_training()
    monkeypatch.setattr(WSAM, "forward", reference_wsam)
    monkeypatch.setattr(MCA, "forward", reference_mca_forward)
    reference, reference_scores = _short_training()
    # the trained models' log-probabilities agree to float rounding, not just the metrics
    np.testing.assert_allclose(fused_scores, reference_scores, atol=1e-4)
    assert not np.allclose(fused_scores, fused_scores.mean(0))  # a model that discriminates
    assert fused.keys() == reference.keys()
    for k in fused:
        assert fused[k] == pytest.approx(reference[k], abs=1e-4), k


def test_allocator_settings_apply_once_and_are_reported():
    first = tune_allocator()
    assert tune_allocator() is first
    if first:  # glibc: the mmap threshold raised to 1 GiB, trimming of the heap top off
        assert first == {"malloc_mmap_threshold": 1 << 30, "malloc_trim_threshold": -1}
    out = torch.ones(1000, 1000) * 2  # allocations still work afterwards
    assert float(out.sum()) == 2e6
    assert np.isfinite(out.numpy()).all()


def test_progress_total_is_the_early_stopping_horizon():
    from mer_bench.training.progress import EpochBar, stop_horizon

    assert stop_horizon(-1, 10, 200) == 11  # before any validation: patience + 1 epochs
    assert stop_horizon(4, 10, 200) == 15  # best at epoch 4: stops after epoch 14
    assert stop_horizon(195, 10, 200) == 200  # capped by the budget
    bar = EpochBar(200, 3, "t", enabled=False)
    totals = []
    for epoch, best in enumerate([0, 1, 1, 1, 4]):
        bar.update(best, epoch - best)
        totals.append(bar.bar.total)
    bar.close()
    assert totals == [4, 5, 5, 5, 8]


@pytest.mark.slow  # two worker processes: tens of seconds on a shared 2-core machine
def test_parallel_grid_counts_trainings_on_its_bar(tmp_path, capsys):
    from mer_bench.training.runner import RunConfig, run_cells

    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", dataset="synth-mosi", scale=0.05,
                    epochs=1, rates=(0.0, 1.0))
    records = run_cells([(cfg, 1111), (cfg, 1112)], results=str(tmp_path), jobs=2, progress=True)
    assert len(records) == 2
    assert "grid: 100%" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_check_refuses_cleanly_without_cuda():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stdout == "" and out.stderr.count("\n") == 1 and "no CUDA device" in out.stderr


@pytest.mark.parametrize("lens", [(5, 5, 5), (4, 9, 6)])
def test_mca_gradients_equal_the_seven_masked_softmaxes(lens):
    from test_cider import reference_mca

    from cider.mct import MCA

    torch.manual_seed(0)
    mca = MCA(8, 2).eval()
    x = (torch.randn(3, sum(lens), 8) * 3).requires_grad_()
    grads = []
    for fn in (lambda: mca(x, lens, need_scores=True)[0], lambda: reference_mca(mca, x, lens)):
        x.grad = None
        mca.zero_grad()
        (fn() * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
        grads.append([x.grad.clone(), mca.in_proj.weight.grad.clone()])
    for new, ref in zip(*grads, strict=True):
        torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-4)


def _attention_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=dtype, requires_grad=True) for n in (6, 9, 9))
    mask = torch.arange(9)[None, None, None, :] < torch.tensor([9, 4])[:, None, None, None]
    return q, k, v, mask


def _out_and_grads(fn, *inputs):
    for t in inputs:
        t.grad = None
    out = fn()
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), *(t.grad.clone() for t in inputs)]


def _fixed_draws(keep: torch.Tensor):
    """A stand-in for `baselines.common.uniform16` whose draws keep exactly `keep` at any p."""
    draws = torch.where(keep, 32767, -32768).to(torch.int16)
    return lambda shape: draws.expand(shape)


def written_out_attention(q, k, v, mask, dropout: float, training: bool) -> torch.Tensor:
    """`baselines.common.attention` as autograd through softmax, mask and float dropout
    multipliers written out (the code before `_DropoutAttention`), drawing the same keep mask."""
    import baselines.common as common

    if not training or dropout == 0.0:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    s = s.masked_fill(~mask, -torch.inf) if mask is not None else s
    keep = common.keep_mask(s.shape, dropout).to(s.dtype)
    return (torch.softmax(s, -1) * keep / (1 - dropout)) @ v


def test_dropout_attention_path_equals_sdpa_when_nothing_is_dropped(monkeypatch):
    import torch.nn.functional as F

    import baselines.common as common

    q, k, v, mask = _attention_inputs()
    monkeypatch.setattr(common, "uniform16", _fixed_draws(torch.ones(2, 3, 6, 9, dtype=torch.bool)))
    new = _out_and_grads(lambda: common.attention(q, k, v, mask, 0.3, True) * 0.7, q, k, v)
    ref = _out_and_grads(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v)
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without dropout (or in eval) the call is the fused kernel itself
    torch.testing.assert_close(common.attention(q, k, v, mask, 0.3, False), ref[0])


def test_dropout_attention_equals_the_written_out_dropout_and_its_gradients(monkeypatch):
    """The one-function path against autograd through softmax, mask and dropout multipliers
    written out (the code before it), with the same fixed dropout pattern; float64."""
    import baselines.common as common

    q, k, v, mask = _attention_inputs(torch.float64)
    keep = torch.rand(2, 3, 6, 9, generator=torch.Generator().manual_seed(5)) > 0.3
    monkeypatch.setattr(common, "uniform16", _fixed_draws(keep))

    new = _out_and_grads(lambda: common.attention(q, k, v, mask, 0.3, True), q, k, v)
    ref = _out_and_grads(lambda: written_out_attention(q, k, v, mask, 0.3, True), q, k, v)
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _causal_inputs(len_q: int = 70, len_k: int = 90):
    """float64 q, k, v and MulT's future mask with key padding (one sample sees 40 keys)."""
    from baselines.mult import attention_mask

    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, len_q, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, len_k, 5, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    key_valid = torch.arange(len_k)[None] < torch.tensor([len_k, 40])[:, None]
    return q, k, v, attention_mask(len_q, len_k, key_valid, True, q.device)


def test_causal_spans_skip_exactly_the_keys_no_row_of_a_chunk_sees():
    from baselines.common import causal_spans
    from baselines.mult import attention_mask

    *_, mask = _causal_inputs()
    spans = causal_spans(mask, 90)  # query i sees keys j <= i + 20; 32-row chunks
    assert spans == [(0, 32, 52), (32, 64, 84), (64, 70, 90)]
    for r0, r1, e in spans:
        assert not mask[..., r0:r1, e:].any() and mask[..., r0:r1, e - 1].any()
    assert causal_spans(attention_mask(16, 16, None, True, "cpu"), 16) is None  # one chunk
    assert causal_spans(attention_mask(70, 400, None, True, "cpu"), 400) is None  # skips < 10%
    assert causal_spans(mask[..., -1:, :], 90) is None and causal_spans(None, 90) is None
    assert causal_spans(torch.zeros(mask.shape).masked_fill(~mask, -torch.inf), 90) is None  # float


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_chunked_causal_attention_equals_the_written_out_one(monkeypatch, dropout):
    """Row chunks over the keys each may see (training, with and without dropout, and eval)
    against the full masked softmax written out, on one fixed keep mask; float64."""
    import baselines.common as common

    q, k, v, mask = _causal_inputs()
    keep = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(6)) > 0.3
    monkeypatch.setattr(common, "uniform16", _fixed_draws(keep))
    assert common.causal_spans(mask, 90) is not None
    new = _out_and_grads(lambda: common.attention(q, k, v, mask, dropout, True), q, k, v)
    ref = _out_and_grads(lambda: written_out_attention(q, k, v, mask, dropout, True), q, k, v)
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(common.attention(q, k, v, mask, dropout, False),
                                   written_out_attention(q, k, v, mask, dropout, False),
                                   rtol=1e-10, atol=1e-12)


def test_cheap_dropout_mask_has_the_dropout_law_and_follows_the_seed():
    from baselines.common import keep_mask

    torch.manual_seed(7)
    a, b = keep_mask(torch.Size([400, 1000]), 0.3), keep_mask(torch.Size([400, 1000]), 0.3)
    torch.manual_seed(7)
    assert torch.equal(a, keep_mask(torch.Size([400, 1000]), 0.3)) and not torch.equal(a, b)
    assert a.dtype == torch.bool and a.shape == (400, 1000)
    assert abs(float((~a).float().mean()) - 0.3) < 0.005  # 400k draws: sd 0.0007
    rows = (~a).float().mean(1)  # no structure along the flattened index
    assert float(rows.std()) < 0.03


def reference_attn_kl(student, teacher) -> torch.Tensor:
    """The unfused attention KL (before the chunked autograd function), on full score maps
    (factors as the MCT returns them are multiplied out first, as the MCT did before)."""
    from cider.mct import Scores

    student, teacher = (x.full() if isinstance(x, Scores) else x for x in (student, teacher))
    rows = student.shape[0] * student.shape[1]
    with torch.no_grad():
        t_log = torch.log_softmax(teacher, dim=-1)
        t_p = t_log.exp()
    return (t_p * (t_log - torch.log_softmax(student, dim=-1))).sum() / rows


def test_one_pass_attention_kl_has_the_unfused_value_and_gradient(monkeypatch):
    import cider.model as cm

    g = torch.Generator().manual_seed(3)
    teacher = 3 * torch.randn(cm.KL_CHUNK * 2 + 5, 4, 30, 30, generator=g)  # a partial chunk
    a = (teacher + 0.3 * torch.randn(teacher.shape, generator=g)).requires_grad_()
    b = a.detach().clone().requires_grad_()
    (1.7 * reference_attn_kl(a, teacher)).backward()
    (1.7 * cm.attn_kl(b, teacher)).backward()
    # equal to float rounding of the largest entry (the two differ only in where 1 = sum p_t is
    # used; sums of 30 float32 terms: a few 1e-6 of the largest, depending on the CPU's kernels)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=4e-6 * float(a.grad.abs().max()))
    expected = float(reference_attn_kl(a, teacher).detach())
    assert float(cm.attn_kl(b, teacher).detach()) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():  # no gradient asked: none formed, the same value
        assert float(cm.attn_kl(a, teacher)) == pytest.approx(expected, rel=1e-6)
    fused, fused_scores = _short_training()
    monkeypatch.setattr(cm, "attn_kl", reference_attn_kl)
    reference, reference_scores = _short_training()
    np.testing.assert_allclose(fused_scores, reference_scores, atol=1e-4)
    for k in fused:
        assert fused[k] == pytest.approx(reference[k], abs=1e-4), k


def test_attention_kl_from_factors_has_the_full_map_value_and_gradients():
    """The MCT hands the KL S = q k^T as factors; value and d/dq, d/dk equal those of the full
    maps (what the MCT returned before) to float rounding, with the teacher either way."""
    import cider.model as cm
    from cider.mct import Scores

    g = torch.Generator().manual_seed(5)
    n = cm.KL_CHUNK * 2 + 5  # a partial chunk
    q, k, tq, tk = (2 * torch.randn(n, 4, 30, 4, generator=g) for _ in range(4))
    teacher = Scores(tq, tk)
    grads = []
    for make in (lambda a, b: reference_attn_kl(Scores(a, b).full(), teacher.full()),
                 lambda a, b: cm.attn_kl(Scores(a, b), teacher),
                 lambda a, b: cm.attn_kl(Scores(a, b), teacher.full())):
        a, b = q.clone().requires_grad_(), k.clone().requires_grad_()
        value = make(a, b)
        (1.3 * value).backward()
        grads.append((float(value.detach()), a.grad, b.grad))
    (ref, ref_q, ref_k), *rest = grads
    for value, gq, gk in rest:
        assert value == pytest.approx(ref, rel=1e-6)
        torch.testing.assert_close(gq, ref_q, rtol=1e-5, atol=1e-6 * float(ref_q.abs().max()))
        torch.testing.assert_close(gk, ref_k, rtol=1e-5, atol=1e-6 * float(ref_k.abs().max()))
    with torch.no_grad():
        assert float(cm.attn_kl(Scores(q, k), teacher)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.45])
def test_fused_relu_dropout_draws_and_gradients_are_bitwise_the_unfused_ones(p):
    """The MCT's FFN keeps only its output for backward; the values, the random draws (the
    generator's state afterwards too) and the gradient are exactly F.dropout(F.relu(h))'s."""
    import torch.nn.functional as F

    from cider.mct import relu_dropout

    h0 = torch.randn(8, 30, 16, generator=torch.Generator().manual_seed(2))
    h0[0, 0, :4] = 0.0  # ReLU's kink: no gradient there either way
    w = torch.randn(h0.shape, generator=torch.Generator().manual_seed(3))
    runs = []
    for fn in (lambda h: F.dropout(F.relu(h), p, True), lambda h: relu_dropout(h, p, True)):
        torch.manual_seed(9)
        h = h0.clone().requires_grad_()
        out = fn(h)
        (out * w).sum().backward()
        runs.append((out.detach(), h.grad, torch.rand(3)))
    for new, ref in zip(*runs, strict=True):
        assert torch.equal(new, ref)
    assert torch.equal(relu_dropout(h0, p, False), F.relu(h0))  # evaluation: plain ReLU


def test_fixed_seed_training_is_bitwise_the_same_with_the_unfused_relu_dropout(monkeypatch):
    import torch.nn.functional as F

    import cider.mct as mct

    fused, fused_scores = _short_training()
    monkeypatch.setattr(mct, "relu_dropout", lambda h, p, training: F.dropout(F.relu(h), p, training))
    reference, reference_scores = _short_training()
    assert np.array_equal(fused_scores, reference_scores) and fused == reference


@pytest.mark.parametrize("shape", [(3, 4, 20, 9, 5), (2, 3, 7, 6, 11), (2, 1, 4, 30, 16)])
def test_thin_product_equals_matmul(shape):
    from mer_bench.ops import tmm

    *batch, m, k, n = shape
    g = torch.Generator().manual_seed(4)
    a0, b0 = torch.randn(*batch, m, k, generator=g), torch.randn(*batch, k, n, generator=g)
    torch.testing.assert_close(tmm(a0, b0), a0 @ b0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lens", [(5, 5, 5), (4, 9, 6)])
def test_mca_attention_dropout_draws_and_gradients_are_the_blockwise_ones(lens):
    """With attention dropout MCA draws one F.dropout mask per (query, key) modality block in
    block order, as the per-block code before `cider.mct._BlockExp` did; the reference applies
    those masks to the official full (LAV) branch."""
    from test_cider import reference_mca

    from cider.mct import MCA

    p, b, heads = 0.3, 3, 2
    torch.manual_seed(0)
    mca = MCA(8, heads, attn_dropout=p).train()
    x = (torch.randn(b, sum(lens), 8) * 3).requires_grad_()
    torch.manual_seed(9)
    blocks = [[torch.empty(b, heads, lens[m], lens[j]).bernoulli_(1 - p).div_(1 - p) for j in range(3)]
              for m in range(3)]
    noise = torch.cat([torch.cat(row, dim=-1) for row in blocks], dim=-2)
    outs = []
    for fn in (lambda: mca(x, lens)[0], lambda: reference_mca(mca, x, lens, noise)):
        torch.manual_seed(9)
        x.grad = None
        mca.zero_grad()
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append([out.detach(), x.grad.clone(), mca.in_proj.weight.grad.clone()])
    for new, ref in zip(*outs, strict=True):
        torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the draws mattered: without them the output differs
        assert not torch.allclose(mca.eval()(x, lens)[0], outs[0][0], atol=1e-3)


@pytest.mark.parametrize("cross", [False, True])
def test_last_step_readout_equals_the_full_encoders_last_step(cross):
    from baselines.mult import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, 3, causal=True)  # no dropout: both paths are deterministic
    x = torch.randn(3, 7, 8, requires_grad=True)
    kv = torch.randn(3, 11, 8, requires_grad=True) if cross else None
    valid = torch.arange(11 if cross else 7)[None] < torch.tensor([11, 4, 0])[:, None]
    args = (x, None, kv, valid) if cross else (x, valid)
    results = []
    for fn in (lambda: enc(*args)[:, -1], lambda: enc.last(*args)):
        enc.zero_grad()
        x.grad = None
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), x.grad.clone(), enc.layers[-1].fc1.weight.grad.clone()])
    for new, ref in zip(*results, strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)


def _short_mult_training(**hp) -> tuple[dict[str, float], np.ndarray]:
    return _short_model_training("mult", d_model=8, num_heads=2, layers=2, mem_layers=2,
                                 kernel_text=1, kernel_audio=3, kernel_vision=3, **hp)


def _short_model_training(name: str, longest: int | None = None, **hp
                          ) -> tuple[dict[str, float], np.ndarray]:
    """Two seeded epochs of a small `name` on random unaligned data: (metrics, valid scores);
    `longest` caps the audio and vision lengths (so every batch has an all-padding tail)."""
    tr, va = random_split(48, seed=1), random_split(24, seed=2)
    if longest is not None:
        for split in (tr, va):
            split.audio_lengths[:] = np.minimum(split.audio_lengths, longest)
            split.vision_lengths[:] = np.minimum(split.vision_lengths, longest)
    spec = DataSpec(dims=(12, 5, 6), lens=(8, 14, 11), aligned=False, has_text_ids=True)
    seed_torch(1111)
    model = build_model(name, spec, "binary", **hp)
    train(model, tr, va, TrainSettings(epochs=2, patience=3, batch_size=16),
          get_policy("per-sample-uniform").bind(1111), [])
    scores = predict(model, va, None, "cpu")["scores"]
    assert not np.allclose(scores, scores.mean())  # a model that discriminates
    return score(model.output, "binary", scores, va), scores


def _assert_same_training(a, b) -> None:
    np.testing.assert_allclose(a[1], b[1], atol=1e-4)
    for k in a[0]:
        assert a[0][k] == pytest.approx(b[0][k], abs=1e-4), k


def test_fixed_seed_mult_training_is_the_same_with_the_written_out_dropout(monkeypatch):
    """MulT with attention dropout on (MMSA's MOSI block: 0.3 / 0.2 / 0), trained with the
    one-function dropout attention and with autograd through it written out, on the same
    keep-mask draws."""
    fast = _short_mult_training()
    monkeypatch.setattr("baselines.mult.attention", written_out_attention)
    _assert_same_training(fast, _short_mult_training())


def test_fixed_seed_mult_training_is_the_same_without_causal_chunks(monkeypatch):
    """MulT trained with its future-masked attention in row chunks (forced here: 2-row chunks
    on its short test sequences) and over the full maps, on the same keep-mask draws."""
    import baselines.common as common

    monkeypatch.setenv("MER_BENCH_NATIVE", "0")  # the PyTorch path (the kernel skips keys itself)
    monkeypatch.setattr(common, "CHUNK_ROWS_MIN", 2)
    chunked = []
    spans = common.causal_spans
    monkeypatch.setattr(common, "causal_spans", lambda *a: chunked.append(spans(*a)) or chunked[-1])
    fast = _short_mult_training()
    assert any(chunked)
    monkeypatch.setattr(common, "causal_spans", lambda *a: None)
    _assert_same_training(fast, _short_mult_training())


def _lnln_first_tokens_against_the_full_layer(lengths: list[int], weight: str):
    """`TokenTransformer(first=3)` and the whole encoder sliced: [outputs, d/dx, d/d weight]."""
    from baselines.lnln import TokenTransformer

    torch.manual_seed(0)
    enc = TokenTransformer(20, 3, 16, 2, 2, 8, 16)
    x = torch.randn(4, 20, 16, requires_grad=True)
    valid = torch.arange(20)[None] < torch.tensor(lengths)[:, None]
    outs = []
    for fn in (lambda: enc(x, valid, first=3), lambda: enc(x, valid)[:, :3]):
        x.grad = None
        enc.zero_grad()
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grad = getattr(enc.layers[0].attn, weight).weight.grad
        outs.append([out.detach(), x.grad.clone(), grad.clone()])
    for new, ref in zip(*outs, strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    return outs[0]


def test_lnln_extractor_first_tokens_equal_the_full_last_layer():
    """`TokenTransformer(first=k)`: the first k outputs and every gradient as with the whole
    last layer computed and sliced (padded keys masked)."""
    out, *_ = _lnln_first_tokens_against_the_full_layer([20, 7, 1, 13], "to_q")
    assert out.shape == (4, 3, 16)


def test_fixed_seed_lnln_training_is_the_same_with_the_full_extractor_layer(monkeypatch):
    from baselines.lnln import TokenTransformer

    def short() -> tuple[dict[str, float], np.ndarray]:
        return _short_model_training("lnln", hidden=16, heads=2, dim_head=8, mlp_dim=16)

    fast = short()
    full = TokenTransformer.forward
    monkeypatch.setattr(TokenTransformer, "forward",
                        lambda self, x, valid=None, keep_hidden=False, first=None:
                        full(self, x, valid, keep_hidden)[:, :first] if first else
                        full(self, x, valid, keep_hidden))
    _assert_same_training(fast, short())


def test_fixed_seed_mult_training_is_the_same_with_the_full_final_layer(monkeypatch):
    """The last-step readout against the full final layer; attention dropout off, since the
    readout draws a (B, H, 1, L) mask where the full layer drew (B, H, L, L)."""
    from baselines.mult import TransformerEncoder

    off = {"attn_dropout": 0.0, "attn_dropout_a": 0.0}
    fast = _short_mult_training(**off)
    monkeypatch.setattr(TransformerEncoder, "last", lambda self, *a, **kw: self(*a, **kw)[:, -1])
    _assert_same_training(fast, _short_mult_training(**off))


def test_lnln_extractor_without_the_batch_padding_tail_equals_the_full_sequence():
    """Steps that are padding in every sample of the batch are dropped before the extractor
    (`baselines.lnln._drop_padding_tail`): the kept tokens and every gradient are the same."""
    _, dx, _ = _lnln_first_tokens_against_the_full_layer([9, 7, 0, 13], "to_k")  # 13.. is tail
    assert torch.count_nonzero(dx[:, 13:]) == 0


def test_fixed_seed_emt_dlfr_training_is_the_same_with_the_whole_padding_tail(monkeypatch):
    """EMT-DLFR drops the batch's all-padding audio/vision tail (`EMTFusion.trim`) while its
    dropouts draw as for the whole sequences: the same training as without the cut."""
    from baselines.emt_dlfr import EMTFusion

    def short() -> tuple[dict[str, float], np.ndarray]:
        return _short_model_training("emt_dlfr_all", longest=6, d_model=16, heads=2,
                                     fusion_layers=2, a_lstm_hidden_size=8, v_lstm_hidden_size=8,
                                     audio_out=8, video_out=8, gmc_tokens_pred_dim=8,
                                     text_pred_dim=8, audio_pred_dim=8, video_pred_dim=8)

    cut = []
    trim = EMTFusion.trim
    monkeypatch.setattr(EMTFusion, "trim", lambda self, x, v, m: cut.append(
        trim(self, x, v, m)[0].shape[1] < x.shape[1]) or trim(self, x, v, m))
    fast = short()
    assert any(cut)
    monkeypatch.setattr(EMTFusion, "trim", lambda self, x, v, m: (x, v))
    _assert_same_training(fast, short())


def test_dropout_rows_draws_the_leading_rows_of_the_longer_tensor():
    import torch.nn.functional as F

    from baselines.common import dropout_rows

    x = torch.randn(3, 11, 5, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(4)
    whole = F.dropout(x, 0.3, True)
    after = torch.rand(2)
    torch.manual_seed(4)
    assert torch.equal(dropout_rows(x[:, :6], 0.3, True, 11), whole[:, :6])
    assert torch.equal(torch.rand(2), after)  # the generator moved on as for the whole tensor
