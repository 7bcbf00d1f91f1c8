"""EMT-DLFR: Efficient Multimodal Transformer with Dual-Level Feature Restoration.

Paper: L. Sun, Z. Lian, B. Liu, J. Tao, "Efficient Multimodal Transformer with Dual-Level
Feature Restoration for Robust Multimodal Sentiment Analysis", IEEE Transactions on Affective
Computing, 2023 (official code: sunlicai/EMT-DLFR).

Model. Each modality gives an utterance vector and a sequence of local features (text: the
[CLS] feature and the word-token features; audio/vision: a one-layer LSTM's last state and
its per-frame outputs). The three utterance vectors, projected to `d_model`, are the global
multimodal context (GMC) tokens. Each EMT layer runs a mutual promotion unit (MPU: cross-
attention, self-attention, GEGLU feed-forward, pre-LN) in both directions for every modality
(local features <- GMC tokens, GMC tokens <- local features); the three updated copies of the
GMC tokens are merged by attention pooling. With the official MOSI setting one MPU and one
pooling layer are shared by both directions, all modalities and all layers. The regression
head (three-layer MLP, L1 loss) reads the utterance vectors and the GMC tokens.

Dual-level feature restoration, in `train_step` (both views are needed, so the harness's
clean batch and its corrupted twin are both used):
- low level: linear decoders map the incomplete view's fused local features back to the
  input space; SmoothL1 on dropped valid positions only, normalised by their count times the
  feature size (text target: the complete view's token features; audio/vision: raw frames);
- high level: SimSiam attraction (projector + predictor, stop-gradient, symmetric negative
  cosine) between the complete and incomplete views' GMC tokens and utterance vectors.
Total loss = L1(incomplete) + w_attra * (attraction + L1(complete)) + w_recon * recon, the
official grouping (the complete view's L1 sits inside the attraction term), weights 1 and 1.
Gradients are accumulated over `update_epochs` = 4 batches of 32 as the official trainer
does; a partial group at the end of an epoch is discarded, as there.

Text input. By default the fixed pre-extracted BERT token features (`batch.text`): the
utterance vector is the [CLS] feature (position 0) and the local features are the word tokens
between [CLS] and [SEP] (official lengths exclude both). With fixed features the [CLS] vector
was computed from the complete sentence and is never dropped, so text is less hurt by missing
tokens than in the paper (recorded by the harness as `text_missing=zero-feature`). Without
token ids (no specials) the utterance vector is the masked mean of the token features and all
valid tokens are local features. With `--text-encoder` (`mer_bench/textpath.py`) the harness
fine-tunes a BERT-family encoder in the loop as officially: `batch_entries = ("losses",)` makes
both views of `losses` (complete and incomplete) the encoder's states of their own ids
([UNK] for dropped tokens); the text reconstruction target is the complete view's states,
detached as officially (`text_for_recon`). Encoder optimisation is the official MOSI one
(config_regression.py, `learning_rate_bert` 5e-5, `weight_decay_bert` 1e-3, no decay on
biases and LayerNorm weights; MOSEI uses 2e-5), inside the model's Adam.

Simplified, and why:
- Fixed sinusoidal positions only (the official default; the learnable option is omitted).
- The official per-group optimiser (audio/video/other learning rates and weight decays) is
  kept; the BERT groups exist only with `--text-encoder` (added by the harness). Selection (the harness's, on validation) follows the
  official total validation loss (`selection_loss`: every term, both views being the
  validation batch; at a one-to-one training rate the complete view is not shown to
  selection, so the restoration term compares with the incomplete input).
- Registered twice: `emt_dlfr` trains one model per missing rate (the paper's one-to-one
  protocol); `emt_dlfr_all` is the same model trained once for all rates (one-to-all).
- On CPU the official attention dropout (0.3) forces PyTorch's unfused attention path over the
  500-frame sequences: a training step at MOSI shapes (B=32, one thread) takes about twice as
  long as with `attn_dropout=0`.
- Defaults are the official MOSI configuration. For MOSEI the official values differ:
  a/v LSTM hidden 16/32, fusion_layers 2, attn/ff/post dropout 0, post_fusion_dim 128,
  batch 16, lr_audio = lr_video = lr_other = 1e-4, weight decays 1e-3; pass them as hparams.

Parameter count (MOSI unaligned shapes, DataSpec(dims=(768, 5, 20), lens=(50, 375, 500)),
binary task, default hparams, no text encoder): 2,322,779, equal to the paper's Table VI
(2,322,779, which subtracts BERT-base). The count covers the training-only parts too
(projectors 739,760, predictors 494,816, reconstruction decoders 102,297); the inference
path alone has 985,906. The match needs the official sharing flags: the whole EMT is one
MPU plus one pooling layer (478,337); with no sharing (18 MPUs, 3 pools) the model would have
8,231,133. BERT-base itself (109,482,240 with its pooler) is what Table VI subtracts, and no
text encoder exists here, so nothing else differs. It is independent of sequence lengths and of the task (one
regression output); with the MOSEI setting above (dims 768/74/35) it is 2,115,583.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from baselines.common import (
    MultiHeadAttention,
    SafeBatchNorm1d,
    dropout_rows,
    live_length,
    masked_mean,
    sinusoidal_positions,
)
from mer_bench.data.batch import Batch
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, register_model


class _SeqEncoder(nn.Module):
    """LSTM over valid frames: per-frame outputs and the last state, both through one linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(
            d_in,
            hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, d_out) if hidden != d_out else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.shape[1]
        # An empty sequence (length 0) is read as one zero frame so packing never fails.
        lens = lengths.clamp(1, total).cpu()
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        seq, (h, _) = self.rnn(packed)
        seq, _ = pad_packed_sequence(seq, batch_first=True, total_length=total)
        return self.out(seq), self.out(self.drop(h[-1]))


