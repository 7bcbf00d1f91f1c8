"""GEAR (Sun et al., ACM MM 2023, "General Debiasing for Multimodal Sentiment Analysis"; the
official `IFL_ES` model): inverse-probability-weighted debiasing with disentangled robust and
biased unimodal features.

Per modality two copies of one encoder (text: pooled token features -> Linear 768 -> 32;
audio/vision: LSTM -> Linear -> Linear 32): a robust copy c and a biased copy b. Their 32-d
outputs are combined as z_c = f_c([c; b.detach()]) (the robust feature, fed the detached biased
one) and z_b = f_b([c.detach(); b]) with a 1-output head on z_b. The biased head learns with a
down-weighted L1 (GCE-style: weight w(l) of its own detached error, `gce`), so it fits the easy
(biased) samples. From epoch `swap_epochs` + 1 (1-based, as officially; the epoch index comes
from the harness's `start_epoch` hook) the biased features are permuted across the batch: the
biased head fits the swapped labels and the fusion also scores the robust features built with
the swapped biased ones. Fusion: a 2-layer transformer encoder (4 heads) over the three robust
features, then Linear 96 -> 128 -> 1, trained with per-sample L1 weighted by
w = mean_m(l_b^m) / (mean_m(l_b^m) + l_fusion) (`weight="avg"`: the inverse-probability weight;
samples the biased branches get wrong weigh more). Output: a regression score.

Defaults: the official MOSI/argument defaults (q 1, lambda_dis 15, lambda_swap 1, swap after
epoch 5, batch 32 accumulated twice, Adam groups text encoder 5e-5 / wd 1e-3, audio LSTM 5e-3,
video LSTM 1e-4, other 1e-3 / wd 0.01). The official command-line defaults switch the method
off (`--gce ''`, `--weight ''`); the suite's defaults switch it on as the paper describes
(`gce="tanh"`, `weight="avg"`); `--hp gce='""' --hp weight='""'` gives the official default.

Deviation: with fixed token features the text encoder's input is the masked mean over valid
tokens (`text_pool="mean"`; the official reads BERT's [CLS] output, and a fixed [CLS] feature
would never see dropped words); `text_pool="cls"` reads position 0.

Parameters at MOSI shapes 768/5/20 without BERT: 372,071, Table VI's GEAR row exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mer_bench.data.batch import Batch
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, register_model
from mer_bench.training.steps import accumulated_step

GCE = {
    "": lambda l1, q: torch.zeros_like(l1),
    "tanh": lambda l1, q: torch.tanh((1.0 / l1.clamp(min=1e-12)) ** q),
    "sigmoid": lambda l1, q: 2.0 * torch.sigmoid(-l1),
    "exp": lambda l1, q: torch.exp(-l1 / q),
    "cauchy": lambda l1, q: 1.0 / (1.0 + q * q * l1 * l1),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "gce": tuple(GCE), "weight": ("", "avg", "min"), "text_pool": ("mean", "cls"),
}


class SeqEncoder(nn.Module):
    """Audio/vision: 1-layer LSTM over valid frames, last state -> Linear (the official
    `AuViSubNet`)."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(d_in, hidden, batch_first=True)
        self.linear = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.linear(h[-1])


