"""MACI, CIDer's model-agnostic causal inference: the Multimodal Causal Module (MCM) for label
bias and counterfactual text for language bias, usable by CIDer and around any other model.

MCM (paper eqs. 20-24): P(Y | do(L)) = sum_c P(Y | M, c) P(c). Each class c has a confounder
vector [text | audio | vision] (a dataset-level constant: the class-mean feature); three shared
MLPs encode it, class-specific linear heads read [joint | encoded confounder], and the class
priors weight the softmax mixture. The log of the mixture is computed with logsumexp, which
is exact and never takes log 0.

Class features (`class_features`): for each sample the time average of its features over
*valid* positions (text over its real tokens, audio/vision over their real frames), then the
mean over the class's training samples. The official `.npy` files appear to average over the
padded length instead; averaging over valid positions keeps the feature independent of how
much padding a dataset uses. Priors are training class frequencies.

Which features are used when: training uses the training class means and priors; valid/test
use uniform priors and, by default (`eval_confounder="train-mean"`), give *every* class the
same confounder, the mean of the training class means: the official code gives every class
one vector (the mean of the class means), which is what the paper's footnote on equal class
counts describes, and taking it from the training split reads no valid/test label.
`"train-class"` keeps each class's own training mean. Only under the compat switch
`split_class_means` (oracle: refused under the fair protocol) does `prepare_eval` use the mean
of the *scored split's* class means, as the official code does.

The `maci` wrapper (`dlf+maci`, `lf_dnn+maci`) puts an MCM on top of any model that returns a
joint representation, and adds counterfactual-text scoring; a regression base's own score is
ignored (kept in `extras["base_scores"]`). Training: the MCM's NLL plus the base's auxiliary
objective terms (`BenchModel.objective`; DLF's reconstruction, consistency, orthogonality, margin
and extra-head losses), stepped with the base's micro-batches and clipping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer_bench.data.batch import Batch
from mer_bench.data.schema import CLS_ID, SEP_ID, Split
from mer_bench.errors import UserError
from mer_bench.models import N_CLASSES, WRAPPERS, BenchModel, ModelOutput
from mer_bench.scenarios.base import counterfactual_text
from mer_bench.training.steps import accumulated_step


# ----------------------------------------------------------------------------- class features
def _valid_time_mean(x: np.ndarray, lengths: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(N, T, D) -> (N, D): mean over the first `lengths[i]` steps (zeros when length is 0)."""
    out = np.zeros((x.shape[0], x.shape[2]), dtype=np.float64)
    pos = np.arange(x.shape[1])
    for s in range(0, x.shape[0], chunk):
        w = (pos[None, :] < lengths[s : s + chunk, None]).astype(np.float64)
        out[s : s + chunk] = np.einsum("ntd,nt->nd", x[s : s + chunk], w)
        out[s : s + chunk] /= np.maximum(w.sum(1, keepdims=True), 1.0)
    return out


def sample_features(split: Split) -> np.ndarray:
    """(N, D_t + D_a + D_v) per-sample time-averaged features over valid positions."""
    return np.concatenate(
        [
            _valid_time_mean(split.text, split.text_lengths),
            _valid_time_mean(split.audio, split.audio_lengths),
            _valid_time_mean(split.vision, split.vision_lengths),
        ],
        axis=1,
    )


