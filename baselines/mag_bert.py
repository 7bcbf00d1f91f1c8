"""MAG-BERT (Rahman et al., ACL 2020, "Integrating Multimodal Information in Large Pretrained
Transformers"), the base model of CLUE's paper row (`mag_bert+clue`).

The Multimodal Adaptation Gate shifts each text token's state h by a displacement built from
the token-aligned audio a and vision v:
    g_v = relu(W_hv [v; h]),  g_a = relu(W_ha [a; h]),  H = g_v * W_v v + g_a * W_a a
    h'  = dropout(LayerNorm(h + min(beta ||h|| / ||H||, 1) H))
(`||H|| = 0` counts as 1, as officially). The official model gates BERT's embedding output and
runs the BERT encoder, pooler (Linear + tanh on [CLS]), dropout and a linear classifier (CLUE's
version: K logits, cross-entropy).

Which text states are gated is recorded in `hparams["gate_input"]`:
- fixed features (the default here): the gate acts on the dataset's token features, and the
  pooler reads their masked mean over valid tokens (a fixed [CLS] feature would never see
  dropped words); there is no encoder to run after the gate;
- `batch.text_layers` (hidden states of a text encoder in the loop, when the harness provides
  them): the gate acts on layer `mag_layer` of them (default -1, the last: the layers after it
  are not re-run from here).

Unaligned data: audio and vision are average-pooled onto the text length
(`adaptive_avg_pool1d`), which MAG needs (it is word-aligned by design); recorded as
`hparams["alignment"]`. Defaults: beta_shift 1, dropout 0.3 (CLUE's MAG-BERT config). The
official lr 1e-5 fine-tunes BERT; with fixed features every parameter here is new, so the
default lr is 1e-3.
Output: the suite's classification scores (3 columns for binary, 7 for seven).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mer_bench.data.batch import Batch
from mer_bench.models import BenchModel, ModelOutput, register_model


class MAG(nn.Module):
    """The Multimodal Adaptation Gate on (B, L, D_t) text states."""

    def __init__(self, d_t: int, d_a: int, d_v: int, beta: float, dropout: float) -> None:
        super().__init__()
        self.w_hv = nn.Linear(d_v + d_t, d_t)
        self.w_ha = nn.Linear(d_a + d_t, d_t)
        self.w_v = nn.Linear(d_v, d_t)
        self.w_a = nn.Linear(d_a, d_t)
        self.norm = nn.LayerNorm(d_t)
        self.drop = nn.Dropout(dropout)
        self.beta = beta

    def forward(self, h: torch.Tensor, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g_v = F.relu(self.w_hv(torch.cat([v, h], dim=-1)))
        g_a = F.relu(self.w_ha(torch.cat([a, h], dim=-1)))
        shift = g_v * self.w_v(v) + g_a * self.w_a(a)
        hm = shift.norm(dim=-1)
        hm = torch.where(hm == 0, torch.ones_like(hm), hm)
        alpha = torch.clamp(h.norm(dim=-1) / (hm + 1e-6) * self.beta, max=1.0).unsqueeze(-1)
        return self.drop(self.norm(h + alpha * shift))


def align_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, D) -> (B, length, D) by adaptive average pooling over time (identity if equal)."""
    if x.shape[1] == length:
        return x
    return F.adaptive_avg_pool1d(x.transpose(1, 2), length).transpose(1, 2)


@register_model("mag_bert", "MAG-BERT: multimodal adaptation gate on text token states (CLUE's base)")
class MAGBert(BenchModel):
    """MAG-BERT: multimodal adaptation gate on text token states (CLUE's base)."""

    output = "classification"
    paper = "Rahman et al., ACL 2020 (MAG-BERT); CLUE's base model"
    lr = 1e-3
    batch_size = 16  # CLUE's MOSI batch
    defaults = {"beta_shift": 1.0, "dropout": 0.3, "mag_layer": -1}

    def __init__(self, spec: Any, task: str, **hp: Any) -> None:
        super().__init__(spec, task, **hp)
        d_t, d_a, d_v = spec.dims
        h = self.hparams
        self.mag = MAG(d_t, d_a, d_v, float(h["beta_shift"]), float(h["dropout"]))
        self.pooler = nn.Linear(d_t, d_t)
        self.drop = nn.Dropout(float(h["dropout"]))
        self.classifier = nn.Linear(d_t, self.n_classes)
        self.joint_dim = d_t
        aligned = len(set(spec.lens)) == 1
        self.hparams["alignment"] = "as given (aligned)" if aligned else "adaptive average pooling to text length"
        self.hparams["gate_input"] = "fixed token features (no text encoder in the loop)"

    def _text_states(self, batch: Batch) -> torch.Tensor:
        layers = getattr(batch, "text_layers", None)
        if layers is None:
            return batch.text
        self.hparams["gate_input"] = f"text encoder hidden states, layer {self.hparams['mag_layer']}"
        return layers[int(self.hparams["mag_layer"])]

    def forward(self, batch: Batch) -> ModelOutput:
        h = self._text_states(batch)
        length = h.shape[1]
        fused = self.mag(h, align_to(batch.audio, length), align_to(batch.vision, length))
        valid = batch.valid_text[:, :length].unsqueeze(-1).to(fused.dtype)
        pooled = (fused * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        joint = torch.tanh(self.pooler(pooled))
        logits = self.classifier(self.drop(joint))
        return ModelOutput(scores=F.log_softmax(logits, dim=-1), joint=joint)
