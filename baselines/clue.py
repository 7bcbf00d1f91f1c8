"""CLUE (Sun et al., ACM MM 2022, "Counterfactual Reasoning for Out-of-distribution Multimodal
Sentiment Analysis") as a wrapper over any registered model: `mag_bert+clue` is the paper's
row, `mult+clue` and `cider+clue` work the same way.

A text-only bias branch (two stacked BiLSTMs over the token features, a LayerNorm between them,
a four-layer MLP on the four final hidden states) gives logits o_t; a learned scalar c stands
in for the multimodal logits in the counterfactual world. With the "sum" fusion
F(a, b) = log sigmoid(a + b):

- factual score        F(o_m, o_t)   (o_m: the base model's logits)
- counterfactual score F(c, o_t)     (text-only: what the bias alone predicts)
- test score           F(o_m, o_t) - alpha F(c, o_t)

Training (official objective): base terms + CE(F(o_m, o_t)) + CE(o_t) + the KL-style term
-sum softmax(F(o_m, o_t)).detach() log softmax(F(c, o_t.detach())), which trains only c.

Alpha reuses the harness's correction-strength mechanism (CIDer's tau): `counterfactual_scores`
returns log softmax F(c, o_t) and the runner scores `scores - alpha cf_scores` on the model's
`correction_grid` (the official alpha list 0, 0.25, ..., 3). `fair`: one alpha per run on
validation; `paper`: per metric and rate on test (oracle), as the official code does.
Subtracting log-softmax instead of the raw fusion shifts each sample's scores by a constant,
so every argmax (hence every metric) equals the official one.

Classes: binary CLUE is 2-way (negative / non-negative, the official `output_size=2`, zero
with the positives as MMSA's Has0); the suite's 3-column scores carry the neutral column at
-1e4 (never predicted) and a neutral counterfactual of 0 (never corrected). Seven is 7-way.
The base's logits: a classifier's log-probabilities (binary: its neg and pos columns); a
regression base's score s through a learned `Linear(1, K)` (counted as "adapter") that starts as
the base's own decision rule (`regression_adapter`).

Deviations, and why: the official branch reads 300-d GloVe vectors; here it reads the
dataset's token features through a fixed, seeded orthonormal projection to 300-d (a buffer,
not a parameter), so the branch keeps the official size. Official ban words (dropped from the
branch's input with probability 1 - random_rate, default 1: none dropped) are the harness's
bias-word vocabulary built on training data only; `ban_words=True` zeroes them always.
Optimiser: two Adam groups (branch lr 1e-5, wd 1e-5; the base's own optimiser and rates, which
a regression base's adapter joins at the base's lr), cosine annealing T_max 20 to 1e-5 stepped
per epoch, value clipping 1.0 (the issue's value; the official MOSI config uses 0.8).

The base keeps its own training, as under `+maci`, in one of two ways:
- a base whose `train_step` takes `extra` (`hosts_terms`; CIDer, whose step is a teacher step
  on the complete batch then a distillation step on the corrupted one) runs that step itself,
  with CLUE's three terms added to its corrupted-batch (student) objective and every optimiser
  step value-clipped (`ValueClipped`); the logs carry the base's terms as `base_<name>`
  (`base_teacher_nll`, `base_recon`, `base_attn`, `base_joint`, `base_nll`). `base_loss=0`
  drops that step (the base then learns through CE(o1) only); other weights are refused, and
  `o1_weight` weights CE(o1) alone (the base's own step keeps its own weights).
- any other base contributes its `objective()` terms (MulT, MAG-BERT: the task loss; DLF, DMD:
  also their auxiliary terms), weighted `base_loss`, in one step with the base's micro-batches
  (`step_options()`); CLUE's value clipping replaces the base's own. A base that overrides
  `train_step` with two views and does not take `extra` (DiCMoR's paired recovery, EMT-DLFR,
  LNLN) loses that part under `+clue`.

Parameters (binary, MOSI shapes): branch + c = 3,798,579, Table VI's CLUE row exactly
(`clue_parameters()`); the base and adapter are reported separately (`parameter_breakdown`).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mer_bench.data.batch import Batch
from mer_bench.data.schema import Split
from mer_bench.errors import UserError
from mer_bench.models import WRAPPERS, BenchModel, ModelOutput
from mer_bench.training.steps import accumulated_step

ALPHA_GRID: tuple[float, ...] = tuple(0.25 * i for i in range(13))  # official alpha_list
NEUTRAL = -1e4  # binary: the neutral column's score (CLUE is 2-way there)
EPS = 1e-12


def fuse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CLUE's "sum" fusion: log sigmoid(a + b) (with the official eps)."""
    return torch.log(torch.sigmoid(a + b) + EPS)


