"""CIDer's C kernels (`cider/kernels.c`, compiled by `mer_bench.native`) equal the PyTorch
paths they replace: MCA's branch outputs and gradients, the attention KL and its gradients, the
FFN's ReLU + dropout, and a fixed-seed training; and the build falls back cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cider import kernels
from cider.mct import MCA, Scores
from mer_bench import native

pytestmark = pytest.mark.skipif(kernels._library() is None, reason="no C compiler here")


def _with_and_without_kernels(monkeypatch, run):
    """run() with the kernels, then with MER_BENCH_NATIVE=0 (the PyTorch paths)."""
    fast = run()
    monkeypatch.setenv("MER_BENCH_NATIVE", "0")
    assert kernels._library() is None
    return fast, run()


@pytest.mark.parametrize(("dim", "heads", "lens", "batch"), [
    (32, 8, (9, 9, 9), 5),  # CIDer's head width 4; 40 (sample, head) pairs: a padded block
    (8, 2, (4, 9, 6), 3),  # unequal modality lengths (`no_wsam`), 6 pairs: one partial block
    (30, 3, (5, 7, 3), 4),  # head width 10 (the kernel's general path), 3 heads
])
def test_mca_kernel_equals_the_pytorch_blocks(monkeypatch, dim, heads, lens, batch):
    torch.manual_seed(0)
    mca = MCA(dim, heads)
    x = (torch.randn(batch, sum(lens), dim) * 2).requires_grad_()
    w = torch.randn(batch, sum(lens), dim)

    def run():
        x.grad = None
        mca.zero_grad()
        out, scores = mca(x, lens, need_scores=True)
        (out * w).sum().backward()
        return [out.detach(), scores.full().detach(), x.grad.clone(),
                mca.in_proj.weight.grad.clone(), mca.out_proj[3].weight.grad.clone()]

    for new, ref in zip(*_with_and_without_kernels(monkeypatch, run), strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_mca_kernel_in_evaluation_keeps_nothing_for_backward():
    mca = MCA(32, 8).eval()
    with torch.no_grad():
        out, _ = mca(torch.randn(2, 12, 32), (4, 4, 4))
    assert out.shape == (2, 12, 32) and out.grad_fn is None


@pytest.mark.parametrize(("heads", "width"), [(8, 4), (3, 7)])
def test_attention_kl_kernel_equals_the_chunked_kl(monkeypatch, heads, width):
    import cider.model as cm

    g = torch.Generator().manual_seed(5)
    n, length = 5, 23
    # strided views, as the MCT hands them over (q scaled, k inside the in-projection's output)
    q, k, tq, tk = (2 * torch.randn(n, length, heads * width, generator=g)
                    .view(n, length, heads, width).transpose(1, 2) for _ in range(4))
    teacher = Scores(tq, tk)

    def run():
        a, b = q.clone().requires_grad_(), k.clone().requires_grad_()
        value = cm.attn_kl(Scores(a, b), teacher)
        (1.3 * value).backward()
        return [value.detach(), a.grad, b.grad]

    (v1, gq1, gk1), (v0, gq0, gk0) = _with_and_without_kernels(monkeypatch, run)
    assert float(v1) == pytest.approx(float(v0), rel=1e-5)
    torch.testing.assert_close(gq1, gq0, rtol=1e-5, atol=1e-6 * float(gq0.abs().max()))
    torch.testing.assert_close(gk1, gk0, rtol=1e-5, atol=1e-6 * float(gk0.abs().max()))


def test_relu_dropout_kernel_is_bitwise_the_pytorch_one(monkeypatch):
    from cider.mct import relu_dropout

    h0 = torch.randn(7, 30, 16, generator=torch.Generator().manual_seed(2))
    h0[0, 0, :4] = 0.0
    w = torch.randn(h0.shape, generator=torch.Generator().manual_seed(3))

    def run():
        torch.manual_seed(9)
        h = h0.clone().requires_grad_()
        out = relu_dropout(h, 0.1, True)
        (out * w).sum().backward()
        return [out.detach(), h.grad]

    for new, ref in zip(*_with_and_without_kernels(monkeypatch, run), strict=True):
        assert torch.equal(new, ref)


def test_fixed_seed_cider_training_is_the_same_with_and_without_kernels(monkeypatch):
    from test_speed_paths import _short_training

    (fast, fast_scores), (ref, ref_scores) = _with_and_without_kernels(monkeypatch, _short_training)
    np.testing.assert_allclose(fast_scores, ref_scores, atol=1e-4)
    for k in fast:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k


def test_build_is_cached_and_falls_back_without_a_compiler(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MER_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load(kernels.SOURCE, kernels.SIGNATURES) is not None
    built = list((tmp_path / "native").glob("kernels-*.so"))
    assert len(built) == 1  # compiled once, atomically (no temporary left behind)
    monkeypatch.setattr(native, "_loaded", {})
    stamp = built[0].stat().st_mtime_ns
    assert native.load(kernels.SOURCE, kernels.SIGNATURES) is not None and built[0].stat().st_mtime_ns == stamp
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.load(kernels.SOURCE, kernels.SIGNATURES) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no C compiler" in err and "PyTorch path" in err
    # and CIDer still runs, on the PyTorch path
    out, _ = MCA(8, 2)(torch.randn(2, 6, 8), (2, 2, 2))
    assert torch.isfinite(out).all()


def test_run_split_covers_every_block_once(monkeypatch):
    """Without OpenMP the range is split over Python threads, each block once."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    seen = []
    lib = SimpleNamespace(work=lambda b0, b1: seen.extend(range(b0, b1)) or 0)
    native.run_split(lib, "work", (), 37)
    assert sorted(seen) == list(range(37))
    with pytest.raises(RuntimeError, match="work failed"):
        native.run_split(SimpleNamespace(work=lambda b0, b1: 1), "work", (), 4)


