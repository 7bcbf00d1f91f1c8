"""CIDer's MCA attention and its attention-distillation KL through the C kernels of
`cider/kernels.c` (CPU, float32, no attention dropout), equal to the PyTorch paths of
`cider.mct` and `cider.model` up to float rounding (tests/test_native_kernels.py).

Why: at head width 4 the PyTorch blocks spend most of a CIDer step passing over (B, H, 50, 50)
score maps in memory; the kernels keep each map in registers and recompute the exponentials in
their backward, and read and write the surrounding layouts directly, so no layout copies are
made either.

Layouts: MCA reads the in-projection's output qkv (B, L, 3E) as it is and writes, per query
modality m, the four branch outputs of its rows as one (B, L_m, 4E) tensor (branch slots in
`MODALITY_BRANCHES` order, heads concatenated within a slot), which is what the modality's
summary projection reads. The KL reads q and k (B, H, L, dh) through their strides.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from mer_bench import native

SOURCE = Path(__file__).with_name("kernels.c")
MAX_WIDTH = 64  # widest head the kernel takes (MAXD)
_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
SIGNATURES = {
    "mca_forward": [_P] * 5 + [_L] * 3 + [_F] + [_L] * 2,
    "mca_backward": [_P] * 6 + [_L] * 3 + [_F] + [_L] * 2,
    "attn_kl": [_P] * 8 + [_L] * 6,
    "relu_dropout_forward": [_P, _P, _F, _P, _L, _L],
    "relu_dropout_backward": [_P, _P, _F, _P, _L, _L],
}


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SIGNATURES)


def usable(x: torch.Tensor, head_width: int) -> bool:
    """The kernels apply to x: a CPU float32 tensor, heads at most MAX_WIDTH wide, and the
    library compiled (`MER_BENCH_NATIVE=0` turns them off)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and head_width <= MAX_WIDTH
            and _library() is not None)


class _Shape:
    """One MCA call's C arguments: lengths and branch key masks (kept alive with the graph)."""

    def __init__(self, lens: tuple[int, int, int], masks: tuple[int, ...], heads: int,
                 scale: float) -> None:
        self.lens_c = (ctypes.c_long * 3)(*lens)
        self.masks_c = (ctypes.c_int * 12)(*masks)
        self.heads, self.scale = heads, scale

    def args(self, batch: int, width: int) -> tuple:
        return (ctypes.addressof(self.lens_c), ctypes.addressof(self.masks_c), batch, self.heads,
                width, self.scale)


class _MCA(torch.autograd.Function):
    """qkv (B, L, 3E) -> the branch outputs of every row, modality-major: a flat tensor holding
    per modality m a (B, L_m, 4, E) block."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, shape: _Shape) -> torch.Tensor:
        batch, length, e3 = qkv.shape
        width = e3 // 3 // shape.heads
        blocks = native.lane_blocks(batch, shape.heads)
        out = qkv.new_empty(batch * length * 4 * (e3 // 3))
        keep = ctx.needs_input_grad[0]
        terms = qkv.new_empty(blocks * length * 3 * (width + 2) * native.LANES) if keep else None
        args = (qkv.data_ptr(), out.data_ptr(), 0 if terms is None else terms.data_ptr(),
                *shape.args(batch, width))
        native.run_split(_library(), "mca_forward", args, blocks)
        if keep:
            ctx.save_for_backward(qkv, terms)
        ctx.shape = shape
        return out

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor, None]:
        qkv, terms = ctx.saved_tensors
        batch, _, e3 = qkv.shape
        width = e3 // 3 // ctx.shape.heads
        gout = gout.contiguous()
        dqkv = torch.empty_like(qkv)
        args = (qkv.data_ptr(), terms.data_ptr(), gout.data_ptr(), dqkv.data_ptr(),
                *ctx.shape.args(batch, width))
        native.run_split(_library(), "mca_backward", args, native.lane_blocks(batch, ctx.shape.heads))
        return dqkv, None


def branch_outputs(
    qkv: torch.Tensor, heads: int, scale: float, lens: tuple[int, int, int],
    masks: tuple[int, ...],
) -> list[torch.Tensor]:
    """Per query modality m, (B, L_m, 4E): its rows' four branch outputs (heads concatenated
    within each), from the in-projection's output qkv (B, L, 3E); q is scaled by `scale`;
    masks[4 m + s] holds the key modalities (bits) of the s-th branch containing m."""
    batch, _, e3 = qkv.shape
    flat = _MCA.apply(qkv.contiguous(), _Shape(tuple(lens), masks, heads, scale))
    sizes = [batch * n * 4 * (e3 // 3) for n in lens]
    # split, not slicing: its backward assembles one gradient
    return [part.view(batch, n, 4 * (e3 // 3)) for part, n in zip(flat.split(sizes), lens)]


class _AttnKL(torch.autograd.Function):
    """The sum over rows of KL(softmax(S_t) || softmax(S_s)) for S = q k^T (B, H, L, L) given
    as factors; the forward forms the student's gradient too, the backward scales it."""

    @staticmethod
    def forward(ctx: Any, qs: torch.Tensor, ks: torch.Tensor, qt: torch.Tensor,
                kt: torch.Tensor) -> torch.Tensor:
        batch, heads, length, width = qs.shape
        blocks = native.lane_blocks(batch, heads)
        gq = qs.new_empty(qs.shape)
        gk = qs.new_empty(qs.shape)
        parts = torch.empty(blocks, dtype=torch.float64)
        strides = native.strides(qs, ks, qt, kt)
        args = (qs.data_ptr(), ks.data_ptr(), qt.data_ptr(), kt.data_ptr(),
                ctypes.addressof(strides), gq.data_ptr(), gk.data_ptr(), parts.data_ptr(),
                batch, heads, length, width)
        native.run_split(_library(), "attn_kl", args, blocks)
        ctx.save_for_backward(gq, gk)
        return parts.sum().to(qs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        gq, gk = ctx.saved_tensors
        return gq.mul_(grad), gk.mul_(grad), None, None


def attn_kl_sum(qs: torch.Tensor, ks: torch.Tensor, qt: torch.Tensor, kt: torch.Tensor
                ) -> torch.Tensor:
    """sum over (B, H, rows) of KL(softmax(qt kt^T) || softmax(qs ks^T)), the teacher's factors
    taken as constants."""
    return _AttnKL.apply(qs, ks, qt.detach(), kt.detach())


def relu_dropout_forward(h: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """relu(h) * (keep * scale) in one pass (`cider.mct.relu_dropout`); keep holds the 0/1
    draws, scale the float 1 / (1 - p)."""
    h, out = h.contiguous(), torch.empty_like(h)
    native.run_split(_library(), "relu_dropout_forward",
                     (h.data_ptr(), keep.data_ptr(), float(scale), out.data_ptr()), h.numel())
    return out


def relu_dropout_backward(out: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """grad * scale where out > 0, else 0, in one pass."""
    grad, dh = grad.contiguous(), torch.empty_like(out)
    native.run_split(_library(), "relu_dropout_backward",
                     (out.data_ptr(), grad.data_ptr(), float(scale), dh.data_ptr()), out.numel())
    return dh
