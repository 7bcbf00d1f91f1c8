"""The Multimodal Composite Transformer (MCT) and its Multimodal Composite Attention (MCA).

Why this file: MCA is CIDer's fusion (paper eqs. 7-12). One shared q/k/v projection gives one
score tensor S over the concatenated [text | audio | vision] tokens; seven branches (LAV, LA,
LV, AV, L, A, V) attend over different key subsets of S, each with its own output projection;
per modality the four branches that contain it are concatenated and summarised (s_l/s_a/s_v),
then `final_out_proj` mixes the result.

Speed: the official code builds seven masked copies of S (N x N each). Here S is split into its
3 x 3 (query modality, key modality) blocks; each block's exponentials, row sums and weighted
values are computed once, and a branch over a key subset is their log-sum-exp combination.
That is exactly the masked softmax (a -1e9 mask gives exp(-1e9) = 0) at the cost of one
attention instead of seven, and it supports unequal modality lengths (the `no_wsam` ablation).
Rows a branch excludes are never used by the summarisation, so they are not computed. On the
CPU (float32, no attention dropout) the blocks and their combination run in one C kernel
(`cider.kernels`); elsewhere in PyTorch (`_torch_branch_outputs`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cider import kernels
from mer_bench.ops import tmm

# Branch order of the official `out_proj[0..6]`, with the key modalities each attends to.
BRANCHES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("LAV", (0, 1, 2)),
    ("LA", (0, 1)),
    ("LV", (0, 2)),
    ("AV", (1, 2)),
    ("L", (0,)),
    ("A", (1,)),
    ("V", (2,)),
)
# For query modality m: the branches containing m, in branch order (text: LAV, LA, LV, L; ...).
MODALITY_BRANCHES: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i, (_, keys) in enumerate(BRANCHES) if m in keys) for m in range(3)
)
# the same as key-modality bit masks, flattened [m][slot] (what the C kernel reads)
BRANCH_KEY_MASKS: tuple[int, ...] = tuple(
    sum(1 << j for j in BRANCHES[b][1]) for bs in MODALITY_BRANCHES for b in bs
)


def xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    """Linear layer with xavier-uniform weight and zero bias (the official init for
    attention projections and the FFN)."""
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sinusoidal_table(n: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(n, dim) sin/cos table, sin on even and cos on odd channels (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(1e4) / dim))
    table = torch.zeros(n, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table if dtype is None else table.to(dtype)


def add_positions(x: torch.Tensor, by_batch: bool) -> torch.Tensor:
    """x (B, N, E) plus sinusoidal positions indexed by time step, or, reproducing the official
    bug (`batch_pe`), by the sample's position in the batch (added at every time step)."""
    b, n, e = x.shape
    if by_batch:
        return x + sinusoidal_table(b, e, x.device, x.dtype).unsqueeze(1)
    return x + sinusoidal_table(n, e, x.device, x.dtype).unsqueeze(0)


