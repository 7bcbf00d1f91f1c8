"""DMD, Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023), regression.

Architecture (the paper and the official mdswyz/DMD `trains/singleTask/model/dmd.py`):
- Conv1d projections (kernel 5, no bias) of text, audio and vision to width d = 50.
- Decoupling: a 1x1-conv modality-specific encoder per modality (s_m) and one 1x1-conv
  encoder shared by all three (c_m); a 1x1-conv decoder rebuilds the projection from
  [s_m; c_m] and the specific encoder re-encodes the reconstruction (s_m_r, cycle consistency).
- Homogeneous (shared) branch: per modality a residual head on the flattened c_m sequence
  (d*T' -> d -> d*T', + skip, -> 1), a self-attention transformer per c_m whose last steps
  (3d) feed a residual head (`logits_c`).
- Heterogeneous (specific) branch: MulT's six crossmodal and three memory transformers on
  s_m, each memory's last step through a residual head (2d).
- Fusion: sigmoid projections of the three memory outputs and of the shared concatenation
  (9d), MulT's residual head, one regression output.
- Graph distillation: two kernels (homogeneous on the flattened heads' 1-d logits and d-dim
  representations; heterogeneous on the memory heads' logits and 2d representations) learn
  one edge weight per sample for each of the 6 directed modality pairs (softmax over pairs of
  W_edge[z_j; z_i] / 8, z = [W_logit logit; W_repr repr]); priors softmax([0,0,1,0,1,0] / .25)
  and softmax([0,0,1,0,1,1] / .25), regulariser 10 |mean edge - prior|^2.
- Objective (official `trains/singleTask/DMD.py`): the 8 L1 heads (output, 3 homogeneous,
  3 heterogeneous, shared) + 0.05 (homogeneous logit distillation + regulariser) + 0.05
  (heterogeneous logit + representation distillation + regulariser) + 0.1 (consistency +
  reconstruction + 0.1 (hinge margin + orthogonality)). Logit distillation is the
  edge-weighted L1 to the detached teacher (weight 1); the heterogeneous representation term
  is 10 x CosineEmbeddingLoss(target -1) to the detached teacher times the mean edge weight
  (the homogeneous representation term is computed but unused by the official total, so it
  is not computed here).
- Optimisation: Adam lr 1e-4 (the config's weight_decay 0.005 never reaches the optimiser),
  micro-batches of 16 accumulated 10 times per step, gradient value clipping 0.6 after every
  backward; ReduceLROnPlateau(factor 0.5, patience 5) on the validation loss and selection on
  validation loss (`KeyEval: Loss`).

Deliberate differences from the official code, and why:
- Sequence lengths come from the data spec (the official hard-codes 50/375/500 per dataset).
- Text is the suite's fixed 768-d token features; the official fine-tunes BERT.
- Key-padding masks as in `baselines.mult`; padded steps are zeroed before every flattened
  linear, and reconstruction, consistency and orthogonality average over valid steps only.
- Orthogonality: the official passes 3-D (T, B, d) tensors to `CosineEmbeddingLoss`, which
  raises on current PyTorch; we take max(0, cos(s_t, c_t)) per valid time step, as `dlf`.
- `proj_cosine_*` (three flattened linears, 2,282,650 parameters at MOSI unaligned shapes) are
  built so the parameter count matches, but, as in the official code, no loss uses them and
  they change no output.
- ReduceLROnPlateau(0.5, 5) on the validation loss (`plateau_factor`,
  `plateau_patience`, through `BenchModel.configure_scheduler`); early stopping follows the validation loss (the default `selection`).

Parameters (MOSI unaligned, dims (768, 5, 20), lens (50, 375, 500), no text encoder,
including both distillation kernels): 12,578,232, exactly Table VI of the CIDer paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.dlf import hinge_margin_loss, masked_mse, orthogonality_loss
from baselines.mult import (
    MODALITIES,
    MULT_MOSI_BLOCK,
    ResidualHead,
    TemporalProjection,
    TransformerEncoder,
)
from mer_bench.data.batch import Batch
from mer_bench.models import BenchModel, ModelOutput, register_model
from mer_bench.training.steps import accumulated_step

# The official distillation stacks modalities in the order language, vision, audio.
GD_ORDER = ("text", "vision", "audio")


class DistillationKernel(nn.Module):
    """Graph-distillation kernel: one learned edge weight per sample for every directed pair
    (teacher i -> student j, i != j) of the stacked modalities, plus the distillation losses."""

    def __init__(self, hidden: int, gd_size: int, prior: list[float], alpha: float = 1 / 8,
                 reg: float = 10.0) -> None:
        super().__init__()
        self.w_logit = nn.Linear(1, gd_size)
        self.w_repr = nn.Linear(hidden, gd_size)
        self.w_edge = nn.Linear(4 * gd_size, 1)
        p = torch.tensor(prior, dtype=torch.float32) / 0.25
        self.register_buffer("prior", torch.softmax(p, 0), persistent=False)
        self.alpha, self.reg = alpha, reg
        n = 3
        self.pairs = [(j, i) for j in range(n) for i in range(n) if i != j]

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """logits (M, B, 1), reprs (M, B, H) -> normalised edges (pairs, B)."""
        z = torch.cat([self.w_logit(logits), self.w_repr(reprs)], dim=-1)
        e = torch.cat([self.w_edge(torch.cat([z[j], z[i]], -1)) for j, i in self.pairs], dim=1)
        return torch.softmax(e * self.alpha, dim=1).t()

    def losses(self, logits: torch.Tensor, reprs: torch.Tensor, edges: torch.Tensor,
               w_repr: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(regulariser, logit distillation, representation distillation); teachers detached."""
        reg = (edges.mean(1) - self.prior).pow(2).sum() * self.reg
        logit = reprs.new_zeros(())
        rep = reprs.new_zeros(())
        for x, (j, i) in enumerate(self.pairs):
            w = edges[x] + self.prior[x]
            logit = logit + ((logits[j] - logits[i].detach()).abs().sum(1) * w).mean()
            if w_repr:
                cos = F.cosine_similarity(reprs[j], reprs[i].detach(), dim=1, eps=1e-8)
                rep = rep + w_repr * cos.clamp_min(0).mean() * w.mean()
        return reg, logit, rep