def fixed_projection(d_in: int, d_out: int, seed: int = 1111) -> torch.Tensor:
    """A seeded (d_in, d_out) matrix with orthonormal columns (rows when d_out > d_in)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g))
    return q if d_in >= d_out else q.T


def regression_adapter(k: int) -> nn.Linear:
    """Linear(1, K) on a regression score s, initialised to the base's own decision rule:
    logit_k = c_k s - c_k^2 / 2 for class centres c_k (binary -1, +1; seven -3..3) is
    -(s - c_k)^2 / 2 up to a term shared by all classes, so its argmax is the nearest centre
    (the sign, MMSA's rounding). A random start would need many steps to undo."""
    centres = torch.tensor([-1.0, 1.0]) if k == 2 else torch.arange(-3.0, 4.0)
    lin = nn.Linear(1, k)
    with torch.no_grad():
        lin.weight.copy_(centres.view(k, 1))
        lin.bias.copy_(-0.5 * centres**2)
    return lin


class TextBranch(nn.Module):
    """CLUE's text-only model: BiLSTM -> LayerNorm -> BiLSTM, final states -> MLP -> logits."""

    def __init__(self, d_in: int, embed: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.register_buffer("proj", fixed_projection(d_in, embed) if d_in != embed else None)
        self.rnn1 = nn.LSTM(embed, embed, bidirectional=True, batch_first=True)
        self.rnn2 = nn.LSTM(2 * embed, embed, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * embed)
        layers: list[nn.Module] = []
        d = 4 * embed
        for _ in range(3):
            layers += [nn.Linear(d, hidden), nn.ReLU(), nn.LayerNorm(hidden)]
            d = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, n_out))
        for name, p in self.named_parameters():
            if "weight_hh" in name:  # the official initialisation of recurrent weights
                nn.init.orthogonal_(p)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = text @ self.proj if self.proj is not None else text
        lens = lengths.clamp(min=1).cpu()
        packed, (h1, _) = self.rnn1(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))
        padded, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])
        _, (h2, _) = self.rnn2(
            pack_padded_sequence(self.norm(padded), lens, batch_first=True, enforce_sorted=False)
        )
        emb = torch.cat([h1, h2], dim=0).permute(1, 0, 2).reshape(x.shape[0], -1)
        return self.mlp(emb)


