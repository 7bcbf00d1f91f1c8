"""Dataset registry: `synth-mosi`, `synth-mosei` (embedded) and `mosi`, `mosei` (real files).

`load_dataset(name, variant, distribution, task)` is the only way the harness gets data:
`iid` is the standard split, `ood` a repartition served from `splits/{name}/{task}/ood.json`
(or CIDer's published OOD pickles for real data), `cross` trains on one dataset and tests on
another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mer_bench.data.schema import MMDataset
from mer_bench.registry import Registry

# loader(variant, data_root, scale) -> MMDataset (iid)
Loader = Callable[[str, Path | None, float | None], MMDataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    kind: str  # "synthetic" | "real"
    variants: tuple[str, ...]
    description: str
    loader: Loader
    cross_partner: str | None = None  # dataset tested on in `cross` scenarios


DATASETS: Registry[DatasetEntry] = Registry("dataset")