class Branch(nn.Module):
    """One copy (robust or biased) of a modality's encoder, with its feature layer and head."""

    def __init__(self, encoder: nn.Module | None, d_enc: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.post = nn.Linear(d_enc, dim)
        self.feature = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.final = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        h = x if self.encoder is None else self.encoder(x, lengths)
        return F.relu(self.post(self.drop(h)))


@register_model("gear", "GEAR: robust/biased unimodal features, GCE and inverse-probability weighting")
class GEAR(BenchModel):
    """GEAR: robust/biased unimodal features, GCE and inverse-probability weighting."""

    output = "regression"
    paper = "Sun et al., ACM MM 2023 (GEAR, official IFL_ES)"
    lr = 1e-3
    batch_size = 64  # 32 x 2 accumulated (official update_epochs = 2)
    defaults = {
        "dim": 32, "a_hidden": 16, "v_hidden": 32, "audio_out": 16, "video_out": 32,
        "fusion_dim": 128, "layers": 2, "heads": 4,
        "text_dropout": 0.1, "audio_dropout": 0.1, "video_dropout": 0.0,
        "q": 1.0, "lambda_dis": 15.0, "lambda_swap": 1.0, "swap_epochs": 5,
        "gce": "tanh", "weight": "avg", "text_pool": "mean",
        "lr_encoder": 5e-5, "lr_audio": 5e-3, "lr_video": 1e-4, "lr_other": 1e-3,
        "wd_encoder": 1e-3, "wd_audio": 0.0, "wd_video": 0.0, "wd_other": 0.01,
        "micro_batch": 32,
    }

    @classmethod
    def validate_hparams(cls, hp: Mapping[str, Any]) -> None:
        """What the per-value checks cannot see (choices, q > 0, heads dividing dim); called by
        `validate.check_model_hparams` before any data is loaded, and again at build."""
        for name, allowed in CHOICES.items():
            if hp[name] not in allowed:
                raise UserError(f"--hp {name}={hp[name]!r}: gear's {name} must be one of "
                                + ", ".join(repr(a) for a in allowed))
        if not float(hp["q"]) > 0:
            raise UserError(f"--hp q={hp['q']}: gear's GCE exponent q must be > 0")
        if int(hp["dim"]) % int(hp["heads"]):
            raise UserError(f"--hp heads={hp['heads']} must divide gear's dim={hp['dim']}")

    def __init__(self, spec: Any, task: str, **hp: Any) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        self.validate_hparams(h)
        d_t, d_a, d_v = spec.dims
        dim = int(h["dim"])

        def pair(make):
            return nn.ModuleDict({"c": make(), "b": make()})

        self.text = pair(lambda: Branch(None, d_t, dim, float(h["text_dropout"])))
        self.audio = pair(lambda: Branch(SeqEncoder(d_a, int(h["a_hidden"]), int(h["audio_out"])),
                                         int(h["audio_out"]), dim, float(h["audio_dropout"])))
        self.vision = pair(lambda: Branch(SeqEncoder(d_v, int(h["v_hidden"]), int(h["video_out"])),
                                          int(h["video_out"]), dim, float(h["video_dropout"])))
        layer = nn.TransformerEncoderLayer(dim, int(h["heads"]), batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, int(h["layers"]), enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(3 * dim, int(h["fusion_dim"])), nn.Dropout(0.1), nn.ReLU(),
                                  nn.Linear(int(h["fusion_dim"]), 1))
        self.joint_dim = 3 * dim

    # --- pieces ------------------------------------------------------------------------
    def _text_input(self, batch: Batch) -> torch.Tensor:
        if self.hparams["text_pool"] == "cls":
            return batch.text[:, 0]
        valid = batch.valid_text.unsqueeze(-1).to(batch.text.dtype)
        return (batch.text * valid).sum(1) / valid.sum(1).clamp(min=1.0)

    def _inputs(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        return {"text": (self._text_input(batch), None), "audio": (batch.audio, batch.audio_len),
                "vision": (batch.vision, batch.vision_len)}

    def _encode(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality the robust and biased 32-d encodings (c, b)."""
        return {m: (getattr(self, m)["c"](x, n), getattr(self, m)["b"](x, n))
                for m, (x, n) in self._inputs(batch).items()}

    def _fuse(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fusion(torch.stack(feats, dim=1)).flatten(1)
        return self.head(h).squeeze(-1), h

    def _bias_weight(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        l1 = (pred.detach() - y).abs()
        return GCE[self.hparams["gce"]](l1, float(self.hparams["q"]))

    def swapping(self) -> bool:
        """Official `epoch > swap_epochs` with a 1-based epoch; `self.epoch` is 0-based."""
        return getattr(self, "epoch", 0) + 1 > int(self.hparams["swap_epochs"])

    # --- forward / training ------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        enc = self._encode(batch)
        robust = [getattr(self, m)["c"].feature(torch.cat([c, b.detach()], -1)) for m, (c, b) in enc.items()]
        score, joint = self._fuse(robust)
        return ModelOutput(scores=score, joint=joint)

    def objective(self, batch: Batch, out: ModelOutput | None = None) -> dict[str, torch.Tensor]:
        y = batch.y_reg
        h = self.hparams
        lam_dis, lam_swap = float(h["lambda_dis"]), float(h["lambda_swap"])
        swap = self.swapping()
        perm = torch.randperm(len(y), device=y.device) if swap else None
        enc = self._encode(batch)
        robust, robust_swap, gce, bias_l1 = [], [], [], []
        for m, (c, b) in enc.items():
            br = getattr(self, m)
            robust.append(br["c"].feature(torch.cat([c, b.detach()], -1)))
            pred_b = br["b"].final(br["b"].feature(torch.cat([c.detach(), b], -1))).squeeze(-1)
            bias_l1.append((pred_b - y).abs().detach())
            loss = lam_dis * (self._bias_weight(pred_b, y) * (pred_b - y).abs()).mean()
            if swap:
                b_s = b[perm]
                robust_swap.append(br["c"].feature(torch.cat([c, b_s.detach()], -1)))
                pred_s = br["b"].final(br["b"].feature(torch.cat([c.detach(), b_s], -1))).squeeze(-1)
                y_s = y[perm]
                loss = loss + lam_swap * lam_dis * (self._bias_weight(pred_s, y_s) * (pred_s - y_s).abs()).mean()
            gce.append(loss)
        score, _ = self._fuse(robust)
        fusion_l1 = (score - y).abs()
        if swap:
            fusion_l1 = fusion_l1 + lam_swap * (self._fuse(robust_swap)[0] - y).abs()
        weight = torch.ones_like(fusion_l1)
        if h["weight"] == "avg":
            ref = torch.stack(bias_l1).mean(0)
            weight = ref / (ref + fusion_l1.detach() + 1e-8)
        elif h["weight"] == "min":
            ref = torch.stack(bias_l1).min(0).values
            weight = ref / (ref + fusion_l1.detach() + 1e-8)
        return {"task": (fusion_l1 * weight).mean(), "gce_text": gce[0], "gce_audio": gce[1],
                "gce_vision": gce[2]}

    def step_options(self) -> dict[str, float]:
        return {"micro_batch": int(self.hparams["micro_batch"])}

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        return accumulated_step(self, corrupted, optimizer, lambda b: self.objective(b), **self.step_options())

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """Four Adam groups: text encoder, audio LSTMs, video LSTMs, everything else."""
        h = self.hparams
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "audio": [], "video": [], "other": []}
        for name, p in self.named_parameters():
            if name.startswith("text_encoder."):
                groups["encoder"].append(p)
            elif name.startswith("audio.") and ".encoder." in name:
                groups["audio"].append(p)
            elif name.startswith("vision.") and ".encoder." in name:
                groups["video"].append(p)
            else:
                groups["other"].append(p)
        return torch.optim.Adam([
            {"params": ps, "lr": float(h[f"lr_{k}"]), "weight_decay": float(h[f"wd_{k}"])}
            for k, ps in groups.items() if ps
        ])
