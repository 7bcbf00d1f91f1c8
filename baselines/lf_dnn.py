"""LF-DNN late fusion (MMSA's `LF_DNN`): the reference floor and the reference curve for
effective robustness.

Text: an LSTM over token features, last valid hidden state; audio and vision: masked mean
over valid frames, BatchNorm and a two-layer MLP; the three vectors are concatenated and a
small MLP regresses the sentiment score (MMSA's regression head, L1 loss).
Simplification: none in structure; hidden sizes follow MMSA's MOSI defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from mer_bench.data.batch import Batch
from mer_bench.models import BenchModel, ModelOutput, register_model


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid time steps (B, T, D) -> (B, D); all-padding rows give zeros."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class _SubNet(nn.Module):
    def __init__(self, d_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_in)
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


@register_model("lf_dnn", "LF-DNN late fusion (MMSA); reference floor, regression head")
class LFDNN(BenchModel):
    """LF-DNN late fusion (MMSA); the reference floor."""

    output = "regression"
    paper = "Williams et al. 2018, late-fusion DNN as implemented in MMSA (LF_DNN)"
    defaults = {
        "hidden_text": 64,
        "hidden_audio": 16,
        "hidden_vision": 32,
        "post_fusion_dim": 32,
        "dropout": 0.2,
    }

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        dt, da, dv = spec.dims
        self.text_rnn = nn.LSTM(dt, h["hidden_text"], batch_first=True)
        self.text_out = nn.Linear(h["hidden_text"], h["hidden_text"])
        self.audio_net = _SubNet(da, h["hidden_audio"], h["dropout"])
        self.vision_net = _SubNet(dv, h["hidden_vision"], h["dropout"])
        fused = h["hidden_text"] + h["hidden_audio"] + h["hidden_vision"]
        self.post = nn.Sequential(
            nn.Dropout(h["dropout"]),
            nn.Linear(fused, h["post_fusion_dim"]),
            nn.ReLU(),
            nn.Linear(h["post_fusion_dim"], h["post_fusion_dim"]),
            nn.ReLU(),
        )
        self.head = nn.Linear(h["post_fusion_dim"], 1)

    def forward(self, batch: Batch) -> ModelOutput:
        seq, _ = self.text_rnn(batch.text)
        last = (batch.text_len.clamp_min(1) - 1).view(-1, 1, 1).expand(-1, 1, seq.shape[-1])
        t = self.text_out(seq.gather(1, last).squeeze(1))
        a = self.audio_net(masked_mean(batch.audio, batch.valid_audio))
        v = self.vision_net(masked_mean(batch.vision, batch.valid_vision))
        joint = self.post(torch.cat([t, a, v], dim=-1))
        return ModelOutput(scores=self.head(joint).squeeze(-1), joint=joint)
