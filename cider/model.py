"""CIDer (Zhong et al. 2025): model-specific self-distillation (MSSD: WSAM, MCT, hierarchical
distillation) and model-agnostic causal inference (MACI: MCM, counterfactual text).

Forward pass (official `CIDERModel.forward_once`, decisions.md for the fixes):
text features (fixed token features, or the harness's encoder in the loop: `--text-encoder`,
`mer_bench/textpath.py`) and audio/vision ->
bias-free linear projection to d (= Conv1d k=1) -> WSAM compresses audio/vision to T_l
(unaligned data) -> one GRU per modality -> MCT over [h_l | h_a | h_v] -> tanh attention pooling
per modality -> residual MLP = joint representation (3d) -> MCM -> log-probabilities.

Training (`train_step`, paper Sec. III-D): a teacher step on the complete batch (NLL), then a
student step on the corrupted batch: NLL + w_recon * recon + w_attn * attn + w_joint * joint.
Every pass goes through `self(batch, ...)`, so a harness text encoder re-encodes each view.
Like the official code, the MCT, GRUs and pooling use no padding mask (only WSAM masks), and
the residuals are the standard pre-LN ones (x + f(LN(x))).

Switches: `compat` (cider/compat.py) reproduces official behaviours; `ablations` are the
rows of the paper's Table V (see `ABLATIONS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cider import kernels
from cider.compat import COMPAT_SWITCHES, expand_compat
from cider.maci import MCM, class_features, mean_of_class_means
from cider.mct import MCTEncoder, Scores
from cider.space import suggest as _suggest
from cider.wsam import WSAM, wsam_query_mask
from mer_bench.data.batch import Batch
from mer_bench.data.schema import DataSpec, Split
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, register_model
from mer_bench.ops import tmm
from mer_bench.scenarios.base import counterfactual_text

ABLATIONS: dict[str, str] = {
    "no_recon": "w/o L_recon: no feature-reconstruction loss (and no reconstruction heads)",
    "no_attn": "w/o L_attn: no attention-map distillation",
    "no_joint": "w/o L_joint: no joint-representation distillation",
    "no_mssd": "w/o MSSD (Table V): no_recon + no_attn + no_joint; the teacher step is kept",
    "no_teacher": "plain corrupted training: no teacher step and no distillation (implies no_mssd)",
    "no_mcm": "w/o MCM: a plain Linear(3d, C) + log-softmax head instead of the MCM",
    "no_cf": "w/o fine-grained counterfactual text: scores are log p alone (tau = 0), no cf pass",
    "no_maci": "w/o MACI (all): no_mcm + no_cf",
    "no_wsam": "w/o WSAM: audio/vision keep their own lengths into the GRUs and the MCT",
    "no_mct": "w/o MCT: a vanilla transformer encoder (same width and depth) instead of MCA",
}


def expand_ablations(value: str | tuple | list | None) -> frozenset[str]:
    """Validate ablation names (comma string or sequence) and expand the umbrella switches."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {str(x).strip() for x in items if str(x).strip()}
    unknown = names - set(ABLATIONS)
    if unknown:
        raise UserError(
            f"unknown ablation(s) {', '.join(sorted(unknown))}; choose from: {', '.join(ABLATIONS)}"
        )
    if "no_teacher" in names:
        names.add("no_mssd")
    if "no_mssd" in names:
        names |= {"no_recon", "no_attn", "no_joint"}
    if "no_maci" in names:
        names |= {"no_mcm", "no_cf"}
    return frozenset(names)


