"""LNLN: Language-dominated Noise-resistant Learning Network.

Paper: H. Zhang, W. Wang, T. Yu, "Towards Robust Multimodal Sentiment Analysis with
Incomplete Data", NeurIPS 2024 (official code: Haoyu-ha/LNLN; it builds on ALMT).

Model (`forward` sees only the incomplete batch the harness gives it):
- Feature extraction: per modality a linear projection to 128-d and a 2-layer transformer with
  8 learnable extra tokens prepended and learned positions; the 8 extra tokens are kept
  (h_l, h_a, h_v, each (B, 8, 128)).
- Dominant modality correction (DMC): a completeness check (a 1-token transformer over h_l
  and an MLP with a sigmoid) estimates how complete the language is, w in (0, 1); a proxy
  dominant feature generator (8 learnable tokens, transformer over [tokens, h_a, h_v]) gives
  h_p through a gradient reversal layer; the corrected dominant feature is
  h_d = w * h_l + (1 - w) * h_p. An effectiveness discriminator (MLP) tells h_d tokens
  (label 1) from the complete view's language tokens (label 0); thanks to the gradient
  reversal the proxy generator learns to fool it.
- Dominant-modality-based multimodal learning (DMML): a 2-layer language encoder over h_d
  keeps its 3 hidden states; 3 hyper-modality learning layers update 8 learnable hyper tokens
  with language-queried attention over audio and vision (layer i is queried by hidden state
  i); a 2-layer cross transformer (language queries, hyper-modality keys/values, one shared
  extra token) fuses them; the mean of its non-extra outputs is the joint representation and
  a linear layer regresses the sentiment.
- Reconstructor (training only): three 2-layer transformers rebuild the complete view's
  extracted tokens (a, v, l) from the incomplete ones.
Losses (`train_step`, official weights): 0.9 * MSE(w, completeness) + 0.8 * CE(effectiveness)
+ 0.1 * MSE(reconstruction, complete tokens) + 1.0 * MSE(sentiment). The completeness label is
the true kept fraction of droppable text tokens, computed from `missing_text`/`valid_text`
(officially 1 - the drawn language rate). Note the sentiment loss is MSE, as officially.
Optimiser: AdamW (lr 1e-4, weight decay 1e-4); the official per-epoch schedule, defined as
fractions of the run's epoch budget (linear warm-up over the first 10% starting at 0, then
cosine over the remaining 90%), is built in `configure_scheduler` from the budget the trainer
passes (`--epochs`), so a short run still reaches the peak learning rate (epoch 1 of 8).

Text input. By default the fixed pre-extracted BERT token features (`batch.text`, D_t from
the spec); LNLN officially fine-tunes bert-base-uncased on [UNK]-corrupted ids. With fixed
features a dropped token's vector is zeroed and the kept tokens' (and [CLS]'s) vectors were
computed from the complete sentence, so text degrades less than in the paper. With
`--text-encoder` (`mer_bench/textpath.py`) the harness fine-tunes a BERT-family encoder in
the loop as officially: `batch_entries = ("losses",)` makes the incomplete pass and the
complete view's extraction (reconstruction target, discriminator input, both with gradient
as officially) read the encoder's states of their own ids. The official code trains BERT in
the model's single AdamW (train.py: lr 1e-4, weight decay 1e-4 on every parameter, under
the warm-up/cosine schedule), hence `text_lr = 1e-4`, `text_weight_decay = 1e-4` and
`text_no_decay = ()`.

Simplified, and why:
- Padding is masked out of attention (`mask_padding=True`); the official code attends over
  padded frames. Set `mask_padding=False` to reproduce that. Parameter counts are unchanged.
- Training corruption: officially each sample's rate is drawn per epoch (half U(0, 1), half
  0); in mer-bench the harness owns corruption and this model only consumes it.
- Selection: the official code keeps, per metric, the best epoch on the *test* set; mer-bench
  selects one checkpoint on the validation L1 loss (the harness's job; MMSA's default
  criterion, LNLN's code base). Officially all 200 epochs run without early stopping, hence
  `patience = max_epochs = 200`.
- Defaults are the official MOSI configuration (configs/train_mosi.yaml); MOSEI differs only
  in the fusion transformer depth (4: pass fusion_depth=4) and the data shapes.

Parameter count (MOSI unaligned shapes, DataSpec(dims=(768, 5, 20), lens=(50, 375, 500)),
binary task, default hparams, no text encoder): 6,483,012, equal to the paper's Table VI
(6,483,012). Table VI subtracts BERT-base (footnote *); with bert-base-uncased (109,482,240
parameters incl. pooler) LNLN would have ~116M. The count is large for a 128-d model because
the official transformers keep the ViT default head size 64 with 8 heads (inner width 512 for
q/k/v, 296,320 parameters per layer) and because the learned positions scale with the
sequence lengths (audio 383 x 128, vision 508 x 128). It depends on the lengths: MOSEI
unaligned shapes (768/74/35, 50/500/500) with fusion_depth=4 give 7,102,404.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import FeedForward, MultiHeadAttention, live_length
from mer_bench.data.batch import Batch
from mer_bench.errors import DataError, UserError
from mer_bench.models import BenchModel, ModelOutput, register_model
from mer_bench.training.schedules import warmup_cosine


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by -alpha backward."""
    return _GradReverse.apply(x, alpha)