def test_kernels_run_on_torchs_openmp_threads():
    """Built with OpenMP, the library calls torch's libgomp (one thread pool in the process)."""
    import ctypes

    lib = kernels._library()
    if not native._openmp(lib):
        pytest.skip("the compiler here has no OpenMP")
    lib.native_openmp_runtime.restype = ctypes.c_void_p
    address = lib.native_openmp_runtime()
    with open("/proc/self/maps", encoding="utf-8") as fh:
        owner = next(line.split()[-1] for line in fh
                     if int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16))
    assert Path(owner).parent == Path(torch.__file__).parent / "lib", owner


def _baseline_attention_case(mask_kind: str, width: int):
    from baselines.mult import attention_mask

    g = torch.Generator().manual_seed(4)
    b, h, len_q, len_k = 3, 7, 9, 13  # 21 (sample, head) pairs: a partial lane block
    q, k, v = (torch.randn(b, len_q if n == "q" else len_k, h * width, generator=g)
               .view(b, -1, h, width).transpose(1, 2).requires_grad_() for n in "qkv")
    key_valid = torch.arange(len_k)[None] < torch.tensor([13, 5, 0])[:, None]  # one empty
    mask = {"none": None, "keys": attention_mask(len_q, len_k, key_valid, False, "cpu"),
            "causal": attention_mask(len_q, len_k, key_valid, True, "cpu")}[mask_kind]
    return q, k, v, mask


@pytest.mark.parametrize("width", [5, 10, 3])
@pytest.mark.parametrize("mask_kind", ["none", "keys", "causal"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_baseline_attention_kernel_equals_the_pytorch_paths(monkeypatch, mask_kind, width, dropout):
    """`baselines.common.attention` with and without the kernel: outputs and gradients, with
    MulT's key and future masks and with dropout on the same draws."""
    from baselines.common import attention

    q, k, v, mask = _baseline_attention_case(mask_kind, width)
    w = torch.randn(3, 7, q.shape[2], width, generator=torch.Generator().manual_seed(5))

    def run():
        torch.manual_seed(11)  # the draws' seed comes from torch's generator
        for t in (q, k, v):
            t.grad = None
        out = attention(q, k, v, mask, dropout, training=True)
        (out * w).sum().backward()
        return [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]

    for new, ref in zip(*_with_and_without_kernels(monkeypatch, run), strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_fixed_seed_mult_training_is_the_same_with_and_without_kernels(monkeypatch):
    from test_speed_paths import _short_mult_training

    fast, ref = _with_and_without_kernels(monkeypatch, _short_mult_training)
    np.testing.assert_allclose(fast[1], ref[1], atol=1e-4)
    for key in fast[0]:
        assert fast[0][key] == pytest.approx(ref[0][key], abs=1e-4), key
