"""MulT, the Multimodal Transformer (Tsai et al., ACL 2019), with the shared encoder blocks
that the other transformer baselines (DLF, MPLMM, ...) import.

Architecture (as in the paper and MMSA's `MULT`): a Conv1d projection per modality (no
padding, so a kernel k shortens the sequence by k - 1), scaled inputs plus sinusoidal
positions, six crossmodal transformers (each target modality attends to each of the other
two), three self-attention "memory" transformers over the concatenated crossmodal outputs,
the last step of each memory concatenated, and a residual two-layer head with one
regression output trained with L1, as MMSA does for MOSI/MOSEI.

Deliberate differences from the official code, and why:
- Key-padding masks from `batch.valid_*`: the official MulT attends over padding frames
  (it has no padding mask). Masking them is a fair improvement; dropped (missing) frames
  stay visible as zeros, like in the official code. A sample with no valid key at all
  attends to every position rather than producing NaNs.
- The readout stays the official last (possibly padded) step: under the causal "future"
  mask (MMSA's `attn_mask: true`) only the last step sees every valid key, and with the
  padding mask it summarises valid positions only. (A last-*valid*-step readout would, under
  the causal offset |L_k - L_q|, never see the tail of a long audio/vision sequence.)
- Positions are indexed by time step (1..T). Fairseq's helper, used by the official code,
  gives position 0 (a zero vector) to every step whose first feature is exactly 0, so
  zeroed (missing) frames would lose their position.
- MMSA's encoder has no positional embedding at all (`position_embedding=False`), the
  original MulT has one; we follow the paper (`positions=True`).
- MMSA accumulates 8 micro-batches of 16 before each Adam step (value-clipping the gradient
  after each backward). `train_step` does the same inside one trainer batch of 128. MMSA's
  ReduceLROnPlateau (factor 0.1, patience 5 on the validation L1 loss) is
  `configure_scheduler`; selection is on the validation L1 loss (MMSA `KeyEval: "Loss"`).

Defaults are MMSA's MOSI row (d=50 with 10 heads; its MOSEI row uses d=30 with 6 heads,
kernels 5/1/3 and batch 4, and can be passed as hyper-parameters).

Parameters (MOSI unaligned shapes, dims (768, 5, 20), lens (50, 375, 500), binary task,
MMSA MOSI defaults, no text encoder: MMSA's MulT uses fixed BERT features too): 2,571,551,
exactly MMSA's `MULT` built with the same config (we instantiated it; positions and masks
have no parameters). 192,000 of them are the 768 -> 50 text convolution, 1,456,200 the three
100-d memories. The CIDer paper's Table VI has no MulT row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import attention
from mer_bench.data.batch import Batch
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, register_model

MODALITIES = ("text", "audio", "vision")


# --- encoder blocks (shared) --------------------------------------------------------------
def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) tensor2tensor-style table ([sin | cos] halves) for positions 1..length."""
    half = dim // 2
    step = math.log(10000.0) / max(half - 1, 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -step)
    pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)[:, None] * freq[None]
    table = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