class CLUE(BenchModel):
    """CLUE around a base model: a text-only bias branch subtracted at test time."""

    output = "classification"
    paper = "Sun et al., ACM MM 2022 (CLUE): counterfactual text-only bias branch"
    correction_grid: ClassVar[tuple[float, ...]] = ALPHA_GRID
    correction_name: ClassVar[str] = "alpha"
    defaults = {
        "embed": 300,  # tmodel_embedding_size
        "hidden": 128,  # tmodel_hidden_size
        "branch_lr": 1e-5,
        "branch_weight_decay": 1e-5,
        "o1_weight": 1.0,
        "o2_weight": 1.0,
        "kl": True,
        "base_loss": 1.0,  # weight of the base's own objective terms
        "clip": 1.0,
        "t_max": 20,
        "eta_min": 1e-5,
        "ban_words": False,
    }

    def __init__(self, base: BenchModel, **hp: Any) -> None:
        super().__init__(base.spec, base.task, **hp)
        self.base = base
        h = self.hparams
        self.validate_hparams(h, type(base))
        self.k = 2 if base.task == "binary" else 7
        self.branch = TextBranch(base.spec.dims[0], int(h["embed"]), int(h["hidden"]), self.k)
        self.constant = nn.Parameter(torch.tensor(1.0))
        self.adapter = regression_adapter(self.k) if base.output == "regression" else None
        self.register_buffer("ban_ids", None, persistent=False)
        self.lr = base.lr
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @staticmethod
    def validate_hparams(hp: dict[str, Any], base: type[BenchModel] | None = None) -> None:
        """A base with its own step (`hosts_terms`) is kept (base_loss 1) or dropped (0), never
        rescaled; checked before any data is loaded (`validate.check_model_hparams`) and at build."""
        if base is not None and hosts_terms(base) and float(hp["base_loss"]) not in (0.0, 1.0):
            raise UserError(f"--hp clue.base_loss={hp['base_loss']}: {base.__name__} trains through "
                            "its own step, which CLUE keeps (1) or drops (0), not rescales")

    # --- sizes -------------------------------------------------------------------------
    def clue_parameters(self) -> int:
        """The text branch + c (Table VI's CLUE row)."""
        return sum(p.numel() for p in self.branch.parameters()) + self.constant.numel()

    def parameter_breakdown(self) -> dict[str, int]:
        adapter = sum(p.numel() for p in self.adapter.parameters()) if self.adapter else 0
        return {"base_parameters": self.base.n_parameters(), "clue_parameters": self.clue_parameters(),
                "adapter_parameters": adapter}

    def n_parameters(self, exclude_text_encoder: bool = True) -> int:
        return self.base.n_parameters(exclude_text_encoder) + sum(
            v for k, v in self.parameter_breakdown().items() if k != "base_parameters"
        )

    # --- hooks -------------------------------------------------------------------------
    @property
    def counterfactual(self) -> bool:  # type: ignore[override]
        return True

    def prepare(self, train: Split, cf_vocab: np.ndarray | None = None) -> None:
        """The base's preparation; the ban words are the training-data bias vocabulary."""
        self.base.prepare(train, cf_vocab=cf_vocab)
        if self.hparams["ban_words"] and cf_vocab is None:
            raise UserError("clue ban_words=true needs token ids (a bias-word vocabulary)")
        if cf_vocab is not None:
            self.ban_ids = torch.as_tensor(np.asarray(cf_vocab), dtype=torch.long,
                                           device=self.constant.device)

    def prepare_eval(self, split: Split) -> None:
        self.base.prepare_eval(split)

    def selection_start(self, epochs: int) -> int:
        return self.base.selection_start(epochs)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        self.base.start_epoch(epoch, epochs)
        if epoch > 0 and self._scheduler is not None:  # the official per-epoch cosine step
            self._scheduler.step()

    def configure_optimizer(self) -> torch.optim.Optimizer:
        opt = self.base.configure_optimizer()
        own = [*self.branch.parameters(), self.constant]
        opt.add_param_group({"params": own, "lr": float(self.hparams["branch_lr"]),
                             "weight_decay": float(self.hparams["branch_weight_decay"])})
        if self.adapter is not None:  # part of the base side: it learns at the base's rate
            opt.add_param_group({"params": list(self.adapter.parameters()), "lr": self.base.lr,
                                 "weight_decay": 0.0})
        self._scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=int(self.hparams["t_max"]), eta_min=float(self.hparams["eta_min"])
        )
        return opt

    # --- forward -----------------------------------------------------------------------
    def _base_logits(self, out: ModelOutput) -> torch.Tensor:
        if self.adapter is not None:
            return self.adapter(out.scores.reshape(-1, 1))
        return out.scores[:, [0, 2]] if self.k == 2 else out.scores

    def _branch_text(self, batch: Batch) -> torch.Tensor:
        if not self.hparams["ban_words"] or batch.text_ids is None or self.ban_ids is None:
            return batch.text
        banned = torch.isin(batch.text_ids, self.ban_ids.to(batch.text_ids.device))
        return batch.text.masked_fill(banned.unsqueeze(-1), 0.0)

    def _to_suite(self, logits: torch.Tensor, neutral: float) -> torch.Tensor:
        """K-way fused logits -> the suite's log-probabilities (binary: 3 columns)."""
        logp = F.log_softmax(logits, dim=-1)
        if self.k == 7:
            return logp
        mid = torch.full_like(logp[:, :1], neutral)
        return torch.cat([logp[:, :1], mid, logp[:, 1:]], dim=1)

    def heads(self, batch: Batch, out: ModelOutput | None = None) -> dict[str, Any]:
        """CLUE's heads on `batch`, from the base's output `out` (run here when not given)."""
        out = self.base(batch) if out is None else out
        o_m = self._base_logits(out)
        o_t = self.branch(self._branch_text(batch), batch.text_len)
        return {"base": out, "o_m": o_m, "o_t": o_t, "o1": fuse(o_m, o_t),
                "o2": fuse(self.constant.expand_as(o_t), o_t)}

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.heads(batch)
        out = h["base"]
        return ModelOutput(
            scores=self._to_suite(h["o1"], NEUTRAL), joint=out.joint,
            extras={**out.extras, "base_scores": out.scores, "o_text": h["o_t"], "o2": h["o2"]},
        )

    def counterfactual_scores(self, batch: Batch) -> torch.Tensor:
        """log softmax F(c, o_t): the text-only (bias) prediction; only the branch runs."""
        o_t = self.branch(self._branch_text(batch), batch.text_len)
        return self._to_suite(fuse(self.constant.expand_as(o_t), o_t), 0.0)

    # --- training ----------------------------------------------------------------------
    def target(self, batch: Batch) -> torch.Tensor:
        """CLUE's class target: binary 0 = negative, 1 = zero or positive; seven: y7."""
        return (batch.y3 >= 1).long() if self.k == 2 else batch.y7

    def task_loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """CE of the fused (factual) prediction, the score the model is judged on."""
        logp = out.scores[:, [0, 2]] if self.k == 2 else out.scores
        return F.nll_loss(logp, self.target(batch))

    def own_terms(self, batch: Batch, base_out: ModelOutput | None = None) -> dict[str, torch.Tensor]:
        """CLUE's own terms on the base's output: w1 CE(o1) + w2 CE(o_t) + KL(o1 || F(c, o_t.detach()))."""
        return self._own_terms(self.heads(batch, base_out), batch)

    def _own_terms(self, h: dict[str, Any], batch: Batch) -> dict[str, torch.Tensor]:
        y = self.target(batch)
        w1, w2 = float(self.hparams["o1_weight"]), float(self.hparams["o2_weight"])
        terms = {"fused_ce": w1 * F.cross_entropy(h["o1"], y), "text_ce": w2 * F.cross_entropy(h["o_t"], y)}
        if self.hparams["kl"]:
            p_te = F.softmax(h["o1"], -1).detach()
            log_nde = F.log_softmax(fuse(self.constant.expand_as(h["o_t"]), h["o_t"].detach()), -1)
            terms["kl"] = -(p_te * log_nde).sum(1).mean()
        return terms

    def objective(self, batch: Batch, out: ModelOutput | None = None) -> dict[str, torch.Tensor]:
        """The official terms: w1 (base + CE(o1)) + w2 CE(o_t) + KL, the base's being its
        `objective()` terms weighted `base_loss` (the step of a base without its own step)."""
        h = self.heads(batch)
        terms = self._own_terms(h, batch)
        w1, wb = float(self.hparams["o1_weight"]), float(self.hparams["base_loss"])
        if wb > 0:
            for name, value in self.base.objective(batch, h["base"]).items():
                terms[f"base_{name}"] = w1 * wb * value
        return terms

    def step_options(self) -> dict[str, float]:
        return {**self.base.step_options(), "clip_value": float(self.hparams["clip"]), "clip_norm": 0.0}

    def delegates(self) -> bool:
        """True when the base's own `train_step` hosts CLUE's terms (it takes `extra`, e.g.
        CIDer's teacher/student step) and `base_loss` keeps it (1)."""
        return hosts_terms(self.base) and float(self.hparams["base_loss"]) == 1.0

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        """The base's own step with CLUE's terms added (`delegates()`), its optimiser value-
        clipped at every step; otherwise one step of `objective()` with the base's micro-batches."""
        if not self.delegates():
            return accumulated_step(self, corrupted, optimizer, lambda b: self.objective(b),
                                    **self.step_options())
        clipped = ValueClipped(optimizer, self.parameters(), float(self.hparams["clip"]))
        logs = self.base.train_step(clean, corrupted, clipped, extra=self.own_terms)
        own = ("fused_ce", "text_ce", "kl")
        return {k if k in own else f"base_{k}": v for k, v in logs.items()}


def hosts_terms(model: BenchModel | type[BenchModel]) -> bool:
    """Whether a model's (or model class's) `train_step` takes a wrapper's `extra` terms (its
    own step is more than one step of its `objective()`, so a wrapper joins it instead of
    replacing it)."""
    return "extra" in inspect.signature(model.train_step).parameters


class ValueClipped:
    """The optimiser a base's own step sees under CLUE: every `step()` first value-clips the
    gradients (CLUE's official clipping); everything else is the real optimiser."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, clip: float) -> None:
        self.optimizer, self.clip = optimizer, clip
        self.params = [p for p in params if p.requires_grad]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def step(self) -> None:
        if self.clip > 0:
            nn.utils.clip_grad_value_(self.params, self.clip)
        self.optimizer.step()


def wrap(base: BenchModel, **hp: Any) -> BenchModel:
    """`WRAPPERS` entry: `<model>+clue`."""
    return CLUE(base, **hp)


wrap.defaults = CLUE.defaults  # type: ignore[attr-defined]  # for --hp clue.NAME checks
wrap.validate_hparams = CLUE.validate_hparams  # type: ignore[attr-defined]
WRAPPERS.register("clue", wrap)
