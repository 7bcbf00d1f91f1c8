"""Small layers shared by the transformer baselines.

Why one place: several baselines need the same pieces (sinusoidal positions, masked pooling,
multi-head attention with key-padding masks, a pre-LN encoder), and they must all agree on
one rule for padding: a query whose keys are all padding (an empty or fully padded modality)
attends to nothing and gets a zero context vector instead of NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import kernels
from mer_bench.ops import tmm


def sinusoidal_positions(
    length: int,
    dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed sin/cos position table (length, dim), Vaswani et al.; odd `dim` drops the last cos."""
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table if dtype is None else table.to(dtype)


def uniform16(shape: torch.Size) -> torch.Tensor:
    """int16 draws, uniform on [-2^15, 2^15), one per element of `shape` (see `keep_mask`)."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 1 << 62, (1,)))
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # 64-bit raw outputs
    return torch.from_numpy(words.view(np.int16)[:n]).view(shape)


def keep_threshold(p: float) -> int:
    """Draws of `uniform16` at or above this are kept: probability 1 - p (to 1/65536)."""
    return round(p * 65536) - 32768


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool dropout mask on CPU: True (kept) with probability 1 - p (to 1/65536).

    Why: attention dropout draws one random number per attention weight (B x H x L_q x L_k,
    tens of millions per MulT step), and torch's per-element Mersenne-Twister `bernoulli_` was a
    third of a MulT step. One seed from torch's generator (so `torch.manual_seed` keeps runs
    reproducible) feeds 16-bit uniform draws from numpy's SFC64 raw stream, four per word
    (2.5x faster than an elementwise torch hash, 1.8x than `bernoulli_`)."""
    return uniform16(shape) >= keep_threshold(p)


