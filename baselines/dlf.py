"""DLF, Disentangled-Language-Focused multimodal sentiment analysis (Wang et al., AAAI 2025).

Architecture (as the paper and the official pwang322/DLF code):
- Conv1d projections (kernel 5) of text, audio and vision to width d.
- Feature disentanglement: a modality-specific transformer per modality (s_m) and one
  transformer shared by all three (c_m); a 1x1 decoder rebuilds the projected input from
  [s_m; c_m], and the specific encoder re-encodes that reconstruction (s_m_r).
- Shared branch: a self-attention transformer per c_m, last steps concatenated (3d) and a
  residual head (an auxiliary prediction).
- Language-Focused Attractor (LFA): language queries the audio- and vision-specific
  sequences (crossmodal transformers L<-A, L<-V) plus a language self-memory; each of the
  three streams ends in a residual head with an auxiliary prediction.
- Fusion: sigmoid projections of the three LFA features and of the shared concatenation
  (6d), then the MulT residual head with one regression output (MMSA style, L1).
- Objective (official trainer): L_task = L1(out) + L1(shared) + 3 L1(lang) + L1(vision) +
  L1(audio); reconstruction L_r = sum_m MSE(recon_m, proj_m); specific-consistency
  L_s = sum_m MSE(s_m, s_m_r); orthogonality L_o = sum_m mean max(0, cos(s_m, c_m)) per
  time step (CosineEmbeddingLoss with target -1); geometric margin L_m = the official
  hinge loss on flattened shared features (same label = similar, margin 0.15 |y_i - y_j|);
  total = L_task + w_aux (L_s + L_r + w_geo (L_m + L_o)) with w_aux = w_geo = 0.1.

Deliberate differences from the official code, and why:
- Unused modules are not built: the official model creates `proj_cosine_*`, the
  `*_low` heads and four crossmodal transformers (A<-L, A<-V, V<-L, V<-A) that its forward
  pass or loss never uses; they change no output, only the parameter count.
- Text is the suite's fixed BERT token features; the official fine-tunes BERT (the MMSA
  pickle's `text_bert` ids are available, but the suite's default is fixed features).
- Key-padding masks as in `baselines.mult` (readouts stay at the last step); the
  reconstruction, consistency and orthogonality losses average over valid steps only, and
  padded steps are zeroed before the flattened shared features. The official MOSEI
  orthogonality reshapes d=50 features into chunks of 10 (`num = 10`); we always compare
  whole d-vectors per time step.
- Micro-batches of 16 accumulated 10 times per Adam step (the official `update_epochs`)
  run inside one trainer batch of 160; the hinge loss therefore sees 16 samples, as in the
  official code. The official ReduceLROnPlateau (factor 0.5, patience 5 on the validation L1
  loss of the main head) is `configure_scheduler`; selection is on that loss (KeyEval
  "Loss"), as officially.

Parameters (MOSI unaligned shapes, dims (768, 5, 20), lens (50, 375, 500), binary task,
official MOSI defaults d=50, 10 heads, nlevels 2, kernels 5, no text encoder): 3,566,105.
Table VI of the CIDer paper gives 10,750,808, which is *exactly* the official DLF built
BERT-free at these unaligned MOSI shapes (we instantiated it): it counts 6,939,103
parameters of the unused modules listed above (proj_cosine_* 2,282,650; *_low heads
4,656,453) plus 245,600 of the four unused crossmodal transformers;
10,750,808 - 6,939,103 - 245,600 = 3,566,105, our count. Most of what remains (2,282,650)
is the three flattened-sequence linears `align_c_*` (d x L' -> d) of the margin loss, which
grow with the unaligned lengths; at aligned shapes (lens 50/50/50) the official model has
2,923,308 parameters and ours 1,628,605.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def masked_mse(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid steps of (B, T, D) tensors."""
    w = valid.to(a.dtype).unsqueeze(-1)
    return ((a - b).pow(2) * w).sum() / (w.sum() * a.shape[-1]).clamp_min(1.0)