class _GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, dim * mult * 2)
        self.out = nn.Linear(dim * mult, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """`rows`: x leads a sequence that long (its dropout draws are that sequence's)."""
        h, gate = self.inp(x).chunk(2, dim=-1)
        return dropout_rows(self.out(h * F.gelu(gate)), self.drop.p, self.training, rows)


class _MPU(nn.Module):
    """Half a mutual promotion unit: target <- cross-attention to a source, then
    self-attention and a GEGLU feed-forward, all pre-LN with residuals."""

    def __init__(self, dim: int, heads: int, mult: int, attn_dropout: float, ff_dropout: float):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_src = nn.LayerNorm(dim)
        self.cross = MultiHeadAttention(dim, heads, dropout=attn_dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout=attn_dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = _GEGLUFeedForward(dim, mult, ff_dropout)

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor,
        x_valid: torch.Tensor | None,
        source_valid: torch.Tensor | None,
        x_len: int | None = None,
        source_len: int | None = None,
    ) -> torch.Tensor:
        """`x_len` / `source_len`: x / source lead sequences that long (the batch's all-padding
        tail was dropped, `EMTFusion`); every dropout draws as for the whole sequences."""
        xl, sl = x_len or x.shape[1], source_len or source.shape[1]
        x = x + self.cross(self.norm_x(x), self.norm_src(source), source_valid, draw_len=(xl, sl))
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, x_valid, draw_len=(xl, xl))
        return x + self.ff(self.norm_ff(x), xl)


class _AttentionPool(nn.Module):
    """Weighted sum over a small set of vectors, weights from a two-layer scorer."""

    def __init__(self, dim: int, act: str) -> None:
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
        if act not in acts:
            raise UserError(f"emt_dlfr: attn_act_fn must be one of {sorted(acts)}, got {act!r}")
        self.score = nn.Sequential(nn.Linear(dim, dim), acts[act](), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, D) -> (B, D)
        w = torch.softmax(self.score(x), dim=1)
        return (w * x).sum(dim=1)