class FlatResidualHead(nn.Module):
    """The homogeneous head on a flattened sequence: r = W1 x, x' = W2 dropout(relu(r)) + x,
    logit = W_out x'. Returns (r, logit); r is the representation distilled."""

    def __init__(self, flat: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.proj1, self.proj2 = nn.Linear(flat, dim), nn.Linear(dim, flat)
        self.out = nn.Linear(flat, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.proj1(x)
        h = self.proj2(F.dropout(F.relu(r), self.dropout, self.training)) + x
        return r, self.out(h)


@register_model("dmd", "DMD decoupled multimodal distillation (Li et al. CVPR 2023), regression")
class DMD(BenchModel):
    """DMD: decoupled shared/specific features with graph distillation on both branches."""

    output = "regression"
    training = "one-to-all"
    paper = (
        "Li, Wang, Cui. Decoupled Multimodal Distilling for Emotion Recognition. CVPR 2023"
    )
    # mdswyz/DMD config/config.json "dmd" -> datasetParams.mosi (attn_mask true,
    # update_epochs 10, early_stop 10); distillation settings from run.py; loss weights
    # from trains/singleTask/DMD.py.
    defaults = {
        **MULT_MOSI_BLOCK,
        "plateau_factor": 0.5,  # official ReduceLROnPlateau on the validation loss
        "plateau_patience": 5,
        "d_model": 50,
        "num_heads": 10,
        "layers": 4,
        "micro_batch": 16,
        "gd_size_homo": 64,
        "gd_size_hetero": 32,
        "w_distill": 0.05,
        "w_repr_hetero": 10.0,
        "w_aux": 0.1,
        "w_geo": 0.1,
        "margin_scale": 0.15,
    }
    lr = 1e-4  # official MOSI learning_rate
    batch_size = 160  # 10 accumulated micro-batches of 16 per step (update_epochs)
    patience = 10  # official early_stop

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        d = h["d_model"]
        kernels = (h["kernel_text"], h["kernel_audio"], h["kernel_vision"])
        drop = {"text": h["attn_dropout"], "audio": h["attn_dropout_a"], "vision": h["attn_dropout_v"]}

        def enc(width: int, layers: int, attn_dropout: float) -> TransformerEncoder:
            return TransformerEncoder(
                width, h["num_heads"], layers, attn_dropout, h["relu_dropout"], h["res_dropout"],
                h["embed_dropout"], h["causal_mask"],
            )

        def conv1x1(d_in: int) -> nn.Conv1d:
            return nn.Conv1d(d_in, d, 1, bias=False)

        n = h["layers"]
        self.proj = nn.ModuleDict(
            {m: TemporalProjection(spec.dims[i], d, kernels[i], spec.lens[i], m)
             for i, m in enumerate(MODALITIES)}
        )
        flat = {m: d * self.proj[m].out_len for m in MODALITIES}
        self.enc_specific = nn.ModuleDict({m: conv1x1(d) for m in MODALITIES})
        self.enc_shared = conv1x1(d)
        self.decoder = nn.ModuleDict({m: conv1x1(2 * d) for m in MODALITIES})
        # Built for parameter parity with the official model; never used (see docstring).
        self.proj_cosine = nn.ModuleDict({m: nn.Linear(flat[m], d) for m in MODALITIES})
        self.align = nn.ModuleDict({m: nn.Linear(flat[m], d) for m in MODALITIES})
        # homogeneous branch
        self.shared_self = nn.ModuleDict({m: enc(d, n, drop[m]) for m in MODALITIES})
        self.shared_head = ResidualHead(3 * d, 1, h["output_dropout"])
        self.homo_head = nn.ModuleDict(
            {m: FlatResidualHead(flat[m], d, h["output_dropout"]) for m in MODALITIES}
        )
        # heterogeneous branch (MulT on the specific features)
        self.cross = nn.ModuleDict(
            {f"{t}_{s}": enc(d, n, drop[s]) for t in MODALITIES for s in MODALITIES if s != t}
        )
        self.mem = nn.ModuleDict({m: enc(2 * d, max(n, 3), drop["text"]) for m in MODALITIES})
        self.hetero_head = nn.ModuleDict(
            {m: ResidualHead(2 * d, 1, h["output_dropout"]) for m in MODALITIES}
        )
        # fusion
        self.gate = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.gate_shared = nn.Linear(3 * d, 3 * d)
        self.head = ResidualHead(9 * d, 1, h["output_dropout"])
        self.joint_dim = 9 * d  # read by wrappers such as MACI
        self.gd_homo = DistillationKernel(d, h["gd_size_homo"], [0, 0, 1, 0, 1, 0])
        self.gd_hetero = DistillationKernel(2 * d, h["gd_size_hetero"], [0, 0, 1, 0, 1, 1])

    def _decouple(self, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
        raw = {
            "text": F.dropout(batch.text, self.hparams["text_dropout"], self.training),
            "audio": batch.audio,
            "vision": batch.vision,
        }
        parts: dict[str, dict[str, torch.Tensor]] = {
            k: {} for k in ("x", "valid", "s", "c", "recon", "s_r", "c_sim", "c_flat")
        }
        for m in MODALITIES:
            x, v = self.proj[m](raw[m], getattr(batch, f"valid_{m}"))
            xt = x.transpose(1, 2)  # (B, d, T) for the 1x1 convolutions
            s, c = self.enc_specific[m](xt), self.enc_shared(xt)
            recon = self.decoder[m](torch.cat([s, c], dim=1))
            keep = v.to(x.dtype).unsqueeze(-1)
            c_seq = c.transpose(1, 2)
            c_flat = (c_seq * keep).flatten(1)
            parts["x"][m], parts["valid"][m] = x, v
            parts["s"][m], parts["c"][m] = s.transpose(1, 2), c_seq
            parts["recon"][m] = recon.transpose(1, 2)
            parts["s_r"][m] = self.enc_specific[m](recon).transpose(1, 2)
            parts["c_flat"][m] = c_flat
            parts["c_sim"][m] = self.align[m](c_flat)
        return parts

    def forward(self, batch: Batch) -> ModelOutput:
        p = self._decouple(batch)
        s, c, valid = p["s"], p["c"], p["valid"]
        homo = {m: self.homo_head[m](p["c_flat"][m]) for m in MODALITIES}
        c_last = torch.cat([self.shared_self[m].last(c[m], valid[m]) for m in MODALITIES], -1)
        _, shared_score = self.shared_head(c_last)

        hetero, gates = {}, []
        for t in MODALITIES:
            hs = torch.cat(
                [self.cross[f"{t}_{o}"](s[t], kv=s[o], kv_valid=valid[o])
                 for o in MODALITIES if o != t],
                dim=-1,
            )
            last = self.mem[t].last(hs, valid[t])
            hetero[t] = self.hetero_head[t](last)
            gates.append(torch.sigmoid(self.gate[t](last)))
        gates.append(torch.sigmoid(self.gate_shared(c_last)))
        joint, score = self.head(torch.cat(gates, dim=-1))
        extras = {**p, "homo": homo, "hetero": hetero, "shared_score": shared_score}
        return ModelOutput(scores=score.squeeze(-1), joint=joint, extras=extras)

    def _terms(self, batch: Batch, out: ModelOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(main-head L1, the other 7 heads' L1, distillation + auxiliary terms)."""
        h, e, y = self.hparams, out.extras, batch.y_reg

        def l1(pred: torch.Tensor) -> torch.Tensor:
            return F.l1_loss(pred.view(-1), y)

        heads = l1(e["shared_score"])
        for m in MODALITIES:
            heads = heads + l1(e["homo"][m][1]) + l1(e["hetero"][m][1])
        distill = self._distillation(e)
        v = e["valid"]
        recon = sum(masked_mse(e["recon"][m], e["x"][m], v[m]) for m in MODALITIES)
        consist = sum(masked_mse(e["s"][m], e["s_r"][m], v[m]) for m in MODALITIES)
        ortho = sum(orthogonality_loss(e["s"][m], e["c"][m], v[m]) for m in MODALITIES)
        feats = torch.stack([e["c_sim"][m] for m in GD_ORDER], dim=1).flatten(0, 1)
        geo = hinge_margin_loss(feats, y.repeat_interleave(3), h["margin_scale"])
        aux = distill + h["w_aux"] * (consist + recon + h["w_geo"] * (geo + ortho))
        return l1(out.scores), heads, aux

    def _distillation(self, e: dict) -> torch.Tensor:
        """0.05 (homogeneous logit + reg) + 0.05 (heterogeneous logit + repr + reg)."""
        w = self.hparams["w_distill"]
        total = 0.0
        for kernel, key, w_repr in (
            (self.gd_homo, "homo", 0.0),
            (self.gd_hetero, "hetero", self.hparams["w_repr_hetero"]),
        ):
            reprs = torch.stack([e[key][m][0] for m in GD_ORDER])
            logits = torch.stack([e[key][m][1] for m in GD_ORDER])
            edges = kernel(logits, reprs)
            reg, logit, rep = kernel.losses(logits, reprs, edges, w_repr)
            total = total + w * (logit + rep + reg)
        return total

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Task (all 8 heads) and auxiliary terms; they sum to the official total."""
        main, heads, aux = self._terms(batch, self(batch))
        return {"task": main + heads, "aux": aux}

    def objective(self, batch: Batch, out: ModelOutput) -> dict[str, torch.Tensor]:
        """For wrappers: the main head as "task"; the other heads join "aux"."""
        main, heads, aux = self._terms(batch, out)
        return {"task": main, "aux": heads + aux}

    def step_options(self) -> dict[str, float]:
        return {"micro_batch": self.hparams["micro_batch"], "clip_value": self.hparams["grad_clip"]}

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        return accumulated_step(self, corrupted, optimizer, self.losses, **self.step_options())