def orthogonality_loss(s: torch.Tensor, c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps of max(0, cos(s_t, c_t)) (CosineEmbeddingLoss, target -1)."""
    cos = F.cosine_similarity(s, c, dim=-1, eps=1e-8).clamp_min(0.0)
    w = valid.to(cos.dtype)
    return (cos * w).sum() / w.sum().clamp_min(1.0)


def hinge_margin_loss(
    feats: torch.Tensor, ids: torch.Tensor, scale: float = 0.15, chunk: int = 64
) -> torch.Tensor:
    """DLF's geometric margin loss on (N, F) features with labels `ids` (N,).

    For anchor i, every pair (p similar: same label, p != i; q dissimilar) contributes
    relu(scale |y_i - y_q| - cos(i, p) + cos(i, q)); pairs are averaged per anchor, and
    anchors with both kinds of partners are averaged. Anchors run in chunks to bound memory.
    """
    n = feats.shape[0]
    norm = torch.sqrt(feats.pow(2).sum(dim=1) + 1e-8).clamp_min(1e-8)
    unit = feats / norm[:, None]
    cos = unit @ unit.t()
    eye = torch.eye(n, dtype=torch.bool, device=feats.device)
    same = (ids[:, None] == ids[None, :]) & ~eye
    diff = ids[:, None] != ids[None, :]
    margin = scale * (ids[:, None] - ids[None, :]).abs()
    has = same.any(dim=1) & diff.any(dim=1)
    total = feats.sum() * 0.0
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        val = F.relu(margin[sl, None, :] - cos[sl, :, None] + cos[sl, None, :])
        pair = same[sl, :, None] & diff[sl, None, :]
        per_anchor = (val * pair).sum(dim=(1, 2)) / pair.sum(dim=(1, 2)).clamp_min(1)
        total = total + (per_anchor * has[sl]).sum()
    return total / has.sum().clamp_min(1)


@register_model("dlf", "DLF disentangled language-focused MSA (Wang et al. AAAI 2025), regression")
class DLF(BenchModel):
    """DLF: disentangled shared/specific encoders and a language-focused attractor."""

    output = "regression"
    training = "one-to-all"
    paper = (
        "Wang, Zhou, Yang, Wang, Liu. DLF: Disentangled-Language-Focused Multimodal Sentiment "
        "Analysis. AAAI 2025"
    )
    # pwang322/DLF config/config.json, "DLF" -> datasetParams.mosi (attn_mask true,
    # update_epochs 10, early_stop 10); loss weights from trains/singleTask/DLF.py.
    defaults = {
        **MULT_MOSI_BLOCK,
        "d_model": 50,
        "num_heads": 10,
        "layers": 2,
        "micro_batch": 16,
        "w_lang": 3.0,
        "w_aux": 0.1,
        "w_geo": 0.1,
        "margin_scale": 0.15,
        "plateau_factor": 0.5,  # official trains/singleTask/DLF.py
        "plateau_patience": 5,  # official config "patience" (mosi)
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

        def enc(layers: int, attn_dropout: float) -> TransformerEncoder:
            return TransformerEncoder(
                d, h["num_heads"], layers, attn_dropout, h["relu_dropout"], h["res_dropout"],
                h["embed_dropout"], h["causal_mask"],
            )

        n = h["layers"]
        self.proj = nn.ModuleDict(
            {
                m: TemporalProjection(spec.dims[i], d, kernels[i], spec.lens[i], m)
                for i, m in enumerate(MODALITIES)
            }
        )
        out_lens = {m: self.proj[m].out_len for m in MODALITIES}
        # disentanglement
        self.specific = nn.ModuleDict({m: enc(n, drop[m]) for m in MODALITIES})
        self.shared = enc(n, drop["text"])
        self.decoder = nn.ModuleDict({m: nn.Linear(2 * d, d, bias=False) for m in MODALITIES})
        self.align = nn.ModuleDict({m: nn.Linear(d * out_lens[m], d) for m in MODALITIES})
        # shared branch
        self.shared_self = nn.ModuleDict({m: enc(n, drop[m]) for m in MODALITIES})
        self.shared_head = ResidualHead(3 * d, 1, h["output_dropout"])
        # language-focused attractor
        self.lang_with = nn.ModuleDict({m: enc(n, drop[m]) for m in ("audio", "vision")})
        self.mem = nn.ModuleDict(
            {
                "text": enc(n, drop["text"]),
                "audio": enc(max(n, 3), drop["text"]),
                "vision": enc(max(n, 3), drop["text"]),
            }
        )
        self.stream_head = nn.ModuleDict(
            {m: ResidualHead(d, 1, h["output_dropout"]) for m in MODALITIES}
        )
        # fusion
        self.projector = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})
        self.projector_shared = nn.Linear(3 * d, 3 * d)
        self.head = ResidualHead(6 * d, 1, h["output_dropout"])
        self.joint_dim = 6 * d  # read by wrappers such as MACI

    def forward(self, batch: Batch) -> ModelOutput:
        raw = {
            "text": F.dropout(batch.text, self.hparams["text_dropout"], self.training),
            "audio": batch.audio,
            "vision": batch.vision,
        }
        x, valid, s, c, recon, s_r, c_flat = {}, {}, {}, {}, {}, {}, {}
        for m in MODALITIES:
            x[m], valid[m] = self.proj[m](raw[m], getattr(batch, f"valid_{m}"))
            s[m] = self.specific[m](x[m], valid[m])
            c[m] = self.shared(x[m], valid[m])
            recon[m] = self.decoder[m](torch.cat([s[m], c[m]], dim=-1))
            s_r[m] = self.specific[m](recon[m], valid[m])
            keep = valid[m].to(c[m].dtype).unsqueeze(-1)
            c_flat[m] = self.align[m]((c[m] * keep).flatten(1))

        # shared branch
        c_last = torch.cat([self.shared_self[m].last(c[m], valid[m]) for m in MODALITIES], dim=-1)
        _, shared_score = self.shared_head(c_last)

        # language-focused attractor: language attends to the specific audio/vision streams
        vt = valid["text"]
        streams = {"text": self.mem["text"].last(s["text"], vt)}
        for m in ("audio", "vision"):
            h = self.lang_with[m](s["text"], kv=s[m], kv_valid=valid[m])
            streams[m] = self.mem[m].last(h, vt)
        stream_scores, fused = {}, []
        for m in MODALITIES:
            z, stream_scores[m] = self.stream_head[m](streams[m])
            fused.append(torch.sigmoid(self.projector[m](z)))
        fused.append(torch.sigmoid(self.projector_shared(c_last)))
        joint, score = self.head(torch.cat(fused, dim=-1))

        extras = {
            "shared_score": shared_score.squeeze(-1),
            "stream_scores": {m: v.squeeze(-1) for m, v in stream_scores.items()},
            "proj": x, "valid": valid, "specific": s, "shared": c,
            "recon": recon, "specific_re": s_r, "shared_flat": c_flat,
        }
        return ModelOutput(scores=score.squeeze(-1), joint=joint, extras=extras)

    def _terms(
        self, batch: Batch, out: ModelOutput
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(main-head loss, the other heads' losses, auxiliary losses) of the official objective."""
        h = self.hparams
        e, y = out.extras, batch.y_reg

        def l1(p: torch.Tensor) -> torch.Tensor:
            return F.l1_loss(p.view(-1), y)

        heads = [l1(e["shared_score"])]
        for m in MODALITIES:
            heads.append((h["w_lang"] if m == "text" else 1.0) * l1(e["stream_scores"][m]))
        v = e["valid"]
        recon = sum(masked_mse(e["recon"][m], e["proj"][m], v[m]) for m in MODALITIES)
        consist = sum(masked_mse(e["specific"][m], e["specific_re"][m], v[m]) for m in MODALITIES)
        ortho = sum(orthogonality_loss(e["specific"][m], e["shared"][m], v[m]) for m in MODALITIES)
        feats = torch.stack([e["shared_flat"][m] for m in MODALITIES], dim=1).flatten(0, 1)
        geo = hinge_margin_loss(feats, y.repeat_interleave(3), h["margin_scale"])
        aux = h["w_aux"] * (consist + recon + h["w_geo"] * (geo + ortho))
        return l1(out.scores), heads, aux

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Task (all prediction heads) and auxiliary terms; they sum to the total."""
        main, heads, aux = self._terms(batch, self(batch))
        task = main
        for term in heads:
            task = task + term
        return {"task": task, "aux": aux}

    def objective(self, batch: Batch, out: ModelOutput) -> dict[str, torch.Tensor]:
        """For wrappers: the main head's loss as "task"; the shared and per-stream heads join
        the reconstruction, consistency, orthogonality and margin terms in "aux"."""
        main, heads, aux = self._terms(batch, out)
        return {"task": main, "aux": sum(heads[1:], heads[0]) + aux}

    def step_options(self) -> dict[str, float]:
        return {"micro_batch": self.hparams["micro_batch"], "clip_value": self.hparams["grad_clip"]}

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        return accumulated_step(self, corrupted, optimizer, self.losses, **self.step_options())