class _Layer(nn.Module):
    """Pre-LN layer with separate LayerNorms for queries, keys and values (as ALMT/LNLN)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = (
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
        )
        self.attn = MultiHeadAttention(dim, heads, dim_head=dim_head)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(
        self,
        x: torch.Tensor,
        source: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        source = x if source is None else source
        x = x + self.attn(self.norm_q(x), self.norm_k(source), key_valid, value=self.norm_v(source))
        return x + self.ff(self.norm_ff(x))


class TokenTransformer(nn.Module):
    """Transformer with `n_tokens` learnable extra tokens prepended (zeros at init) and
    learned positions (standard normal at init) for up to `max_len` inputs."""

    def __init__(
        self,
        max_len: int,
        n_tokens: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        self.max_len, self.n_tokens = max_len, n_tokens
        self.pos = nn.Parameter(torch.randn(1, max_len + n_tokens, dim))
        self.extra = nn.Parameter(torch.zeros(1, n_tokens, dim)) if n_tokens else None
        self.layers = nn.ModuleList(_Layer(dim, heads, dim_head, mlp_dim) for _ in range(depth))

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, keep_hidden: bool = False,
        first: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """`first`: only the first `first` output tokens are wanted (the extractors keep their
        8 extra tokens), so the last layer computes those queries alone, over every key; each
        layer's other operations are per token, so those rows are the full layer's. Why: on
        audio and vision (383 and 508 tokens) that layer was half of LNLN's attention work."""
        b, n, _ = x.shape
        if n > self.max_len:
            raise DataError(f"lnln: sequence of {n} steps exceeds the configured {self.max_len}")
        if first is not None and valid is not None and not keep_hidden:
            x, valid = _drop_padding_tail(x, valid)
        if self.extra is not None:
            x = torch.cat([self.extra.expand(b, -1, -1), x], dim=1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(b, self.n_tokens), valid], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        hidden = [x]
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1 and first is not None and not keep_hidden
            x = layer(x[:, :first], x, key_valid=valid) if last else layer(x, key_valid=valid)
            hidden.append(x)
        return hidden if keep_hidden else x


