"""LF-DNN late fusion (MMSA's `LF_DNN`): the reference floor and the reference curve for
effective robustness.

As MMSA (models/singleTask/LF_DNN.py, subNets/FeatureNets.py, config_regression.json
"lf_dnn" -> mosi): text is an LSTM (hidden 128) whose state goes through dropout and a
linear layer to 256; audio and vision are time-averaged, then BatchNorm, dropout and a
three-layer ReLU MLP (hidden 16 and 128); the concatenation goes through dropout and a
two-layer ReLU MLP of width 128 to one regression output (L1 loss). Adam, lr 1e-3, weight
decay 0.01, batch 128, early stop 8, selection on the validation L1 loss (`KeyEval: "Loss"`).

Deviations, and why:
- The text state is the LSTM's last *valid* step; MMSA takes the final state of the padded
  sequence (no packing), which for short utterances has run over padding.
- Audio and vision are averaged over valid frames only (MMSA's `need_normalized` averages
  over every frame, padding included), so a missing frame does not shift the mean towards 0
  differently from padding.
- One dropout value for the four MMSA dropouts (all 0.2 for MOSI).
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
    """MMSA's SubNet: BatchNorm, dropout, three ReLU linear layers."""

    def __init__(self, d_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_in)
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
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
        "hidden_text": 128,
        "hidden_audio": 16,
        "hidden_vision": 128,
        "text_out": 256,
        "post_fusion_dim": 128,
        "dropout": 0.2,
        "weight_decay": 0.01,
    }
    lr = 1e-3
    batch_size = 128
    patience = 8  # MMSA early_stop

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        dt, da, dv = spec.dims
        self.text_rnn = nn.LSTM(dt, h["hidden_text"], batch_first=True)
        self.text_drop = nn.Dropout(h["dropout"])
        self.text_out = nn.Linear(h["hidden_text"], h["text_out"])
        self.audio_net = _SubNet(da, h["hidden_audio"], h["dropout"])
        self.vision_net = _SubNet(dv, h["hidden_vision"], h["dropout"])
        fused = h["text_out"] + h["hidden_audio"] + h["hidden_vision"]
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
        t = self.text_out(self.text_drop(seq.gather(1, last).squeeze(1)))
        a = self.audio_net(masked_mean(batch.audio, batch.valid_audio))
        v = self.vision_net(masked_mean(batch.vision, batch.valid_vision))
        joint = self.post(torch.cat([t, a, v], dim=-1))
        return ModelOutput(scores=self.head(joint).squeeze(-1), joint=joint)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """MMSA's Adam with weight decay (0.01 for MOSI)."""
        return torch.optim.Adam(
            self.parameters(), lr=self.lr, weight_decay=self.hparams["weight_decay"]
        )