class Scores(NamedTuple):
    """A layer's raw scaled scores S = q k^T (B, H, N, N), kept as their factors q and k
    (B, H, N, dh). Why: distillation needs S only inside its KL, which forms it a few samples
    at a time (`cider.model.attn_kl`), so the full map (92 MB per pass for unaligned MOSI at
    batch 128) is never held."""

    q: torch.Tensor
    k: torch.Tensor

    def full(self) -> torch.Tensor:
        return self.q @ self.k.transpose(-1, -2)

    def detach(self) -> Scores:
        return Scores(self.q.detach(), self.k.detach())

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """S in chunks of `size` samples, each formed only when the iteration reaches it."""
        return (Scores(q, k).full() for q, k in zip(self.q.split(size), self.k.split(size)))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, e = x.shape
    return x.view(b, n, heads, e // heads).transpose(1, 2)  # (B, H, N, dh)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MCA(nn.Module):
    """Multimodal Composite Attention over tokens laid out as [T_l | T_a | T_v]."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.attn_dropout = dim, heads, attn_dropout
        self.scaling = (dim // heads) ** -0.5
        self.in_proj = xavier_linear(dim, 3 * dim)
        self.out_proj = nn.ModuleList([xavier_linear(dim, dim) for _ in BRANCHES])
        self.s_l = nn.Linear(4 * dim, dim)
        self.s_a = nn.Linear(4 * dim, dim)
        self.s_v = nn.Linear(4 * dim, dim)
        self.final_out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, lens: tuple[int, int, int], need_scores: bool = False
    ) -> tuple[torch.Tensor, Scores | None]:
        """x (B, N, E) -> (B, N, E) and, if asked, the raw scaled scores S as its factors."""
        qkv = self.in_proj(x)
        # attention dropout acts on the full (LAV) branch only, as in the official code
        p = self.attn_dropout if self.training else 0.0
        if p == 0.0 and min(lens) > 0 and kernels.usable(qkv, self.dim // self.heads):
            rows = kernels.branch_outputs(qkv, self.heads, self.scaling, lens, BRANCH_KEY_MASKS)
        else:
            rows = [torch.cat(parts, dim=-1) for parts in _torch_branch_outputs(
                _scaled_heads(qkv, self.heads, self.scaling), lens, p)]
        outs = [F.linear(r, *self._summary(m)) for m, r in enumerate(rows)]
        out = self.final_out_proj(torch.cat(outs, dim=1))
        # the raw scores (last layer, for distillation), as factors: the KL forms them
        return out, (Scores(*_scaled_heads(qkv, self.heads, self.scaling)[:2]) if need_scores else None)

    def _summary(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's summary of its four branches with their output projections folded in:
        s_m(cat_s(P_s o_s + c_s)) = cat_s(o_s) @ [S_s P_s]_s^T + (s_m.bias + sum_s S_s c_s),
        S_s the slot's columns of s_m (the same function, one product instead of five)."""
        summary = (self.s_l, self.s_a, self.s_v)[m]
        cols = summary.weight.split(self.dim, dim=1)
        projs = [self.out_proj[b] for b in MODALITY_BRANCHES[m]]
        weight = torch.cat([c @ p.weight for c, p in zip(cols, projs)], dim=1)
        bias = summary.bias + sum(c @ p.bias for c, p in zip(cols, projs))
        return weight, bias


def _scaled_heads(qkv: torch.Tensor, heads: int, scaling: float) -> tuple[torch.Tensor, ...]:
    """The in-projection's output (B, N, 3E) as q * scaling, k, v, each (B, H, N, dh)."""
    q, k, v = qkv.chunk(3, dim=-1)
    return _heads(q * scaling, heads), _heads(k, heads), _heads(v, heads)


def _torch_branch_outputs(
    qkv: tuple[torch.Tensor, ...], lens: tuple[int, int, int], p: float
) -> list[list[torch.Tensor]]:
    """Per query modality m, the attention outputs (B, L_m, H * dh) of the branches containing
    it (MODALITY_BRANCHES order), from the PyTorch blocks (`_BlockExp`), each branch a
    log-sum-exp combination of its key blocks; q (scaled), k, v are (B, H, N, dh)."""
    q, k, v = qkv
    dh = v.shape[-1]
    # values with a ones column: one product per block gives the weighted values and the
    # row sums of the exponentials (no separate reduction, no gradient to add back)
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    # per-modality copies (split, not slicing: its backward is one concatenation)
    qs = [t.contiguous() for t in q.split(lens, dim=2)]
    kts = [t.contiguous().transpose(-1, -2) for t in k.split(lens, dim=2)]
    v1s = [t.contiguous() for t in v1.split(lens, dim=2)]
    outputs = []
    for m in range(3):
        # per key block j: shift, exp-sum and weighted values of this query block
        shift, total, value, value_drop = [], [], [], []
        for j in range(3):
            weighted, mx, dropped = _BlockExp.apply(qs[m], kts[j], v1s[j], p)
            val, tot = weighted.split([dh, 1], dim=-1)
            shift.append(mx)
            value.append(val)
            total.append(tot)
            value_drop.append(dropped)
        parts = []
        for b in MODALITY_BRANCHES[m]:
            keys = BRANCHES[b][1]
            top = torch.stack([shift[j] for j in keys]).amax(0)
            w = {j: torch.exp(shift[j] - top) for j in keys}
            vals = value_drop if (b == 0 and p > 0) else value
            num = sum(w[j] * vals[j] for j in keys)
            den = sum(w[j] * total[j] for j in keys)
            parts.append(_merge(num / den))
        outputs.append(parts)
    return outputs


class _BlockExp(torch.autograd.Function):
    """One (query modality, key modality) block of MCA: e = exp(q k^T - rowmax) and
    e @ [v | 1] (weighted values and row sums), and with attention dropout p also
    dropout(e) @ v (F.dropout's CPU draws: bernoulli_(1 - p) / (1 - p)). The row maxima are a
    constant shift (they cancel in every branch), returned without gradient.

    Why one function: autograd kept a second (L_q, L_k) tensor for the exponential's backward
    and took every product in the slow orientation (`mer_bench.ops`); here the backward forms
    d/dS in place on the one saved block."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, kt: torch.Tensor, v1: torch.Tensor, p: float):
        e = q @ kt
        mx = e.amax(-1, keepdim=True)
        e.sub_(mx).exp_()
        weighted = tmm(e, v1)
        noise, dropped = None, e.new_empty(0)
        if p > 0:
            noise = torch.empty_like(e).bernoulli_(1 - p).div_(1 - p)
            dropped = tmm(e * noise, v1[..., :-1])
        ctx.save_for_backward(q, kt, v1, e, noise)
        ctx.mark_non_differentiable(mx)
        return weighted, mx, dropped

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _g_mx: Any, g_drop: torch.Tensor):
        q, kt, v1, e, noise = ctx.saved_tensors
        de = g @ v1.transpose(-1, -2)
        dv1 = tmm(e.transpose(-1, -2), g)
        if noise is not None:
            de.add_((g_drop @ v1[..., :-1].transpose(-1, -2)).mul_(noise))
            dv1 = dv1 + F.pad(tmm((e * noise).transpose(-1, -2), g_drop), (0, 1))
        ds = de.mul_(e)
        return tmm(ds, kt.transpose(-1, -2)), q.transpose(-1, -2) @ ds, dv1, None


class VanillaAttention(nn.Module):
    """Plain multi-head self-attention over all tokens (the `no_mct` ablation)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.scaling = (dim // heads) ** -0.5
        self.in_proj = xavier_linear(dim, 3 * dim)
        self.out_proj = xavier_linear(dim, dim)

    def forward(
        self, x: torch.Tensor, lens: tuple[int, int, int], need_scores: bool = False
    ) -> tuple[torch.Tensor, Scores | None]:
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q = _heads(q * self.scaling, self.heads)
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        attn = F.dropout(torch.softmax(Scores(q, k).full(), dim=-1), self.attn_dropout, self.training)
        return self.out_proj(_merge(attn @ v)), (Scores(q, k) if need_scores else None)


def relu_dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(F.relu(h), p, training), with the same random draws and values, keeping one
    tensor for backward instead of three (the ReLU's output, the dropout noise and the next
    layer's input): 20 MB less per MCT layer and pass at batch 128. CPU only: CUDA's dropout is
    a fused kernel with its own random stream, kept as it was."""
    if (not (training and p > 0) or not torch.is_grad_enabled() or not h.requires_grad
            or h.device.type != "cpu"):
        return F.dropout(F.relu(h), p, training)
    return _ReluDropout.apply(h, p)


class _ReluDropout(torch.autograd.Function):
    """The kept outputs are relu(h) / (1 - p) > 0 exactly where the gradient passes (a
    positive value times a scale above 1 never rounds to zero), so the output alone gives the
    backward: the incoming gradient times that scale there, zero elsewhere. With the CPU
    kernels each direction is one pass (`cider.kernels`), the same values bit for bit."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(h).bernoulli_(1 - p)  # what F.dropout draws on CPU
        ctx.scale = torch.ones((), dtype=h.dtype, device=h.device).div_(1 - p)
        if kernels.usable(h, 0):
            out = kernels.relu_dropout_forward(h, noise, ctx.scale)
        else:
            out = torch.relu(h).mul_(noise.div_(1 - p))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        if kernels.usable(out, 0):
            return kernels.relu_dropout_backward(out, grad, ctx.scale), None
        return torch.where(out > 0, grad * ctx.scale, 0.0), None


class EncoderLayer(nn.Module):
    """Pre-LN layer: x + drop(Attn(LN(x))), then x + drop(fc2(drop(relu(fc1(LN(x))))))."""

    def __init__(
        self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float,
        composite: bool = True,
    ) -> None:
        super().__init__()
        attn_cls = MCA if composite else VanillaAttention
        self.self_attn = attn_cls(dim, heads, attn_dropout)
        self.fc1 = xavier_linear(dim, 4 * dim)
        self.fc2 = xavier_linear(4 * dim, dim)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(
        self, x: torch.Tensor, lens: tuple[int, int, int], need_scores: bool = False
    ) -> tuple[torch.Tensor, Scores | None]:
        h, scores = self.self_attn(self.norm_attn(x), lens, need_scores)
        x = x + F.dropout(h, self.res_dropout, self.training)
        h = relu_dropout(self.fc1(self.norm_ffn(x)), self.relu_dropout, self.training)
        x = x + F.dropout(self.fc2(h), self.res_dropout, self.training)
        return x, scores


class MCTEncoder(nn.Module):
    """Positions + embed dropout, `layers` pre-LN layers, final LayerNorm. `composite=False`
    swaps MCA for vanilla attention (same width and depth)."""

    def __init__(
        self, dim: int, layers: int, heads: int, attn_dropout: float = 0.0,
        relu_dropout: float = 0.1, res_dropout: float = 0.1, embed_dropout: float = 0.0,
        composite: bool = True, batch_pe: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout, composite)
             for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(dim)
        self.embed_dropout, self.batch_pe = embed_dropout, batch_pe

    def forward(
        self, x: torch.Tensor, lens: tuple[int, int, int], need_scores: bool = False
    ) -> tuple[torch.Tensor, Scores | None]:
        """x (B, N, E) with N = sum(lens) -> (B, N, E) and the last layer's scores if asked."""
        x = F.dropout(add_positions(x, self.batch_pe), self.embed_dropout, self.training)
        scores = None
        for i, layer in enumerate(self.layers):
            x, scores = layer(x, lens, need_scores and i == len(self.layers) - 1)
        return self.norm(x), scores