class AttentionPool(nn.Module):
    """Tanh attention pooling over time (official `NaiveAttention`, no mask): (B, T, d) -> (B, d)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(x), dim=1)  # (B, T, 1)
        return (w * x).sum(1)


class SequenceRecon(nn.Module):
    """Audio/vision reconstruction (official `recon_audio`): a Linear over the time axis from
    the MCT length to the raw length, ReLU, then a Linear to the raw feature size."""

    def __init__(self, dim: int, t_in: int, t_out: int, d_out: int) -> None:
        super().__init__()
        self.time = nn.Linear(t_in, t_out)
        self.feat = nn.Linear(dim, d_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.feat(F.relu(self.time(h.transpose(1, 2))).transpose(1, 2))


@dataclass
class Pass:
    """Everything one forward pass produces that training may need."""

    scores: torch.Tensor
    joint: torch.Tensor
    text: torch.Tensor  # the text features the pass consumed (reconstruction target)
    attn: Scores | None = None  # last MCT layer's raw scores S = q k^T, as factors
    # reconstructions: text at the batch's dropped positions only (K, D_text), audio and
    # vision whole (B, T, D)
    recon: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@register_model("cider", "CIDer: self-distillation (WSAM, MCT) + causal inference (MCM, counterfactual text)")
class CIDer(BenchModel):
    """CIDer: self-distillation (WSAM, MCT) + causal inference (MCM, counterfactual text)."""

    output = "classification"
    training = "one-to-all"
    paper = (
        "Zhong et al. 2025, Towards Robust Multimodal Emotion Recognition under Missing "
        "Modalities and Distribution Shifts (CIDer); official code gw-zhong/CIDer"
    )
    lr = 1e-3
    # official: the best validation headline metric; ties broken by the validation loss
    selection = "headline"
    compat_switches = COMPAT_SWITCHES
    batch_size = 128
    max_epochs = 200
    patience = 10
    suggest = staticmethod(_suggest)  # Table II search space, for `mer-bench tune`
    defaults: dict[str, Any] = {
        "hidden": 32,
        "layers": 3,
        "heads": 8,
        "attn_dropout": 0.0,
        "out_dropout": 0.3,
        "embed_dropout": 0.2,
        "relu_dropout": 0.1,
        "res_dropout": 0.1,
        "w_joint": 0.5,
        "w_attn": 0.1,
        "w_recon": 0.6,
        "compat": "",
        "ablations": (),
        "mcm_layernorm": False,
        "mcm_eval": "train-mean",
    }
    text_lr = 5e-5  # official BERT fine-tuning: lr 5e-5, weight decay 1e-3 off bias/LayerNorm
    text_weight_decay = 1e-3
    hparams_source = "official release, chosen on test by its authors"

    def __init__(self, spec: DataSpec, task: str, **hp: Any) -> None:
        super().__init__(spec, task, **hp)
        h = self.hparams
        self.compat = expand_compat(h["compat"])
        self.ablations = expand_ablations(h["ablations"])
        d = int(h["hidden"])
        if int(h["layers"]) < 1 or d % int(h["heads"]):
            raise UserError(f"cider needs layers >= 1 and heads dividing hidden={d}")
        dt, da, dv = spec.dims
        lt, la, lv = spec.lens
        d_text = dt  # the encoder's width when the harness runs one in the loop

        # Conv1d(kernel=1, bias=False) == a bias-free Linear per time step (same init law)
        self.proj_l = nn.Linear(d_text, d, bias=False)
        self.proj_a = nn.Linear(da, d, bias=False)
        self.proj_v = nn.Linear(dv, d, bias=False)

        self.use_wsam = not spec.aligned and "no_wsam" not in self.ablations
        if self.use_wsam or (spec.aligned and "wsam_aligned" in self.compat and "no_wsam" not in self.ablations):
            self.wsam_a = WSAM(d)
            self.wsam_v = WSAM(d)
        t_a, t_v = (lt, lt) if self.use_wsam else (la, lv)  # lengths inside the MCT

        self.gru_l = nn.GRU(d, d, batch_first=True)
        self.gru_a = nn.GRU(d, d, batch_first=True)
        self.gru_v = nn.GRU(d, d, batch_first=True)
        self.mct = MCTEncoder(
            d, int(h["layers"]), int(h["heads"]), float(h["attn_dropout"]),
            float(h["relu_dropout"]), float(h["res_dropout"]), float(h["embed_dropout"]),
            composite="no_mct" not in self.ablations, batch_pe="batch_pe" in self.compat,
        )
        self.pool_l, self.pool_a, self.pool_v = AttentionPool(d), AttentionPool(d), AttentionPool(d)
        self.proj1 = nn.Linear(3 * d, 3 * d)
        self.proj2 = nn.Linear(3 * d, 3 * d)
        self.joint_dim = 3 * d

        self.use_teacher = "no_teacher" not in self.ablations
        self.use_recon = "no_recon" not in self.ablations
        if self.use_recon:
            self.recon_text = nn.Linear(d, d_text)
            self.recon_audio = SequenceRecon(d, t_a, la, da)
            self.recon_vision = SequenceRecon(d, t_v, lv, dv)

        if "no_mcm" in self.ablations:
            self.mcm = None
            self.head = nn.Linear(3 * d, self.n_classes)
        else:
            self.mcm = MCM(
                3 * d, spec.dims, self.n_classes, hidden=d, layernorm_av=bool(h["mcm_layernorm"]),
                eval_confounder=str(h["mcm_eval"]),
            )
        self.register_buffer("cf_vocab", None, persistent=False)

    # ------------------------------------------------------------------ switches
    @property
    def counterfactual(self) -> bool:  # type: ignore[override]
        """Counterfactual scoring is on unless ablated, once prepare() gave the bias words
        (data without token ids has none)."""
        return "no_cf" not in self.ablations and self.cf_vocab is not None

    # ------------------------------------------------------------------ hooks
    def prepare(self, train: Split, cf_vocab: np.ndarray | None = None) -> None:
        """MCM confounders and priors from the training split; remember the bias words."""
        if self.mcm is not None:
            feats, priors, _ = class_features(train, self.task)
            self.mcm.set_train(feats, priors)
        device = self.proj_a.weight.device
        self.cf_vocab = (
            None if cf_vocab is None else torch.as_tensor(np.asarray(cf_vocab), dtype=torch.long, device=device)
        )

    def prepare_eval(self, split: Split) -> None:
        """Compat `split_class_means` only (refused under the fair protocol): every class's
        confounder at valid/test becomes the mean of this split's class means (reads the
        split's labels, as the official code)."""
        if self.mcm is not None and "split_class_means" in self.compat:
            self.mcm.set_eval(mean_of_class_means(split, self.task))

    # ------------------------------------------------------------------ forward
    def run(self, batch: Batch, need_attn: bool = False, need_recon: bool = False) -> Pass:
        """One pass through `self(...)` (so forward hooks, e.g. a harness text encoder, see
        every view); `need_attn` keeps the last MCT layer's scores, `need_recon` the
        reconstructions (student pass)."""
        return self(batch, need_attn=need_attn, need_recon=need_recon).extras["pass"]

    def _pass(self, batch: Batch, need_attn: bool, need_recon: bool) -> Pass:
        text = batch.text
        x_l, x_a, x_v = self.proj_l(text), self.proj_a(batch.audio), self.proj_v(batch.vision)
        if self.use_wsam:
            rows = wsam_query_mask(batch.valid_text, batch.text_len, batch.text_ids is not None)
            x_a = self.wsam_a(x_l, x_a, rows, batch.valid_audio)
            x_v = self.wsam_v(x_l, x_v, rows, batch.valid_vision)
        h_l, h_a, h_v = self.gru_l(x_l)[0], self.gru_a(x_a)[0], self.gru_v(x_v)[0]
        lens = (h_l.shape[1], h_a.shape[1], h_v.shape[1])
        h, attn = self.mct(torch.cat([h_l, h_a, h_v], dim=1), lens, need_attn)
        h_l, h_a, h_v = h.split(lens, dim=1)
        g = torch.cat([self.pool_l(h_l), self.pool_a(h_a), self.pool_v(h_v)], dim=-1)
        hid = F.dropout(F.relu(self.proj1(g)), float(self.hparams["out_dropout"]), self.training)
        joint = self.proj2(hid) + g
        scores = self.mcm(joint) if self.mcm is not None else F.log_softmax(self.head(joint), dim=-1)
        recon = None
        if need_recon and self.use_recon:
            # text: only the dropped positions are scored, so only their rows are predicted
            # (the head is per position: the same rows, without a (B, T, 768) map and its
            # zero-filled gradient)
            recon = (self.recon_text(h_l[batch.missing_text]), self.recon_audio(h_a),
                     self.recon_vision(h_v))
        return Pass(scores, joint, text, attn, recon)

    def forward(self, batch: Batch, need_attn: bool = False, need_recon: bool = False) -> ModelOutput:
        p = self._pass(batch, need_attn, need_recon)
        return ModelOutput(scores=p.scores, joint=p.joint, extras={"pass": p})

    def counterfactual_scores(self, batch: Batch) -> torch.Tensor:
        """Log-probabilities of the counterfactual-text view (audio/vision unchanged)."""
        if self.cf_vocab is None:
            raise RuntimeError("counterfactual scoring needs the bias-word vocabulary from prepare()")
        return self.run(counterfactual_text(batch, self.cf_vocab)).scores

    # ------------------------------------------------------------------ training
    def _weights(self) -> dict[str, float]:
        """Active distillation terms and their weights (zero-weight terms are skipped)."""
        h = self.hparams
        w = {"recon": float(h["w_recon"]), "attn": float(h["w_attn"]), "joint": float(h["w_joint"])}
        return {k: v for k, v in w.items() if f"no_{k}" not in self.ablations and v != 0.0}

    def train_step(
        self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer,
        extra: Callable[[Batch, ModelOutput], dict[str, torch.Tensor]] | None = None,
    ) -> dict:
        """Teacher step on `clean`, then student step on `corrupted` (see module docstring).
        `extra(corrupted, student_output)` lets a wrapper (`+clue`) add its loss terms to the
        student objective, so CIDer keeps its own two-step distillation under the wrapper.
        Returns the terms of both objectives (weighted), so their sum is the total loss."""
        y = clean.target(self.task)
        optimizer.zero_grad(set_to_none=True)
        if not self.use_teacher:  # `no_teacher`: plain training on corrupted inputs
            student = self.run(corrupted)
            terms = {"nll": F.nll_loss(student.scores, y), **_extra(extra, corrupted, student)}
            sum(terms.values()).backward()
            optimizer.step()
            return {k: float(v.detach()) for k, v in terms.items()}

        w = self._weights()
        teacher = self.run(clean, need_attn="attn" in w)
        t_loss = F.nll_loss(teacher.scores, y)
        t_loss.backward()
        optimizer.step()
        if "double_teacher_grad" not in self.compat:
            optimizer.zero_grad(set_to_none=True)

        student = self.run(corrupted, need_attn="attn" in w, need_recon="recon" in w)
        terms = {"nll": F.nll_loss(student.scores, y)}
        if "recon" in w:
            terms["recon"] = w["recon"] * recon_loss(student, teacher.text.detach(), clean, corrupted)
        if "attn" in w:
            terms["attn"] = w["attn"] * attn_kl(student.attn, teacher.attn.detach())
        if "joint" in w:
            cos = F.cosine_similarity(student.joint, teacher.joint.detach(), dim=-1)
            terms["joint"] = w["joint"] * (1.0 - cos).mean()
        terms.update(_extra(extra, corrupted, student))
        total = sum(terms.values())
        total.backward()
        optimizer.step()
        return {"teacher_nll": float(t_loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def _extra(
    extra: Callable[[Batch, ModelOutput], dict[str, torch.Tensor]] | None, batch: Batch, p: Pass,
) -> dict[str, torch.Tensor]:
    """A wrapper's terms on a pass (none without a wrapper)."""
    return {} if extra is None else extra(batch, ModelOutput(p.scores, p.joint, {"pass": p}))


def smooth_l1_mean(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SmoothL1 (beta 1) of the rows (K, D) summed, divided by their count times the feature
    size (official `ReconLoss`); 0 for no rows."""
    return F.smooth_l1_loss(pred, target, reduction="sum") / (pred.numel() + 1e-6)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """`smooth_l1_mean` over the dropped valid positions of (B, T, D) maps."""
    return smooth_l1_mean(pred[dropped], target[dropped])


def recon_loss(student: Pass, text_target: torch.Tensor, clean: Batch, corrupted: Batch) -> torch.Tensor:
    """Text target: the complete view's text features; audio/vision: the raw complete features."""
    assert student.recon is not None
    r_t, r_a, r_v = student.recon
    return (
        smooth_l1_mean(r_t, text_target[corrupted.missing_text])  # r_t: the dropped rows only
        + masked_smooth_l1(r_a, clean.audio, corrupted.missing_audio)
        + masked_smooth_l1(r_v, clean.vision, corrupted.missing_vision)
    )


def attn_kl(student: torch.Tensor | Scores, teacher: torch.Tensor | Scores) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) over the last layer's full (LAV) score rows,
    `batchmean` over batch x heads as the official (B*H, N, N) layout. Either side may be a
    full score map or its factors (`Scores`, what the MCT returns: then no full map is ever
    held). The elementwise terms p_t * (log p_t - log p_s) are summed (as `F.kl_div`), never
    the difference of two large dot products, which cancels catastrophically when student and
    teacher are close."""
    teacher = teacher.detach()
    if (isinstance(student, Scores) and isinstance(teacher, Scores)
            and kernels.usable(student.q, student.q.shape[-1])):
        rows = student.q.shape[0] * student.q.shape[1]
        return kernels.attn_kl_sum(student.q, student.k, teacher.q, teacher.k) / rows
    if torch.is_grad_enabled() and isinstance(student, Scores) and student.q.requires_grad:
        return _AttnKLFactors.apply(student.q, student.k, teacher)
    if torch.is_grad_enabled() and isinstance(student, torch.Tensor) and student.requires_grad:
        return _AttnKL.apply(student, teacher)
    return _kl_chunks(student, teacher, None)


# samples per chunk: temporaries of 4 x H x N x N (3 MB at unaligned MOSI) instead of the whole
# batch; measured: 16 -> 4 lowers the main job's peak RSS by about 150 MB at the same speed
KL_CHUNK = 4

GradSink = Callable[[int, torch.Tensor], None]


def _kl_chunks(
    student: torch.Tensor | Scores, teacher: torch.Tensor | Scores, sink: GradSink | None
) -> torch.Tensor:
    """The KL, chunk by chunk; with `sink`, also hands it chunk i's d KL_sum / d S, i.e.
    softmax(student) - softmax(teacher) per row (the log-softmax backward of -p_t, whose row
    sums are 1), so no backward has to recompute a softmax."""
    lead = student.q if isinstance(student, Scores) else student  # (B, H, ...)
    total = lead.new_zeros(())
    for i, (s, t) in enumerate(zip(student.split(KL_CHUNK), teacher.split(KL_CHUNK))):
        t_log = F.log_softmax(t, dim=-1)
        s_log = F.log_softmax(s, dim=-1)
        p_t = t_log.exp()
        total += (p_t * (t_log - s_log)).sum()
        if sink is not None:
            sink(i, s_log.exp_().sub_(p_t))
    return total / (lead.shape[0] * lead.shape[1])


class _AttnKL(torch.autograd.Function):
    """`attn_kl` of a full student map in one pass: the forward forms the gradient as well,
    the backward only scales it. Why: the unfused KL's temporaries were about 440 MB of a
    batch-128 CIDer step's 1.3 GB of live tensors, and recomputing the softmaxes in the
    backward was a fifth of the step. The saved gradient is scaled in place, so this backward
    runs once (no `retain_graph`)."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor | Scores) -> torch.Tensor:
        grad = torch.empty_like(student)
        parts = grad.split(KL_CHUNK)
        value = _kl_chunks(student, teacher, lambda i, g: parts[i].copy_(g))
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_out / (grad.shape[0] * grad.shape[1])), None


class _AttnKLFactors(torch.autograd.Function):
    """`attn_kl` of a student given as S = q k^T: each chunk's d/dS goes straight into
    d/dq = (d/dS) k and d/dk = (d/dS)^T q, so only (B, H, N, dh) gradients are kept, not an
    (B, H, N, N) one, and neither full score map is formed (the three were 92 MB each at
    batch 128, unaligned MOSI)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, teacher: torch.Tensor | Scores) -> torch.Tensor:
        gq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        gk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        qs, ks, gqs, gks = q.split(KL_CHUNK), k.split(KL_CHUNK), gq.split(KL_CHUNK), gk.split(KL_CHUNK)

        def sink(i: int, g: torch.Tensor) -> None:  # thin products: `mer_bench.ops.tmm`
            gqs[i].copy_(tmm(g, ks[i]))
            gks[i].copy_(tmm(g.transpose(-1, -2), qs[i]))

        value = _kl_chunks(Scores(q, k), teacher, sink)
        ctx.save_for_backward(gq, gk)
        return value

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        gq, gk = ctx.saved_tensors
        scale = grad_out / (gq.shape[0] * gq.shape[1])
        return gq.mul_(scale), gk.mul_(scale), None
