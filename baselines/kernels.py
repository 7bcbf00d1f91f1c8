"""Narrow-head attention (with mask and dropout) through the C kernel `baselines/kernels.c`,
the same attention as `baselines.common.attention`'s PyTorch paths up to float rounding, on
the same dropout draws (`uniform16` over the whole (B, H, L_q, L_k) map), tested in
tests/test_native_kernels.py.

Why: at the MulT family's head widths (5 and 10) the PyTorch attention is bound by passes over
the (L_q, L_k) maps in memory; the kernel keeps a row's weights in a small buffer and
recomputes them in the backward, saving only the row's log-sum-exp (and the draws).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from mer_bench import native

SOURCE = Path(__file__).with_name("kernels.c")
NARROW = 16  # widest head sent to the kernel: wider heads have well-shaped GEMMs (sdpa)
_P, _L, _F, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
_HEAD = [_P] * 7 + [_I, _F]  # q, k, v, strides, mask, mask strides, draws, keep_from, c
SIGNATURES = {
    "attn_forward": _HEAD + [_P] * 2 + [_L] * 5 + [_F] + [_L] * 2,
    "attn_backward": _HEAD + [_P] * 7 + [_L] * 5 + [_F] + [_L] * 2,
}


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SIGNATURES)


def usable(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """CPU float32 (B, H, L, d) inputs with heads at most NARROW wide, a bool mask or none,
    and the kernel compiled (`MER_BENCH_NATIVE=0` turns it off)."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and q.dim() == 4
            and q.shape[:2] == k.shape[:2] and q.shape[-1] <= NARROW
            and (mask is None or mask.dtype == torch.bool) and _library() is not None)


class _Call:
    """The C arguments shared by forward and backward (kept alive with the graph)."""

    def __init__(self, q, k, v, mask, draws, keep_from: int, p: float) -> None:
        b, h, len_q, d = q.shape
        self.st = native.strides(q, k, v)
        if mask is not None:
            mask = mask.expand(b, h, len_q, k.shape[2])
            self.mst = native.strides(mask)
        self.mask, self.draws = mask, draws
        self.head = (q.data_ptr(), k.data_ptr(), v.data_ptr(), ctypes.addressof(self.st),
                     0 if mask is None else mask.data_ptr(),
                     0 if mask is None else ctypes.addressof(self.mst),
                     0 if draws is None else draws.data_ptr(), keep_from, 1.0 / (1.0 - p))
        self.shape = (b, h, len_q, k.shape[2], d, d ** -0.5)
        self.blocks = native.lane_blocks(b, h)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q, k, v, mask, draws, keep_from: int, p: float) -> torch.Tensor:
        call = _Call(q, k, v, mask, draws, keep_from, p)
        b, h, len_q, _, d, _ = call.shape
        out = q.new_empty(b, h, len_q, d)
        lse = q.new_empty(call.blocks * len_q * native.LANES)
        native.run_split(_library(), "attn_forward",
                         (*call.head, out.data_ptr(), lse.data_ptr(), *call.shape), call.blocks)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.call = call
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        call = ctx.call
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype) for t in (q, k, v))
        gst = native.strides(g)
        native.run_split(_library(), "attn_backward", (
            *call.head, out.data_ptr(), lse.data_ptr(), g.data_ptr(), ctypes.addressof(gst),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), *call.shape), call.blocks)
        ctx.call = None
        return dq, dk, dv, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              draws: torch.Tensor | None, keep_from: int, p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) * keep / (1 - p) @ v, keep = draws >= keep_from (no
    dropout when draws is None); q, k, v (B, H, L, d) of any strides; mask bool,
    broadcastable to (B, H, L_q, L_k)."""
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return _Attention.apply(q, k, v, mask, draws, keep_from, p if draws is not None else 0.0)
