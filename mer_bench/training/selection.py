"""Checkpoint selection and early stopping criteria, declared per model (`BenchModel.selection`).

Why: a strict `>` on a validation accuracy ties on every epoch while a model sits on the
majority plateau of a small validation set (one sample of 57 is 1.8 points), runs out of
patience and restores its first epoch. The official codes select on validation loss (MMSA
`KeyEval: "Loss"`, DLF, MPLMM, EMT-DLFR); CIDer's on its headline metric. Each criterion maps
(validation loss, validation headline metric) to a key where larger is better; a checkpoint
replaces the best one only when its key is strictly larger (tuples compare in order, so the
second entry breaks ties of the first).
"""

from __future__ import annotations

from collections.abc import Callable

from mer_bench.registry import Registry

SelectionKey = Callable[[float, float], tuple[float, ...]]

CRITERIA: Registry[tuple[str, SelectionKey]] = Registry("selection criterion")
CRITERIA.register(
    "loss",
    ("validation task loss (L1 for regression, NLL for classifiers; the model's "
     "`selection_loss`), lower is better", lambda loss, head: (-loss,)),
)
CRITERIA.register(
    "headline",
    ("validation headline metric, ties broken by the lower validation loss",
     lambda loss, head: (head, -loss)),
)


def selection_key(criterion: str, loss: float, headline: float) -> tuple[float, ...]:
    """Larger is better; a NaN entry counts as the worst value."""
    key = CRITERIA.get(criterion)[1](loss, headline)
    return tuple(float("-inf") if v != v else float(v) for v in key)


def describe(criterion: str, headline: str, one_to_one: bool) -> dict[str, str]:
    """What a run record says about its selection: criterion, split and data."""
    text = CRITERIA.get(criterion)[0]
    return {
        "criterion": criterion,
        "split": "valid",
        "data": "validation data at the training rate" if one_to_one else "complete validation data",
        "headline": headline,
        "definition": text,
        "applies_to": "early stopping and checkpoint choice",
    }
