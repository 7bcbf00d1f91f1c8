"""The one entry point to data: a dataset (registry) under a distribution (iid, ood, cross).

Why: the registry loads data and the split package applies a split to loaded data; this
module composes the two, so neither imports the other (`data` never imports `splits`).
"""

from __future__ import annotations

import os
from pathlib import Path

from mer_bench.data.registry import DATASETS, cached, check_variant, evict, iid_source, is_path
from mer_bench.data.schema import MMDataset
from mer_bench.errors import UserError

DISTRIBUTIONS = ("iid", "ood", "cross")


def load_dataset(
    name: str,
    variant: str = "unaligned",
    distribution: str = "iid",
    task: str = "binary",
    data_root: str | os.PathLike | None = None,
    scale: float | None = None,
) -> MMDataset:
    """A registered name (or a path to an MMSA pickle), a variant, and a distribution (`iid`,
    `ood` repartition, `cross` dataset). Results are cached in process, so a grid loads each
    dataset once; arrays are shared, never copied."""
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"unknown distribution {distribution!r}; choose one of: iid, ood, cross")
    check_variant(variant)
    if task not in ("binary", "seven"):
        raise UserError(f"unknown task {task!r}; choose binary or seven")
    if distribution == "cross":
        if name not in DATASETS and is_path(name):
            raise UserError("the cross distribution needs a registered dataset with a partner")
        scale_k = None if scale is None or float(scale) == 1.0 else float(scale)
        key = (name, variant, "cross", task, None if data_root is None else str(data_root), scale_k)
        return cached(key, lambda: load_cross(name, variant, task, data_root, scale_k))
    key, build = iid_source(name, variant, data_root, scale)
    if distribution == "iid":
        return cached(key, build)
    from mer_bench.splits.apply import apply_ood

    view = cached((*key, "ood", task), lambda: apply_ood(cached(key, build), task=task, data_root=data_root))
    # The view holds copies of everything its cells read; keeping the base as well doubled the
    # data in memory (main job peak RSS 2.9 -> 2.6 GB). An IID cell reloads it (seconds).
    evict(key)
    return view


def load_cross(
    name: str,
    variant: str = "aligned",
    task: str = "binary",
    data_root: str | os.PathLike | None = None,
    scale: float | None = None,
) -> MMDataset:
    """Train/valid from `name`, test from its registry `cross_partner`.

    A pair whose entries have cross releases (`mosi`/`mosei`: CASP's pickles; the embedded
    sets: their CASP-shaped synthetic twins) uses those; other registered datasets use their
    iid loaders and must pass `cross.check_compatible`.
    """
    from mer_bench.data.cross import combine

    entry = DATASETS.get(name)
    partner = entry.cross_partner
    if not partner:
        raise UserError(f"dataset {name!r} has no cross-dataset partner; cross scenarios need one")
    partner_entry = DATASETS.get(partner)
    root = None if data_root is None else Path(data_root)
    if entry.cross_loader is not None and partner_entry.cross_loader is not None:
        if variant != "aligned":
            raise UserError(
                f"cross-dataset releases ({name} -> {partner}) are aligned only; use --variant "
                "aligned"
            )
        train = entry.cross_loader(root, scale, False)
        test = partner_entry.cross_loader(root, scale, True)
    else:
        if variant not in entry.variants or variant not in partner_entry.variants:
            raise UserError(f"cross {name} -> {partner}: variant {variant!r} not available")
        train = entry.loader(variant, root, scale)
        test = partner_entry.loader(variant, root, scale)
    # keep only the partner's test split (its train/valid are released here); `spec` reads
    # the "train" key, so the test split stands in for all three
    test.splits = {"train": test["test"], "valid": test["test"], "test": test["test"]}
    return combine(train, test)