def attention_mask(
    len_q: int, len_k: int, key_valid: torch.Tensor | None, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Bool mask (B or 1, 1, L_q, L_k), True = may attend, or None when nothing is masked.

    `causal` is MulT's "future mask": query i sees keys j <= i + |L_k - L_q|. A query row
    left with no key (a sample without any valid key) is unmasked entirely, so attention
    never produces NaNs; callers ignore those rows anyway.
    """
    allowed = None
    if causal:
        i = torch.arange(len_q, device=device)[:, None]
        j = torch.arange(len_k, device=device)[None, :]
        allowed = (j <= i + abs(len_k - len_q))[None, None]
    if key_valid is not None and not bool(key_valid.all()):
        kv = key_valid[:, None, None, :]
        allowed = kv if allowed is None else allowed & kv
    if allowed is None:
        return None
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class MultiheadAttention(nn.Module):
    """Multi-head attention with one packed input projection (the fairseq/MulT layout, so
    parameter counts match the official models) running on `baselines.common.attention` (fused
    kernels without dropout, a cheap dropout mask with it)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise UserError(f"model width {dim} is not divisible by {heads} attention heads")
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        for lin in (self.in_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        w, bias, d = self.in_proj.weight, self.in_proj.bias, self.dim
        if q is kv:
            qh, kh, vh = self.in_proj(q).chunk(3, dim=-1)
        else:
            qh = F.linear(q, w[:d], bias[:d])
            kh, vh = F.linear(kv, w[d:], bias[d:]).chunk(2, dim=-1)
        out = attention(self._heads(qh), self._heads(kh), self._heads(vh), mask, self.dropout,
                        self.training)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm block: attention then a 4x ReLU feed-forward, each with a residual.
    In crossmodal use the key/value sequence goes through the same LayerNorm as the query."""

    def __init__(
        self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float
    ) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, heads, attn_dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None, mask: torch.Tensor | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """`last_only`: the output at the last query step alone (B, 1, D), attending over
        every key as before (a readout needs nothing else from the final layer)."""
        h = self.norm_attn(x)
        kv_n = h if kv is None else self.norm_attn(kv)
        if last_only:
            x, h = x[:, -1:], h[:, -1:]
            mask = None if mask is None else mask[..., -1:, :]
        x = x + F.dropout(self.attn(h, kv_n, mask), self.res_dropout, self.training)
        h = F.relu(self.fc1(self.norm_ff(x)))
        h = self.fc2(F.dropout(h, self.relu_dropout, self.training))
        return x + F.dropout(h, self.res_dropout, self.training)


class TransformerEncoder(nn.Module):
    """MulT's transformer: self-attention when `kv` is None, crossmodal attention (queries from
    `x`, keys/values from `kv`) otherwise. Batch-first (B, T, D) tensors.

    `valid` / `kv_valid` (B, T) bool mark real positions of `x` / `kv`; only keys are masked
    (outputs at padded query steps are computed and must be ignored by the caller).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        causal: bool = False,
        positions: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.scale = dim, math.sqrt(dim)
        self.embed_dropout, self.causal, self.positions = embed_dropout, causal, positions
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale * x
        if self.positions:
            x = x + sinusoidal_positions(x.shape[1], self.dim, x.device).to(x.dtype)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        kv: torch.Tensor | None = None,
        kv_valid: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        x = self._embed(x)
        if kv is None:
            key_valid, len_k = valid, x.shape[1]
        else:
            kv = self._embed(kv)
            key_valid, len_k = kv_valid, kv.shape[1]
        mask = attention_mask(x.shape[1], len_k, key_valid, self.causal, x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, kv, mask, last_only and i == len(self.layers) - 1)
        return self.norm(x)

    def last(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, kv: torch.Tensor | None = None,
        kv_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward(...)[:, -1]` (B, D), the MulT-family readout. Why: the final layer's
        other query steps feed nothing, so only the last one is computed there (the final
        memory layer of MulT was a quarter of its memory transformers' work)."""
        return self(x, valid, kv, kv_valid, last_only=True)[:, -1]


# CrossModalEncoder is the same block used with `kv`; the alias names the intent at call sites.
CrossModalEncoder = TransformerEncoder


class TemporalProjection(nn.Module):
    """MulT's Conv1d projection (no bias, no padding). Identity when the input already has
    the model width, as in the official code. Returns the projected sequence and its mask:
    output step i is valid when its window starts at a valid input step."""

    def __init__(self, d_in: int, d_out: int, kernel: int, length: int, name: str) -> None:
        super().__init__()
        if kernel < 1 or kernel > length:
            raise UserError(
                f"conv kernel {kernel} for {name} must be between 1 and its sequence length {length}"
            )
        self.conv = None if d_in == d_out else nn.Conv1d(d_in, d_out, kernel, bias=False)
        self.kernel = 1 if self.conv is None else kernel
        self.out_len = length - self.kernel + 1

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.conv is None:
            return x, valid
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return y, valid[:, : y.shape[1]]


class ResidualHead(nn.Module):
    """MulT's output block: z = W2 dropout(relu(W1 h)) + h, score = W_out z. Returns (z, score)."""

    def __init__(self, dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.proj1, self.proj2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, out_dim)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj2(F.dropout(F.relu(self.proj1(h)), self.dropout, self.training)) + h
        return z, self.out(z)


class MulTFusion(nn.Module):
    """Six crossmodal transformers (target <- source) and three memory transformers.

    Attention dropout follows the source modality (`attn_dropout[source]`), the memories use
    `attn_dropout["text"]`, as the official `get_network`. `forward` returns, per target,
    the memory output at the last step; `append` adds extra always-valid tokens (B, P, 2d)
    at the end of each target's memory input (MPLMM's prompts), which then hold the readout.
    """

    @classmethod
    def from_hparams(cls, dim: int, h: dict, positions: bool = True) -> MulTFusion:
        """Build from a MulT-style hyper-parameter dict (shared by MulT and MPLMM)."""
        return cls(
            dim,
            h["num_heads"],
            h["layers"],
            h["mem_layers"],
            {"text": h["attn_dropout"], "audio": h["attn_dropout_a"], "vision": h["attn_dropout_v"]},
            h["relu_dropout"],
            h["res_dropout"],
            h["embed_dropout"],
            h["causal_mask"],
            positions,
        )

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        mem_layers: int,
        attn_dropout: dict[str, float],
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        causal: bool,
        positions: bool = True,
    ) -> None:
        super().__init__()

        def enc(width: int, n: int, drop: float) -> TransformerEncoder:
            return TransformerEncoder(
                width, heads, n, drop, relu_dropout, res_dropout, embed_dropout, causal, positions
            )

        self.cross = nn.ModuleDict(
            {
                f"{t}_{s}": enc(dim, layers, attn_dropout[s])
                for t in MODALITIES
                for s in MODALITIES
                if s != t
            }
        )
        self.mem = nn.ModuleDict(
            {t: enc(2 * dim, max(layers, mem_layers), attn_dropout["text"]) for t in MODALITIES}
        )

    def forward(
        self,
        xs: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        append: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        last = {}
        for t in MODALITIES:
            h = torch.cat(
                [
                    self.cross[f"{t}_{s}"](xs[t], kv=xs[s], kv_valid=valid[s])
                    for s in MODALITIES
                    if s != t
                ],
                dim=-1,
            )
            v = valid[t]
            if append is not None:
                extra = append[t]
                h = torch.cat([h, extra], dim=1)
                v = torch.cat([v, v.new_ones(extra.shape[:2])], dim=1)
            last[t] = self.mem[t].last(h, valid=v)
        return last


# --- the model ----------------------------------------------------------------------------
# The MulT family's MOSI block settings (MMSA's "mult" datasetParams.mosi); DLF, DMD and DiCMoR
# use the same values in their official MOSI configurations.
MULT_MOSI_BLOCK: dict[str, float | bool] = {
    "kernel_text": 5,
    "kernel_audio": 5,
    "kernel_vision": 5,
    "attn_dropout": 0.3,
    "attn_dropout_a": 0.2,
    "attn_dropout_v": 0.0,
    "relu_dropout": 0.0,
    "res_dropout": 0.0,
    "embed_dropout": 0.2,
    "text_dropout": 0.5,
    "output_dropout": 0.5,
    "causal_mask": True,
    "grad_clip": 0.6,
}


@register_model("mult", "MulT cross-modal transformer (Tsai et al. 2019, MMSA config), regression")
class MulT(BenchModel):
    """MulT cross-modal transformer (Tsai et al. 2019) with MMSA's MOSI configuration."""

    output = "regression"
    training = "one-to-all"
    paper = (
        "Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov. Multimodal Transformer for Unaligned "
        "Multimodal Language Sequences. ACL 2019"
    )
    # MMSA src/MMSA/config/config_regression.json, "mult" -> datasetParams.mosi (attn_mask:
    # true in commonParams; update_epochs 8). `positions` from the original MulT code.
    defaults = {
        **MULT_MOSI_BLOCK,
        "d_model": 50,
        "num_heads": 10,
        "layers": 4,
        "mem_layers": 3,
        "positions": True,
        "micro_batch": 16,
        "plateau_factor": 0.1,  # MMSA trains/singleTask/MULT.py
        "plateau_patience": 5,  # MMSA "patience" (mosi)
    }
    lr = 0.002  # MMSA learning_rate for MOSI
    batch_size = 128  # 8 accumulated micro-batches of 16 per step (MMSA update_epochs)
    patience = 8  # MMSA early_stop

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        d = h["d_model"]
        kernels = (h["kernel_text"], h["kernel_audio"], h["kernel_vision"])
        self.proj = nn.ModuleDict(
            {
                m: TemporalProjection(spec.dims[i], d, kernels[i], spec.lens[i], m)
                for i, m in enumerate(MODALITIES)
            }
        )
        self.fusion = MulTFusion.from_hparams(d, h, h["positions"])
        self.head = ResidualHead(6 * d, 1, h["output_dropout"])
        self.joint_dim = 6 * d  # read by wrappers such as MACI

    def forward(self, batch: Batch) -> ModelOutput:
        raw = {
            "text": F.dropout(batch.text, self.hparams["text_dropout"], self.training),
            "audio": batch.audio,
            "vision": batch.vision,
        }
        xs, valid = {}, {}
        for m in MODALITIES:
            xs[m], valid[m] = self.proj[m](raw[m], getattr(batch, f"valid_{m}"))
        last = self.fusion(xs, valid)
        joint, score = self.head(torch.cat([last[m] for m in MODALITIES], dim=-1))
        return ModelOutput(scores=score.squeeze(-1), joint=joint, extras={"last": last})

    def step_options(self) -> dict[str, float]:
        return {"micro_batch": self.hparams["micro_batch"], "clip_value": self.hparams["grad_clip"]}