def class_features(split: Split, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean features (C, D), class frequencies (C,) and a (C,) bool marking classes
    present in `split`; an absent class gets zero features and zero prior."""
    n_classes = N_CLASSES[task]
    labels = np.asarray(split.labels(task))
    feats = sample_features(split)
    counts = np.bincount(labels, minlength=n_classes)[:n_classes].astype(np.float64)
    means = np.zeros((n_classes, feats.shape[1]), dtype=np.float64)
    for c in range(n_classes):
        if counts[c] > 0:
            means[c] = feats[labels == c].mean(0)
    priors = counts / max(counts.sum(), 1.0)
    return means.astype(np.float32), priors.astype(np.float32), counts > 0


def mean_of_class_means(split: Split, task: str) -> np.ndarray:
    """The official valid/test confounder: the unweighted mean of the split's class means
    (classes absent from the split are left out)."""
    means, _, present = class_features(split, task)
    return means[present].mean(0) if present.any() else means.mean(0)


# ----------------------------------------------------------------------------- the module
EVAL_CONFOUNDERS = {
    "train-mean": "every class gets the mean of the training class means (default; label-free)",
    "train-class": "each class keeps its own training class mean",
}


def _mlp(d_in: int, hidden: int, layernorm: bool) -> nn.Sequential:
    """Linear -> ReLU -> Linear -> ReLU -> Linear; `layernorm` adds the official cross-dataset
    parameter-free LayerNorms after the first two Linear layers."""
    norm = (lambda: nn.LayerNorm(hidden, elementwise_affine=False)) if layernorm else nn.Identity
    return nn.Sequential(
        nn.Linear(d_in, hidden), norm(), nn.ReLU(),
        nn.Linear(hidden, hidden), norm(), nn.ReLU(),
        nn.Linear(hidden, hidden),
    )


class MCM(nn.Module):
    """Multimodal Causal Module: joint (B, J) -> log P(Y | do(L)) (B, C)."""

    def __init__(
        self, joint_dim: int, feat_dims: tuple[int, int, int], n_classes: int, hidden: int = 32,
        layernorm_av: bool = False, eval_confounder: str = "train-mean",
    ) -> None:
        super().__init__()
        if eval_confounder not in EVAL_CONFOUNDERS:
            raise UserError(
                f"unknown mcm_eval {eval_confounder!r}; choose from: {', '.join(EVAL_CONFOUNDERS)}"
            )
        self.eval_confounder = eval_confounder
        self.feat_dims = tuple(int(d) for d in feat_dims)
        self.joint_dim, self.n_classes = joint_dim, n_classes
        self.enc_text = _mlp(self.feat_dims[0], hidden, False)
        self.enc_audio = _mlp(self.feat_dims[1], hidden, layernorm_av)
        self.enc_vision = _mlp(self.feat_dims[2], hidden, layernorm_av)
        self.classifiers = nn.ModuleList(
            [nn.Linear(joint_dim + 3 * hidden, n_classes) for _ in range(n_classes)]
        )
        d = sum(self.feat_dims)
        self.register_buffer("train_feats", torch.zeros(n_classes, d))
        self.register_buffer("train_priors", torch.full((n_classes,), 1.0 / n_classes))
        self.register_buffer("eval_feats", torch.zeros(n_classes, d), persistent=False)
        self.eval_override = False

    def set_train(self, feats: np.ndarray, priors: np.ndarray) -> None:
        self.train_feats.copy_(torch.as_tensor(feats, dtype=torch.float32))
        self.train_priors.copy_(torch.as_tensor(priors, dtype=torch.float32))

    def set_eval(self, feat: np.ndarray | None) -> None:
        """Give every class the same confounder `feat` at valid/test (compat
        `split_class_means`); None restores the default (`eval_confounder`)."""
        self.eval_override = feat is not None
        if feat is not None:
            f = torch.as_tensor(np.asarray(feat), dtype=torch.float32).reshape(1, -1)
            self.eval_feats.copy_(f.expand_as(self.eval_feats))

    def eval_default(self) -> torch.Tensor:
        """(C, D) valid/test confounders from training statistics only (`eval_confounder`)."""
        if self.eval_confounder == "train-class":
            return self.train_feats
        present = self.train_priors > 0
        rows = self.train_feats[present] if bool(present.any()) else self.train_feats
        return rows.mean(0, keepdim=True).expand_as(self.train_feats)

    def encode_confounders(self, feats: torch.Tensor) -> torch.Tensor:
        dt, da, _ = self.feat_dims
        return torch.cat(
            [
                self.enc_text(feats[:, :dt]),
                self.enc_audio(feats[:, dt : dt + da]),
                self.enc_vision(feats[:, dt + da :]),
            ],
            dim=-1,
        )

    def forward(self, joint: torch.Tensor) -> torch.Tensor:
        if self.training:
            feats, priors = self.train_feats, self.train_priors
        else:
            feats = self.eval_feats if self.eval_override else self.eval_default()
            priors = torch.full_like(self.train_priors, 1.0 / self.n_classes)
        conf = self.encode_confounders(feats)  # (C_i, 3h)
        w = torch.stack([c.weight for c in self.classifiers])  # (C_i, C, J + 3h)
        b = torch.stack([c.bias for c in self.classifiers])  # (C_i, C)
        j = self.joint_dim
        const = torch.einsum("ioh,ih->io", w[:, :, j:], conf) + b
        logits = torch.einsum("bj,ioj->bio", joint, w[:, :, :j]) + const  # (B, C_i, C)
        logp = F.log_softmax(logits, dim=-1) + torch.log(priors).view(1, -1, 1)
        return torch.logsumexp(logp, dim=1)


# ----------------------------------------------------------------------------- the wrapper
def dummy_batch(spec: Any, n: int = 2, device: torch.device | str = "cpu") -> Batch:
    """A complete all-zero batch of `spec`'s shapes (used to find a base model's joint size)."""
    (dt, da, dv), (lt, la, lv) = spec.dims, spec.lens
    full = lambda t: torch.ones(n, t, dtype=torch.bool, device=device)  # noqa: E731
    none = lambda t: torch.zeros(n, t, dtype=torch.bool, device=device)  # noqa: E731
    ids = attn = None
    if spec.has_text_ids:
        ids = torch.full((n, lt), 1000, dtype=torch.long, device=device)
        ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
        attn = torch.ones(n, lt, dtype=torch.long, device=device)
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    lens = lambda t: torch.full((n,), t, dtype=torch.long, device=device)  # noqa: E731
    return Batch(
        text=z(n, lt, dt), audio=z(n, la, da), vision=z(n, lv, dv),
        text_len=lens(lt), audio_len=lens(la), vision_len=lens(lv),
        valid_text=full(lt), valid_audio=full(la), valid_vision=full(lv),
        missing_text=none(lt), missing_audio=none(la), missing_vision=none(lv),
        y_reg=z(n), y3=torch.zeros(n, dtype=torch.long, device=device),
        y7=torch.zeros(n, dtype=torch.long, device=device),
        index=torch.arange(n, device=device), text_ids=ids, text_attn=attn,
    )


def _joint_dim(base: BenchModel) -> int:
    dim = getattr(base, "joint_dim", None)
    if dim:
        return int(dim)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            out = base(dummy_batch(base.spec))
    finally:
        base.train(was_training)
    if out.joint is None:
        raise UserError(f"{type(base).__name__} returns no joint representation; MACI needs one")
    return int(out.joint.shape[-1])


class MACI(BenchModel):
    """MACI around a base model: MCM on its joint representation + counterfactual text."""

    output = "classification"
    paper = "Zhong et al. 2025 (CIDer), MACI: Multimodal Causal Module + counterfactual text"
    defaults = {
        "counterfactual": True,
        "hidden": 32,
        "joint_dim": None,
        "base_loss": 0.0,  # weight of the base's own task loss (its head is not scored)
        "base_aux": 1.0,  # weight of the base's auxiliary objective terms
        "mcm_eval": "train-mean",  # valid/test confounder (see EVAL_CONFOUNDERS)
    }

    def __init__(self, base: BenchModel, **hp: Any) -> None:
        super().__init__(base.spec, base.task, **hp)
        self.base = base
        h = self.hparams
        joint = int(h["joint_dim"] or _joint_dim(base))
        self.mcm = MCM(
            joint, base.spec.dims, self.n_classes, hidden=int(h["hidden"]),
            eval_confounder=str(h["mcm_eval"]),
        )
        self.register_buffer("cf_vocab", None, persistent=False)
        self.lr = base.lr

    @property
    def counterfactual(self) -> bool:  # type: ignore[override]
        return bool(self.hparams["counterfactual"]) and self.cf_vocab is not None

    def maci_parameters(self) -> int:
        return sum(p.numel() for p in self.mcm.parameters())

    def n_parameters(self, exclude_text_encoder: bool = True) -> int:
        """Base + MCM; a harness text encoder (held here, outside the base) only on request."""
        n = self.base.n_parameters(exclude_text_encoder) + self.maci_parameters()
        enc = getattr(self, "text_encoder", None)
        if not exclude_text_encoder and isinstance(enc, nn.Module):
            n += sum(p.numel() for p in enc.parameters())
        return n

    def prepare(self, train: Split, cf_vocab: np.ndarray | None = None) -> None:
        self.base.prepare(train, cf_vocab=cf_vocab)
        feats, priors, _ = class_features(train, self.task)
        self.mcm.set_train(feats, priors)
        device = self.mcm.train_feats.device
        self.cf_vocab = (
            None if cf_vocab is None else torch.as_tensor(np.asarray(cf_vocab), dtype=torch.long, device=device)
        )

    def prepare_eval(self, split: Split) -> None:
        self.base.prepare_eval(split)
        self.mcm.set_eval(mean_of_class_means(split, self.task))

    def selection_start(self, epochs: int) -> int:
        return self.base.selection_start(epochs)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        self.base.start_epoch(epoch, epochs)

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.base(batch)
        if out.joint is None:
            raise UserError(f"{type(self.base).__name__} returned no joint representation")
        scores = self.mcm(out.joint)
        return ModelOutput(scores=scores, joint=out.joint, extras={**out.extras, "base_scores": out.scores})

    def counterfactual_scores(self, batch: Batch) -> torch.Tensor:
        if self.cf_vocab is None:
            raise RuntimeError("counterfactual scoring needs the bias-word vocabulary from prepare()")
        return self(counterfactual_text(batch, self.cf_vocab)).scores

    def configure_optimizer(self) -> torch.optim.Optimizer:
        opt = self.base.configure_optimizer()
        opt.add_param_group({"params": list(self.mcm.parameters()), "lr": self.base.lr, "weight_decay": 0.0})
        return opt

    def configure_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The base's official schedule, over every group (the MCM's included)."""
        return self.base.configure_scheduler(optimizer)

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        """NLL of the MCM output on the corrupted batch, plus the base's auxiliary objective
        (`base_aux`, e.g. DLF's reconstruction and margin terms) and, if `base_loss` > 0, its
        own task loss; stepped as the base steps (its micro-batches and clipping)."""
        w_task, w_aux = float(self.hparams["base_loss"]), float(self.hparams["base_aux"])

        def terms(part: Batch) -> dict[str, torch.Tensor]:
            out = self(part)
            t = {"nll": F.nll_loss(out.scores, part.target(self.task))}
            if w_task > 0 or w_aux > 0:
                base_out = ModelOutput(out.extras["base_scores"], out.joint, out.extras)
                for name, value in self.base.objective(part, base_out).items():
                    w = w_task if name == "task" else w_aux
                    if w > 0:
                        t[f"base_{name}"] = w * value
            return t

        return accumulated_step(self, corrupted, optimizer, terms, **self.base.step_options())


def wrap(base: BenchModel, **hp: Any) -> BenchModel:
    """`WRAPPERS` entry: `<model>+maci`."""
    return MACI(base, **hp)


wrap.defaults = MACI.defaults  # type: ignore[attr-defined]  # for --hp maci.NAME checks
WRAPPERS.register("maci", wrap)