def attention(q, k, v, mask: torch.Tensor | None, dropout: float, training: bool,
              draw_len: tuple[int, int] | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v, with attention dropout while training (callers
    unmask empty rows). Heads up to `kernels.NARROW` wide on the CPU: the C kernel of
    `baselines.kernels` (same draws). Otherwise fused `scaled_dot_product_attention` without
    dropout, and with it off the CPU (its CUDA kernels draw their own dropout);
    `_DropoutAttention` on the CPU. On the CPU a causal mask is computed in row chunks over
    the keys they may see (`causal_spans`). `draw_len` (L_q, L_k): the dropout draws are those
    of a map that long, of which q and k are the leading rows and keys (`dropout_rows`)."""
    p = dropout if training else 0.0
    on_cpu = q.device.type == "cpu"
    draws = _draws(q, k, draw_len) if p > 0.0 and on_cpu else None
    if kernels.usable(q, k, mask):  # narrow heads on the CPU: one C kernel, same draws
        return kernels.attention(q, k, v, mask, draws, keep_threshold(p), p)
    spans = causal_spans(mask, k.shape[-2]) if on_cpu else None
    if p == 0.0:
        if spans is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.cat([F.scaled_dot_product_attention(
            q[..., r0:r1, :], k[..., :e, :], v[..., :e, :], attn_mask=mask[..., r0:r1, :e])
            for r0, r1, e in spans], dim=-2)
    if not on_cpu:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return _DropoutAttention.apply(q, k, v, mask, dropout, spans, draws)


def _draws(q: torch.Tensor, k: torch.Tensor, draw_len: tuple[int, int] | None) -> torch.Tensor:
    """The `uniform16` draws of one attention map (B, H, L_q, L_k); with `draw_len`, those of
    the longer map it leads, cut to its corner."""
    len_q, len_k = q.shape[-2], k.shape[-2]
    full = draw_len or (len_q, len_k)
    draws = uniform16(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + tuple(full))
    return draws if tuple(full) == (len_q, len_k) else draws[..., :len_q, :len_k].contiguous()


def dropout_rows(x: torch.Tensor, p: float, training: bool, rows: int | None = None) -> torch.Tensor:
    """F.dropout(x, p, training) on (B, T, D), or, with `rows` > T, the leading T rows of
    F.dropout on a (B, rows, D) tensor: the same draws as the longer tensor's, bit for bit.
    Why: a model that skips the batch's all-padding tail keeps its random draws (and so its
    training) as without the skip."""
    if not training or p == 0.0 or rows is None or rows == x.shape[1]:
        return F.dropout(x, p, training)
    noise = x.new_empty(x.shape[0], rows, *x.shape[2:]).bernoulli_(1 - p)  # F.dropout's draws
    return x * noise[:, : x.shape[1]].div_(1 - p)


def live_length(valid: torch.Tensor) -> int:
    """1 + the last step valid in some sample of the batch (at least 1): the steps after it are
    padding in every sample."""
    seen = valid.any(0).nonzero()
    return int(seen[-1]) + 1 if len(seen) else 1


CHUNK_ROWS_MIN = 32  # fewer query rows per chunk cost more in per-call overhead than they save
CHUNK_GAIN_MIN = 0.1  # chunk only when it skips at least this share of the score map


def causal_spans(mask: torch.Tensor | None, len_k: int) -> list[tuple[int, int, int]] | None:
    """Row chunks (r0, r1, e) of a (..., L_q, L_k) bool mask such that every query row in
    [r0, r1) is masked at every key >= e; None when chunking would skip too little.

    Why: MulT's "future" mask (query i sees keys j <= i + |L_k - L_q|) hides half of a self-
    attention map and up to a third of a crossmodal one, and the attention's cost on the CPU is
    elementwise passes over the whole map. Masked keys get weight exp(-inf) = 0, so leaving
    them out is the same attention up to float rounding (and the dropout draws are taken over
    the full map, as before). Measured (16 x 10 heads, one thread, forward + backward): the
    496 x 496 dropout attention 1.06 -> 0.61 s, the fused kernel 0.75 -> 0.51 s."""
    if (mask is None or mask.dtype != torch.bool or mask.dim() < 2 or mask.shape[-1] != len_k
            or mask.shape[-2] == 1):
        return None
    len_q = mask.shape[-2]
    rows = max(CHUNK_ROWS_MIN, -(-len_q // 8))
    if len_q <= rows:
        return None
    seen = mask.reshape(-1, len_q, len_k).any(0)  # (L_q, L_k): a key some sample may see
    ends = torch.where(seen, torch.arange(1, len_k + 1), 0).amax(-1)  # per row: keys < end
    spans = [(r0, min(r0 + rows, len_q), int(ends[r0:r0 + rows].max()))
             for r0 in range(0, len_q, rows)]
    kept = sum((r1 - r0) * e for r0, r1, e in spans)
    return spans if kept <= (1 - CHUNK_GAIN_MIN) * len_q * len_k else None


class _DropoutAttention(torch.autograd.Function):
    """Attention with dropout on the weights, as one autograd function.

    Why: written out in autograd, the path kept three weight-sized (B, H, L_q, L_k) tensors for
    backward (softmax output, float dropout multipliers, their product) and made extra passes
    over them (the multipliers, the masked-fill backward); measured, MulT's peak RSS fell from
    10.6 to 6.4 GB, its epoch 1.07x (README, stop 32). Here the mask is an additive bias, the
    weights are P * keep (the 1 / (1 - p) scale moves to the thin outputs), and
    with W = dropped weights the softmax backward is d/dS = c (W * dW - P * rowsum(W * dW)),
    formed in place; P and W are all it keeps, per row chunk of `causal_spans` (one chunk
    over the whole map without them). Every thin product goes through `tmm` (head widths
    5-8)."""

    @staticmethod
    def forward(ctx: Any, q, k, v, mask: torch.Tensor | None, p: float,
                spans: list[tuple[int, int, int]] | None = None,
                draws: torch.Tensor | None = None) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        len_q, len_k = q.shape[-2], k.shape[-2]
        spans = spans or [(0, len_q, len_k)]
        # the draws of `keep_mask` over the whole map, compared only where a chunk needs them
        if draws is None:
            draws = _draws(q, k, None)
        kept = keep_threshold(p)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # not once per chunk product
        outs, saved = [], []
        for r0, r1, e in spans:
            s = (q[..., r0:r1, :] * scale) @ k[..., :e, :].transpose(-1, -2)
            if mask is not None:  # additive: a broadcast masked_fill_ was 4x slower
                m = mask[..., r0:r1, :e]  # a (.., 1, L_k) mask has one span: 0:L_q keeps it
                s.add_(torch.zeros(m.shape, dtype=s.dtype).masked_fill_(~m, -math.inf))
            probs = torch.softmax(s, dim=-1)
            del s
            # P times the bool keep mask: bit for bit `where(keep, P, 0)` (P is finite and
            # >= 0), measured 1.8x faster than `where` with a scalar zero
            w = probs * (draws[..., r0:r1, :e] >= kept)
            outs.append(tmm(w, v[..., :e, :]))
            saved.append((probs, w))
        ctx.save_for_backward(q, k, v)
        ctx.chunks, ctx.spans = saved, spans
        ctx.scale, ctx.c = scale, 1.0 / (1.0 - p)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
        return out.mul_(ctx.c)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        q, k, v = ctx.saved_tensors
        c, cs = ctx.c, ctx.c * ctx.scale
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (r0, r1, e), (probs, w) in zip(ctx.spans, ctx.chunks, strict=True):
            gc = g[..., r0:r1, :]
            dv[..., :e, :] += tmm(w.transpose(-1, -2), gc)
            t = (gc @ v[..., :e, :].transpose(-1, -2)).mul_(w)  # W * dW
            ds = t.addcmul_(probs, t.sum(-1, keepdim=True), value=-1.0)  # d/dS over c
            dq[..., r0:r1, :] = tmm(ds, k[..., :e, :])
            dk[..., :e, :] += tmm(ds.transpose(-1, -2), q[..., r0:r1, :])
        ctx.chunks = None
        return dq.mul_(cs), dk.mul_(cs), dv.mul_(c), None, None, None, None


def lengths_to_valid(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid time steps (B, T, D) -> (B, D); rows without valid steps give zeros."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class MultiHeadAttention(nn.Module):
    """Multi-head (cross-)attention with bias-free q/k/v projections and a biased output
    projection; `key_valid` (B, L_k) masks padded keys.

    `dim_head` defaults to dim // heads; some baselines (LNLN) use a wider inner size.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"dim {dim} is not divisible by heads {heads}")
            dim_head = dim // heads
        inner = heads * dim_head
        context_dim = context_dim or dim
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        draw_len: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """x (B, L_q, D) attends over context (B, L_k, D_c) (x itself when None); `value`
        overrides the tensor the values are projected from (LNLN normalises k and v apart);
        `draw_len`: see `attention`."""
        context = x if context is None else context
        value = context if value is None else value
        q, k, v = (
            self._split(self.to_q(x)),
            self._split(self.to_k(context)),
            self._split(self.to_v(value)),
        )
        mask = any_valid = None
        if key_valid is not None:
            any_valid = key_valid.any(dim=-1)
            # A row with no valid key would softmax over -inf only (NaN): let it see every key
            # and zero its output below.
            mask = (key_valid | ~any_valid[:, None])[:, None, None, :]
        out = attention(q, k, v, mask, self.dropout, self.training, draw_len)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        if any_valid is not None:
            out = out * any_valid.to(out.dtype)[:, None, None]
        return self.to_out(out)


