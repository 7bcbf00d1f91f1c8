"""The model interface and registry.

A model is an `nn.Module` subclass of `BenchModel`, registered by name with
`@register_model("name")`. It is built as `cls(spec, task, **hparams)`, receives only
`Batch` objects (already corrupted by the harness) and returns a `ModelOutput`.

- `output = "classification"`: `scores` are log-probabilities (B, C) with C = 3 for
  `binary` (neg/neu/pos) and 7 for `seven`; scored by `metrics.classification_metrics`.
- `output = "regression"`: `scores` are (B,) sentiment scores; scored by
  `metrics.regression_metrics`.
- `joint` (B, d) is the joint representation when the model has one (needed by MACI and
  the Fig. 8 scatter).
- `training = "one-to-all"` (one model for every test rate) or `"one-to-one"` (one model
  per rate, trained at that rate).

The generic trainer calls `prepare(train_split)` once (training data only, e.g. class means),
then `train_step(clean, corrupted, optimizer)` per batch; the default step is one task-loss
step on the corrupted batch. Models with counterfactual scoring set `counterfactual = True`
and implement `counterfactual_scores(batch)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer_bench.data.batch import Batch
from mer_bench.data.schema import DataSpec, Split
from mer_bench.registry import Registry
from mer_bench.training.steps import accumulated_step

N_CLASSES = {"binary": 3, "seven": 7}


@dataclass
class ModelOutput:
    scores: torch.Tensor
    joint: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class BenchModel(nn.Module):
    """Base class of every registered model. Subclasses set the class attributes below."""

    output: ClassVar[str] = "classification"
    training: ClassVar[str] = "one-to-all"
    counterfactual: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    lr: ClassVar[float] = 1e-3
    # early stopping and checkpoint choice (mer_bench/training/selection.py): "loss" = the
    # validation `selection_loss`, as the official codes; "headline" = the headline metric,
    # ties broken by the loss (CIDer)
    selection: ClassVar[str] = "loss"
    # official behaviours reachable with `--compat` (name -> what it restores)
    compat_switches: ClassVar[dict[str, str]] = {}
    # where `defaults` come from (recorded as `hparams_source`; CIDer's were chosen on test)
    hparams_source: ClassVar[str] = "model defaults (the model module's documented configuration)"
    # the official BERT fine-tuning rate, used when the harness puts an encoder in the loop
    text_lr: ClassVar[float] = 5e-5
    text_weight_decay: ClassVar[float] = 1e-3

    def __init__(self, spec: DataSpec, task: str, **hparams: Any) -> None:
        super().__init__()
        self.spec = spec
        self.task = task
        self.n_classes = N_CLASSES[task]
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyper-parameters {sorted(unknown)}")
        self.hparams = {**self.defaults, **hparams}

    # --- hooks -----------------------------------------------------------------
    def prepare(self, train: Split, cf_vocab: np.ndarray | None = None) -> None:
        """Called once before training with the training split only (never valid/test) and,
        for counterfactual models, the bias-word token ids built on that training split."""

    def prepare_eval(self, split: Split) -> None:
        """Only under the official-compat switch `split_class_means`: the harness shows the
        model the split it is about to score (the official MCM reads that split's labels).
        Never called in the default behaviour; recorded in provenance when it is."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each training epoch (0-based) with the run's epoch
        budget, so budget-aware schedules and epoch-dependent steps see both; wrappers pass
        it on to their base. The default records them."""
        self.epoch, self.epochs_budget = epoch, epochs

    def selection_start(self, epochs: int) -> int:
        """The first epoch of the model's last training stage (0: a single stage). The epochs
        before it are a warm-up on complete data that ends on its best complete-data
        validation epoch (a pretrained model), with no schedule or patience; then the trainer
        starts a fresh optimiser and schedule, as a run from pretrained weights would, and
        selection and patience count from there. Wrappers answer for their base."""
        return 0

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def task_loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        if self.output == "regression":
            return F.l1_loss(out.scores.view(-1), batch.y_reg)
        return F.nll_loss(out.scores, batch.target(self.task))

    def selection_loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """The validation loss that selection and plateau schedules follow; the task loss
        unless the official code selects on its total loss."""
        return self.task_loss(out, batch)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def configure_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The official learning-rate schedule, or None. Built after `start_epoch(0, epochs)`,
        so `self.epochs_budget` is the run's budget; stepped once per epoch after validation
        (`ReduceLROnPlateau` with the validation `selection_loss`). The default is the
        official plateau schedule of a model whose hyper-parameters have `plateau_factor` and
        `plateau_patience` (so they are recorded and tunable), else none."""
        h = self.hparams
        if "plateau_factor" not in h:
            return None
        from mer_bench.training.schedules import plateau

        return plateau(optimizer, h["plateau_factor"], int(h["plateau_patience"]))

    def objective(self, batch: Batch, out: ModelOutput) -> dict[str, torch.Tensor]:
        """Terms of the training objective for `out = self(batch)`: "task" (the loss on
        `out.scores`) plus any auxiliary terms. Wrappers that replace the prediction (MACI)
        keep the auxiliary ones; override when the official objective has them."""
        return {"task": self.task_loss(out, batch)}

    def step_options(self) -> dict[str, float]:
        """Keyword arguments of `mer_bench.training.steps.accumulated_step` that the official
        step uses (micro_batch, clip_value, clip_norm); wrappers step the same way."""
        return {}

    def train_step(self, clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        """One optimisation step on the task loss, with `step_options()` (micro-batches,
        clipping); returns scalar losses for logging."""
        return accumulated_step(
            self, corrupted, optimizer, lambda b: {"loss": self.task_loss(self(b), b)},
            **self.step_options(),
        )

    def counterfactual_scores(self, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def n_parameters(self, exclude_text_encoder: bool = True) -> int:
        """Trainable parameter count, excluding a text encoder held as `self.text_encoder`."""
        skip = set()
        enc = getattr(self, "text_encoder", None)
        if exclude_text_encoder and isinstance(enc, nn.Module):
            skip = {id(p) for p in enc.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[BenchModel]
    description: str


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, description: str = "") -> Callable[[type[BenchModel]], type[BenchModel]]:
    """Class decorator: register a `BenchModel` subclass under `name`."""

    def deco(cls: type[BenchModel]) -> type[BenchModel]:
        doc = description or (cls.__doc__ or "").strip().splitlines()[0]
        MODELS.register(name, ModelEntry(name, cls, doc))
        return cls

    return deco


_LOADED = False


def load_builtin_models() -> Registry[ModelEntry]:
    """Import the packages that register the built-in models (CIDer and the baselines)."""
    global _LOADED
    if not _LOADED:
        import baselines  # noqa: F401
        import cider  # noqa: F401

        _LOADED = True
    return MODELS


# Wrappers compose with any registered model by name: "dlf+maci" is MACI around `dlf`.
# A wrapper is called as `wrapper(base_model, **wrapper_hparams) -> BenchModel`.
WRAPPERS: Registry[Callable[..., BenchModel]] = Registry("model wrapper")


def model_names() -> list[str]:
    """Every buildable name: registered models (wrappers compose as `base+wrapper`)."""
    return load_builtin_models().names()


def build_model(name: str, spec: DataSpec, task: str, **hparams: Any) -> BenchModel:
    """Build `name` (or `base+wrapper`, e.g. `dlf+maci`); hparams go to the base model,
    except keys prefixed `<wrapper>.` which go to the wrapper."""
    base_name, *wrappers = name.split("+")
    entry = load_builtin_models().get(base_name)
    base_hp = {k: v for k, v in hparams.items() if "." not in k}
    model = entry.cls(spec, task, **base_hp)
    for w in wrappers:
        wrap = WRAPPERS.get(w)
        prefix = f"{w}."
        model = wrap(model, **{k[len(prefix):]: v for k, v in hparams.items() if k.startswith(prefix)})
    return model