class EMTFusion(nn.Module):
    """The Efficient Multimodal Transformer: GMC tokens <-> local unimodal features.

    Sharing flags follow the official code: `mpu_share` (both directions), `modality_share`
    (all modalities), `layer_share` (all layers, pooling included).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        n_modalities: int,
        attn_dropout: float,
        ff_dropout: float,
        ff_expansion: int,
        emb_dropout: float,
        mpu_share: bool,
        modality_share: bool,
        layer_share: bool,
        attn_act_fn: str,
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.n_mod = dim, depth, n_modalities
        self.emb_drop = nn.Dropout(emb_dropout)
        self.mpus = nn.ModuleDict()
        self._mpu_key: dict[tuple[int, int, int], str] = {}
        for layer in range(depth):
            for m in range(n_modalities):
                for direction in range(2):
                    key = (
                        0 if layer_share else layer,
                        0 if modality_share else m,
                        0 if mpu_share else direction,
                    )
                    name = "_".join(map(str, key))
                    if name not in self.mpus:
                        self.mpus[name] = _MPU(dim, heads, ff_expansion, attn_dropout, ff_dropout)
                    self._mpu_key[(layer, m, direction)] = name
        n_pools = 1 if layer_share else depth
        self.pools = nn.ModuleList(
            _AttentionPool(n_modalities * dim, attn_act_fn) for _ in range(n_pools)
        )

    def forward(
        self, gmc: torch.Tensor, local: list[torch.Tensor], valid: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """gmc (B, M, D); local[m] (B, T_m, D) with valid[m] (B, T_m) -> gmc (B, M*D) and
        local, each local[m] cut after its last step valid in some sample (`trim`)."""
        b = gmc.shape[0]
        local = [
            self.emb_drop(x + sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype))
            for x in local
        ]
        full = [x.shape[1] for x in local]
        local, valid = zip(*(self.trim(x, v, m) for m, (x, v) in enumerate(zip(local, valid))))
        local = list(local)
        for layer in range(self.depth):
            updated = []
            for m, x in enumerate(local):
                to_local = self.mpus[self._mpu_key[(layer, m, 0)]]
                to_gmc = self.mpus[self._mpu_key[(layer, m, 1)]]
                # GMC <- local (old x), then local <- GMC
                updated.append(to_gmc(gmc, x, None, valid[m], source_len=full[m]))
                local[m] = to_local(x, gmc, valid[m], None, x_len=full[m])
            pool = self.pools[0 if len(self.pools) == 1 else layer]
            gmc = pool(torch.stack(updated, dim=1).reshape(b, len(local), -1)).view(
                b, self.n_mod, -1
            )
        return gmc.reshape(b, -1), local

    def trim(self, x: torch.Tensor, valid: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio and vision without the batch's all-padding tail. Why: those steps are masked
        keys for every query, their outputs reach no loss (the restoration loss counts dropped
        valid steps only), and the dropouts draw as for the whole sequence
        (`common.dropout_rows`, `draw_len`), so the rest is the same computation, on the same
        draws (tested); on the embedded data a median sequence fills a fifth of its steps.
        Text is kept whole (its restoration mask is not tied to its valid mask)."""
        if m == 0:
            return x, valid
        n = live_length(valid)
        return x[:, :n], valid[:, :n]


def _projector(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), SafeBatchNorm1d(dim, affine=False))


def _predictor(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        SafeBatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, dim),
    )


def _masked_recon(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """Summed elementwise loss over masked positions / (masked positions x feature size)."""
    fn = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "mse": F.mse_loss}[kind]
    m = mask.to(pred.dtype).unsqueeze(-1)
    total = fn(pred * m, target * m, reduction="sum")
    return total / (m.sum() * pred.shape[-1] + 1e-6)


def _simsiam(p: torch.Tensor, z_other: torch.Tensor) -> torch.Tensor:
    return -F.cosine_similarity(p, z_other.detach(), dim=1).mean()


MODALITIES = ("text", "audio", "vision")


