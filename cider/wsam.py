"""Word-level Self-aligned Attention Module (WSAM, paper eq. 4).

Why: MOSI/MOSEI audio and vision are 375-500 frames long; WSAM compresses each to the text
length with one single-head cross-attention (text queries, audio/vision keys and values), so
the MCT sees 3 x T_l tokens instead of T_l + T_a + T_v.

Masking (official `compressed_multihead_attention.py`): a query row is allowed only at a real
content token ([CLS], [SEP] and padding rows are excluded) and a key only at a valid frame.
Excluded query rows get all-zero weights, so their output is the output-projection bias.

Speed: the attention runs in `scaled_dot_product_attention` with a key mask (the fused CPU/CUDA
kernels never materialise the T_l x T_o weights); excluded query rows, and rows without any
valid key, are zeroed afterwards, which is exactly the official masked-softmax-times-mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e9


class WSAM(nn.Module):
    """Single-head cross-attention from text tokens to a long sequence; output (B, T_l, E)."""

    def __init__(self, dim: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.scaling = dim**-0.5
        self.in_proj = nn.Linear(dim, 3 * dim)  # packed q/k/v, as the official module
        self.out_proj = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(attn_dropout)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, text: torch.Tensor, other: torch.Tensor, query_ok: torch.Tensor, key_ok: torch.Tensor
    ) -> torch.Tensor:
        """text (B, T_l, E), other (B, T_o, E); query_ok (B, T_l) and key_ok (B, T_o) bool."""
        e = self.dim
        w, b = self.in_proj.weight, self.in_proj.bias
        q = nn.functional.linear(text, w[:e], b[:e]) * self.scaling
        kv = nn.functional.linear(other, w[e:], b[e:])
        k, v = kv.chunk(2, dim=-1)  # split, not slices: its backward is one concatenation
        any_key = key_ok.any(dim=1)
        # a sample without valid keys attends to every key, and its rows are zeroed below
        keys = (key_ok | ~any_key[:, None])[:, None, None, :]  # (B, 1, 1, T_o)
        p = self.attn_dropout.p if self.training else 0.0
        # one head as (B, 1, T, E): with 4-D inputs the CPU takes the fused (flash) kernel,
        # with 3-D ones its unfused math path (measured 2x slower, forward + backward)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=keys,
                                             dropout_p=p, scale=1.0)[:, 0]
        rows = (query_ok & any_key[:, None]).unsqueeze(2).to(out.dtype)
        return self.out_proj(out * rows)


def wsam_query_mask(valid_text: torch.Tensor, text_len: torch.Tensor, specials: bool) -> torch.Tensor:
    """Text rows WSAM may use: valid tokens, minus [CLS] (0) and [SEP] (len-1) when the text
    has special tokens."""
    ok = valid_text.clone()
    if specials:
        pos = torch.arange(ok.shape[1], device=ok.device)[None, :]
        ok &= (pos > 0) & (pos != (text_len - 1).unsqueeze(1))
    return ok