class FeedForward(nn.Module):
    """Position-wise Linear-GELU-Linear block with dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreLNEncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + Attn(LN(x), LN_c(context)), then x + FF(LN(x)).

    Self-attention when `cross=False`; with `cross=True` the context gets its own LayerNorm.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        cross: bool = False,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.cross = cross
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim or dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads, context_dim=context_dim, dropout=attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_dim, dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`key_valid` masks the keys: x's own positions, or the context's when `cross`."""
        h = self.norm(x)
        if self.cross:
            if context is None:
                raise ValueError("a cross-attention layer needs a context")
            ctx = self.norm_context(context)
        else:
            ctx = h
        x = x + self.drop(self.attn(h, ctx, key_valid))
        return x + self.ff(self.norm_ff(x))


class PreLNEncoder(nn.Module):
    """A stack of `PreLNEncoderLayer`s with an optional final LayerNorm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        cross: bool = False,
        context_dim: int | None = None,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PreLNEncoderLayer(dim, heads, ff_dim, dropout, attn_dropout, cross, context_dim)
            for _ in range(depth)
        )
        self.final = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_valid, context)
        return self.final(x)


class SafeBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that falls back to its running statistics for a training batch of one
    sample (plain BatchNorm raises there; the harness's last batch can hold a single row)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)