@register_model(
    "emt_dlfr",
    "EMT-DLFR (Sun et al., TAC 2023): efficient multimodal transformer + dual-level feature "
    "restoration; one model per missing rate",
)
class EMTDLFR(BenchModel):
    """EMT-DLFR, trained one-to-one (one model per missing rate) as its paper."""

    output = "regression"
    training = "one-to-one"
    paper = (
        "L. Sun, Z. Lian, B. Liu, J. Tao. Efficient Multimodal Transformer with Dual-Level "
        "Feature Restoration for Robust Multimodal Sentiment Analysis. IEEE TAC, 2023"
    )
    # Official MOSI values (config/config_regression.py, __EMT_DLFR, datasetParas['mosi']).
    defaults: dict[str, Any] = {
        # audio/vision LSTM sub-networks
        "a_lstm_hidden_size": 32,
        "v_lstm_hidden_size": 64,
        "a_lstm_layers": 1,
        "v_lstm_layers": 1,
        "audio_out": 16,
        "video_out": 32,
        "a_lstm_dropout": 0.0,
        "v_lstm_dropout": 0.0,
        # EMT fusion
        "d_model": 128,
        "fusion_layers": 3,
        "heads": 4,
        "emb_dropout": 0.0,
        "attn_dropout": 0.3,
        "ff_dropout": 0.1,
        "ff_expansion": 4,
        "mpu_share": True,
        "modality_share": True,
        "layer_share": True,
        "attn_act_fn": "tanh",
        # SimSiam predictor widths
        "gmc_tokens_pred_dim": 128,
        "text_pred_dim": 256,
        "audio_pred_dim": 8,
        "video_pred_dim": 16,
        # losses ('SmoothL1Loss' officially)
        "recon_loss": "smooth_l1",
        "loss_attra_weight": 1.0,
        "loss_recon_weight": 1.0,
        # regression head
        "post_fusion_dim": 256,
        "post_fusion_dropout": 0.3,
        # optimiser (Adam param groups) and gradient accumulation ('update_epochs')
        "lr_audio": 1e-3,
        "lr_video": 1e-4,
        "lr_other": 1e-3,
        "weight_decay_audio": 0.01,
        "weight_decay_video": 0.001,
        "weight_decay_other": 0.001,
        "update_epochs": 4,
        # "cls" (official: BERT [CLS]) or "mean" (masked mean of the token features)
        "text_utterance": "cls",
    }
    lr = 1e-3  # lr_other; configure_optimizer builds the official per-group optimiser
    batch_size = 32  # official MOSI batch; x update_epochs = 128 samples per update
    max_epochs = 200  # official: no cap, early stop only
    patience = 8  # official 'early_stop'
    # official MOSI BERT fine-tuning (learning_rate_bert, weight_decay_bert), used by --text-encoder
    text_lr = 5e-5
    text_weight_decay = 1e-3
    # both views are encoded inside `losses`: the text path encodes its batches there too
    batch_entries = ("losses",)

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        if h["text_utterance"] not in ("cls", "mean"):
            raise UserError(
                f"emt_dlfr: text_utterance must be 'cls' or 'mean', got {h['text_utterance']!r}"
            )
        if h["recon_loss"] not in ("smooth_l1", "l1", "mse"):
            raise UserError(
                f"emt_dlfr: recon_loss must be smooth_l1, l1 or mse, got {h['recon_loss']!r}"
            )
        if h["d_model"] % h["heads"]:
            raise UserError("emt_dlfr: d_model must be divisible by heads")
        dt, da, dv = spec.dims
        d = h["d_model"]
        self.use_cls = spec.has_text_ids and h["text_utterance"] == "cls"
        self.audio_model = _SeqEncoder(
            da, h["a_lstm_hidden_size"], h["audio_out"], h["a_lstm_layers"], h["a_lstm_dropout"]
        )
        self.video_model = _SeqEncoder(
            dv, h["v_lstm_hidden_size"], h["video_out"], h["v_lstm_layers"], h["v_lstm_dropout"]
        )
        outs = (dt, h["audio_out"], h["video_out"])
        self.proj = nn.ModuleList(
            nn.Linear(o, d, bias=False) if o != d else nn.Identity() for o in outs
        )
        self.fusion = EMTFusion(
            d,
            h["fusion_layers"],
            h["heads"],
            3,
            h["attn_dropout"],
            h["ff_dropout"],
            h["ff_expansion"],
            h["emb_dropout"],
            h["mpu_share"],
            h["modality_share"],
            h["layer_share"],
            h["attn_act_fn"],
        )
        gmc_dim = 3 * d
        # High-level restoration (training only): SimSiam projectors and predictors.
        self.projectors = nn.ModuleDict(
            {"gmc": _projector(gmc_dim)} | {m: _projector(o) for m, o in zip(MODALITIES, outs)}
        )
        pred_dims = (h["text_pred_dim"], h["audio_pred_dim"], h["video_pred_dim"])
        self.predictors = nn.ModuleDict(
            {"gmc": _predictor(gmc_dim, h["gmc_tokens_pred_dim"])}
            | {m: _predictor(o, p) for m, o, p in zip(MODALITIES, outs, pred_dims)}
        )
        # Low-level restoration (training only): decoders back to the input features.
        self.recon = nn.ModuleList(nn.Linear(d, dim) for dim in spec.dims)
        self.post = nn.Sequential(
            nn.Dropout(h["post_fusion_dropout"]),
            nn.Linear(sum(outs) + gmc_dim, h["post_fusion_dim"]),
            nn.ReLU(),
            nn.Linear(h["post_fusion_dim"], h["post_fusion_dim"]),
            nn.ReLU(),
        )
        self.head = nn.Linear(h["post_fusion_dim"], 1)
        self._accumulated = 0

    # --- encoding -----------------------------------------------------------------------
    def _text(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Utterance vector, local token features and their valid mask."""
        if self.use_cls:
            tokens = batch.text[:, 1:]
            # word tokens: positions 1 .. len-2 ([CLS] at 0 and [SEP] at len-1 excluded)
            valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < (
                batch.text_len[:, None] - 2
            )
            return batch.text[:, 0], tokens, valid
        return masked_mean(batch.text, batch.valid_text), batch.text, batch.valid_text

    def _encode(self, batch: Batch) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        utt_t, tokens, valid_t = self._text(batch)
        seq_a, utt_a = self.audio_model(batch.audio, batch.audio_len)
        seq_v, utt_v = self.video_model(batch.vision, batch.vision_len)
        utts = [utt_t, utt_a, utt_v]
        gmc = torch.stack([p(u) for p, u in zip(self.proj, utts)], dim=1)
        local = [p(x) for p, x in zip(self.proj, (tokens, seq_a, seq_v))]
        valid = [valid_t, batch.valid_audio, batch.valid_vision]
        gmc, local = self.fusion(gmc, local, valid)
        joint = self.post(torch.cat([*utts, gmc], dim=-1))
        return {
            "pred": self.head(joint).squeeze(-1),
            "joint": joint,
            "gmc": gmc,
            "text": utt_t,
            "audio": utt_a,
            "vision": utt_v,
            "local": local,
        }

    def forward(self, batch: Batch) -> ModelOutput:
        enc = self._encode(batch)
        return ModelOutput(scores=enc["pred"], joint=enc["joint"])

    def selection_loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """The official total loss on a validation batch (both views are that batch)."""
        return sum(self.losses(batch, batch).values())

    # --- training -----------------------------------------------------------------------
    def losses(self, clean: Batch, corrupted: Batch) -> dict[str, torch.Tensor]:
        """Weighted loss terms (they sum to the training loss)."""
        h = self.hparams
        full, miss = self._encode(clean), self._encode(corrupted)
        y = clean.y_reg
        attra = F.l1_loss(full["pred"], y)  # complete-view task loss, grouped as officially
        for key in ("gmc", *MODALITIES):
            proj, pred = self.projectors[key], self.predictors[key]
            z_full, z_miss = proj(full[key]), proj(miss[key])
            attra = attra + 0.5 * (_simsiam(pred(z_miss), z_full) + _simsiam(pred(z_full), z_miss))
        # Low level: restore the dropped valid positions from the incomplete view.
        clean_tokens = self._text(clean)[1].detach()  # official stop-gradient on the target
        missing_t = corrupted.missing_text[:, 1:] if self.use_cls else corrupted.missing_text
        targets = (clean_tokens, clean.audio, clean.vision)
        masks = (missing_t, corrupted.missing_audio, corrupted.missing_vision)
        recon = sum(  # local steps may end early (`EMTFusion.trim`): no dropped step is cut
            _masked_recon(dec(x), tgt[:, : x.shape[1]], mask[:, : x.shape[1]], h["recon_loss"])
            for dec, x, tgt, mask in zip(self.recon, miss["local"], targets, masks)
        )
        return {
            "pred_m": F.l1_loss(miss["pred"], y),
            "attra": h["loss_attra_weight"] * attra,
            "recon": h["loss_recon_weight"] * recon,
        }

    def train(self, mode: bool = True) -> EMTDLFR:
        # A new epoch starts with model.train(): drop a partial accumulation group, as the
        # official trainer (which zeroes gradients at the start of every epoch).
        if mode and not self.training:
            self._accumulated = 0
        return super().train(mode)

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        every = max(int(self.hparams["update_epochs"]), 1)
        if self._accumulated == 0:
            optimizer.zero_grad(set_to_none=True)
        terms = self.losses(clean, corrupted)
        sum(terms.values()).backward()
        self._accumulated += 1
        if self._accumulated >= every:
            optimizer.step()
            self._accumulated = 0
        return {k: float(v.detach()) for k, v in terms.items()}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        h = self.hparams
        audio = list(self.audio_model.parameters())
        video = list(self.video_model.parameters())
        taken = {id(p) for p in audio + video}
        other = [p for p in self.parameters() if id(p) not in taken]
        return torch.optim.Adam(
            [
                {"params": audio, "lr": h["lr_audio"], "weight_decay": h["weight_decay_audio"]},
                {"params": video, "lr": h["lr_video"], "weight_decay": h["weight_decay_video"]},
                {"params": other, "lr": h["lr_other"], "weight_decay": h["weight_decay_other"]},
            ]
        )


@register_model(
    "emt_dlfr_all",
    "EMT-DLFR trained one-to-all (one model for every missing rate); otherwise as emt_dlfr",
)
class EMTDLFRAll(EMTDLFR):
    """EMT-DLFR trained once for all missing rates (the paper trains one model per rate)."""

    training = "one-to-all"