def _drop_padding_tail(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and its mask without the trailing steps that are padding in every sample of the batch.

    Why: those steps are masked keys for every query, so they change no other step's output,
    and their own outputs are not among the kept first tokens; dropping them is the same
    computation on the rest (up to float rounding). On the embedded MOSI-sized data a median
    audio/vision sequence fills a fifth of its 375/500 steps, so most of a batch is tail."""
    keep = live_length(valid)
    return (x, valid) if keep == x.shape[1] else (x[:, :keep], valid[:, :keep])


class HyperModalityLayer(nn.Module):
    """Language-queried attention over audio and over vision, summed and added to the
    (normalised) hyper-modality tokens; one query projection serves both."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.norm_l, self.norm_a, self.norm_v, self.norm_h = (nn.LayerNorm(dim) for _ in range(4))
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k_a, self.to_k_v = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.to_v_a, self.to_v_v = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(
        self, h_l: torch.Tensor, h_a: torch.Tensor, h_v: torch.Tensor, h_hyper: torch.Tensor
    ) -> torch.Tensor:
        h_l, h_a, h_v = self.norm_l(h_l), self.norm_a(h_a), self.norm_v(h_v)
        q = self._heads(self.to_q(h_l))
        out_a = F.scaled_dot_product_attention(
            q, self._heads(self.to_k_a(h_a)), self._heads(self.to_v_a(h_a))
        )
        out_v = F.scaled_dot_product_attention(
            q, self._heads(self.to_k_v(h_v)), self._heads(self.to_v_v(h_v))
        )
        out = (out_a + out_v).transpose(1, 2).reshape(h_l.shape[0], h_l.shape[1], -1)
        # Officially the residual is taken on the normalised hyper tokens (in-place add).
        return self.norm_h(h_hyper) + self.to_out(out)


class CrossFusion(nn.Module):
    """Target (language) queries attend over source (hyper-modality) tokens; one learnable
    extra token is prepended to both, each sequence with its own learned positions."""

    def __init__(
        self,
        src_len: int,
        tgt_len: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        self.pos_s = nn.Parameter(torch.randn(1, src_len + 1, dim))
        self.pos_t = nn.Parameter(torch.randn(1, tgt_len + 1, dim))
        self.extra = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList(_Layer(dim, heads, dim_head, mlp_dim) for _ in range(depth))

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b = source.shape[0]
        extra = self.extra.expand(b, -1, -1)
        source = torch.cat([extra, source], dim=1) + self.pos_s[:, : source.shape[1] + 1]
        target = torch.cat([extra, target], dim=1) + self.pos_t[:, : target.shape[1] + 1]
        for layer in self.layers:
            target = layer(target, source)
        return target


@register_model(
    "lnln",
    "LNLN (Zhang et al., NeurIPS 2024): language-dominated noise-resistant learning "
    "(DMC + DMML + reconstructor), regression head",
)
class LNLN(BenchModel):
    """LNLN, trained once for all missing rates (one-to-all) as its paper."""

    output = "regression"
    training = "one-to-all"
    paper = (
        "H. Zhang, W. Wang, T. Yu. Towards Robust Multimodal Sentiment Analysis with "
        "Incomplete Data. NeurIPS 2024"
    )
    # Official MOSI values (configs/train_mosi.yaml; dim_head 64 is the default of the
    # official Transformer/CrossTransformer classes; loss weights are base.alpha/beta/gamma/sigma).
    defaults: dict[str, Any] = {
        "n_tokens": 8,  # feature_extractor.token_length
        "hidden": 128,  # feature_extractor.hidden_dims and every module's input_dim
        "heads": 8,
        "dim_head": 64,
        "mlp_dim": 128,  # hidden_dim of every transformer
        "extractor_depth": 2,
        "proxy_depth": 2,  # dmc.proxy_dominant_feature_generator.depth
        "completeness_depth": 2,  # dmc.completeness_check.depth
        "reconstructor_depth": 2,
        "language_depth": 2,  # dmml.language_encoder.depth
        "hyper_depth": 3,  # dmml.hyper_modality_learning.depth
        "fusion_depth": 2,  # dmml.fuison_transformer.depth (4 for MOSEI)
        "discriminator_hidden": 64,  # dmc.effectiveness_discriminator.hidden_dim
        "grl_alpha": 1.0,
        "alpha": 0.9,  # completeness loss weight
        "beta": 0.8,  # effectiveness (adversarial) loss weight
        "gamma": 0.1,  # reconstruction loss weight
        "sigma": 1.0,  # sentiment loss weight
        "sentiment_loss": "mse",  # official MultimodalLoss uses MSELoss
        "weight_decay": 1e-4,  # AdamW
        "warmup_fraction": 0.1,  # of the epoch budget (core/scheduler.py: 0.1 * n_epochs)
        "cosine_fraction": 0.9,  # of the epoch budget (0.9 * n_epochs)
        "mask_padding": True,  # not official (official attends over padding)
    }
    lr = 1e-4
    batch_size = 64
    max_epochs = 200
    patience = 200  # official: no early stopping
    # official BERT fine-tuning: the same AdamW group as the rest (train.py), used by --text-encoder
    text_lr = 1e-4
    text_weight_decay = 1e-4
    text_no_decay: tuple[str, ...] = ()
    # the incomplete and complete views are encoded inside `losses`
    batch_entries = ("losses",)

    def __init__(self, spec, task, **hp) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        if h["sentiment_loss"] not in ("mse", "l1"):
            raise UserError(
                f"lnln: sentiment_loss must be 'mse' or 'l1', got {h['sentiment_loss']!r}"
            )
        if h["hyper_depth"] > h["language_depth"] + 1:
            raise UserError("lnln: hyper_depth must be at most language_depth + 1")
        if h["hidden"] % h["heads"]:
            raise UserError("lnln: hidden must be divisible by heads")
        d, k, nh, dh, mlp = h["hidden"], h["n_tokens"], h["heads"], h["dim_head"], h["mlp_dim"]

        def tt(max_len: int, n_tok: int, depth: int) -> TokenTransformer:
            return TokenTransformer(max_len, n_tok, d, depth, nh, dh, mlp)

        (dt, da, dv), (lt, la, lv) = spec.dims, spec.lens
        self.h_hyper = nn.Parameter(torch.ones(1, k, d))
        self.h_p = nn.Parameter(torch.ones(1, k, d))
        self.in_l, self.in_a, self.in_v = nn.Linear(dt, d), nn.Linear(da, d), nn.Linear(dv, d)
        self.enc_l = tt(lt, k, h["extractor_depth"])
        self.enc_a = tt(la, k, h["extractor_depth"])
        self.enc_v = tt(lv, k, h["extractor_depth"])
        # DMC
        self.proxy_generator = tt(3 * k, k, h["proxy_depth"])
        self.discriminator = nn.Sequential(
            nn.Linear(d, h["discriminator_hidden"]),
            nn.LeakyReLU(0.1),
            nn.Linear(h["discriminator_hidden"], 2),
        )
        self.completeness_encoder = tt(k, 1, h["completeness_depth"])
        self.completeness_head = nn.Sequential(
            nn.Linear(d, d // 2), nn.LeakyReLU(0.1), nn.Linear(d // 2, 1), nn.Sigmoid()
        )
        # Reconstructor (a, v, l)
        self.reconstructor = nn.ModuleList(tt(k, 0, h["reconstructor_depth"]) for _ in range(3))
        # DMML
        self.language_encoder = tt(k, 0, h["language_depth"])
        self.hyper_layers = nn.ModuleList(
            HyperModalityLayer(d, nh) for _ in range(h["hyper_depth"])
        )
        self.fusion = CrossFusion(k, k, d, h["fusion_depth"], nh, dh, mlp)
        self.head = nn.Linear(d, 1)

    # --- encoding -----------------------------------------------------------------------
    def _extract(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 8 extra tokens of each modality's transformer: (h_l, h_a, h_v)."""
        mask = self.hparams["mask_padding"]
        k = self.hparams["n_tokens"]
        h_l = self.enc_l(self.in_l(batch.text), batch.valid_text if mask else None, first=k)
        h_a = self.enc_a(self.in_a(batch.audio), batch.valid_audio if mask else None, first=k)
        h_v = self.enc_v(self.in_v(batch.vision), batch.valid_vision if mask else None, first=k)
        return h_l, h_a, h_v

    def _encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        b, k = len(batch), self.hparams["n_tokens"]
        h_l, h_a, h_v = self._extract(batch)
        w = self.completeness_head(self.completeness_encoder(h_l)[:, 0])  # (B, 1)
        proxy_in = torch.cat([self.h_p.expand(b, -1, -1), h_a, h_v], dim=1)
        h_p = grad_reverse(self.proxy_generator(proxy_in)[:, :k], self.hparams["grl_alpha"])
        wt = w.unsqueeze(-1)
        h_d = h_p * (1 - wt) + h_l * wt
        hidden = self.language_encoder(h_d, keep_hidden=True)
        hyper = self.h_hyper.expand(b, -1, -1)
        for i, layer in enumerate(self.hyper_layers):
            hyper = layer(hidden[i], h_a, h_v, hyper)
        feat = self.fusion(hyper, hidden[-1])
        joint = feat[:, 1:].mean(dim=1)
        return {
            "pred": self.head(joint).squeeze(-1),
            "joint": joint,
            "w": w.squeeze(-1),
            "h_d": h_d,
            "h_l": h_l,
            "h_a": h_a,
            "h_v": h_v,
        }

    def forward(self, batch: Batch) -> ModelOutput:
        enc = self._encode(batch)
        return ModelOutput(
            scores=enc["pred"], joint=enc["joint"], extras={"completeness": enc["w"]}
        )

    # --- training -----------------------------------------------------------------------
    @staticmethod
    def completeness_label(batch: Batch) -> torch.Tensor:
        """Kept fraction of droppable text positions (valid, [CLS]/[SEP] excluded when the
        data has token ids); 1 for a sample without droppable positions."""
        valid = batch.valid_text
        if batch.text_ids is not None:
            pos = torch.arange(valid.shape[1], device=valid.device)[None, :]
            valid = valid & (pos > 0) & (pos < batch.text_len[:, None] - 1)
        n = valid.sum(dim=1).to(torch.float32)
        dropped = (batch.missing_text & valid).sum(dim=1).to(torch.float32)
        return 1.0 - dropped / n.clamp_min(1.0)

    def losses(self, clean: Batch, corrupted: Batch) -> dict[str, torch.Tensor]:
        """Weighted loss terms (they sum to the training loss)."""
        h = self.hparams
        miss = self._encode(corrupted)
        full_l, full_a, full_v = self._extract(clean)
        y = clean.y_reg
        sp_fn = F.mse_loss if h["sentiment_loss"] == "mse" else F.l1_loss
        l_sp = sp_fn(miss["pred"], y)
        l_cc = F.mse_loss(miss["w"], self.completeness_label(corrupted))
        rec = torch.cat(
            [r(x) for r, x in zip(self.reconstructor, (miss["h_a"], miss["h_v"], miss["h_l"]))], 1
        )
        l_rec = F.mse_loss(rec, torch.cat([full_a, full_v, full_l], dim=1))
        d = miss["h_d"].shape[-1]
        disc_in = torch.cat([miss["h_d"], full_l], dim=0).reshape(-1, d)
        n = miss["h_d"].shape[0] * miss["h_d"].shape[1]
        labels = torch.cat([torch.ones(n), torch.zeros(n)]).long().to(disc_in.device)
        l_adv = F.cross_entropy(self.discriminator(disc_in), labels)
        return {
            "sentiment": h["sigma"] * l_sp,
            "completeness": h["alpha"] * l_cc,
            "effectiveness": h["beta"] * l_adv,
            "reconstruction": h["gamma"] * l_rec,
        }

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        optimizer.zero_grad(set_to_none=True)
        terms = self.losses(clean, corrupted)
        sum(terms.values()).backward()
        optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def configure_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Official warm-up then cosine, as fractions of this run's epoch budget."""
        h = self.hparams
        epochs = getattr(self, "epochs_budget", self.max_epochs)
        return warmup_cosine(optimizer, epochs, h["warmup_fraction"], h["cosine_fraction"])

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.lr, weight_decay=self.hparams["weight_decay"]
        )
