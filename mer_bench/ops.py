"""Matrix products shaped for the CPU's batched GEMM.

Why: attention at head width 4-6 is made of batched products with a thin side: the weighted
values softmax(S) v and the gradients d/dq = dS k, d/dk = dS^T q, d/dv = P^T dO all write
(L x dh) outputs. MKL's batched GEMM writes such few-column outputs about 3x slower than their
transposes (measured on this AMD EPYC, 1,024 products of 50 x 50 by 50 x 5: 4.9 ms vs 1.6
ms), so `tmm` computes a thin product as (b^T a^T)^T, the same numbers up to float rounding.
"""

from __future__ import annotations

import torch

# widest output (columns) taken through the transposes: measured on this machine, one thread,
# (B, M, K) = (1024, 50, 50) and (160, 496, 371): 5 columns 2.4x faster, 10-12 1.1-2.2x, 16
# columns slower
THIN = 12


def tmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; through the transposes when the product has at most THIN columns and fewer
    columns than rows (the result is then a transposed view, which every torch op accepts)."""
    if b.shape[-1] <= THIN and b.shape[-1] < a.shape[-2]:
        return (b.transpose(-1, -2) @ a.transpose(-1, -2)).transpose(-1, -2)
    return a @ b
