"""Identities that key the store: a safe dataset slug, the data's identity, the model's code.

Why: a run id and a training key must change whenever what they stand for changes. Before,
a rerun on changed data said "already finished" and a checkpoint trained on other data (or by
other model code) was silently reused; and a `--dataset ../../x.pkl` became path components
of the store's file names. The slug keeps run ids readable; the hashes keep them honest.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mer_bench.data.schema import SPLITS

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
MAX_SLUG = 48
# harness modules whose code shapes every trained model (the loop, the default step, policies)
HARNESS_MODULES = (
    "mer_bench.models",
    "mer_bench.training.trainer",
    "mer_bench.training.steps",
    "mer_bench.scenarios.training",
)


def dataset_slug(name: str) -> str:
    """A registered name as it is; a path -> `file-<stem>` of [A-Za-z0-9.-] only (never a
    path component, never `__`, which separates run id fields)."""
    from mer_bench.data.registry import DATASETS

    if name in DATASETS and _UNSAFE.sub("-", name) == name:
        return name
    stem = _UNSAFE.sub("-", Path(name).stem).strip(".-") or "data"
    return f"file-{stem[:MAX_SLUG]}"


def split_sha256(ds: Any) -> str:
    """SHA-256 of the ids of train, valid and test in order: which samples each split holds."""
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode() + b"\0")
        for v in ds[s].id:
            h.update(str(v).encode() + b"\0")
    return h.hexdigest()


def data_identity(ds: Any) -> dict[str, Any]:
    """What the data of a cell were: the file checksum, the split membership, and (OOD /
    cross) which split document or partner test set was used."""
    ident: dict[str, Any] = {"sha256": ds.sha256, "split_sha256": split_sha256(ds)}
    ood = ds.meta.get("ood_split")
    if isinstance(ood, dict):
        ident["ood_source_sha256"] = ood.get("source_sha256")
        ident["ood_built_in_memory"] = ood.get("built_in_memory")
    cross = ds.meta.get("cross")
    if isinstance(cross, dict):
        ident["cross_test_sha256"] = cross.get("test_sha256")
    return ident


def _package_modules(mod: ModuleType) -> set[ModuleType]:
    """`mod` and the modules of its own top-level package that it references (one level)."""
    top = mod.__name__.split(".")[0]
    found = {mod}
    for value in vars(mod).values():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] == top and name in sys.modules:
            found.add(sys.modules[name])
    return found


@functools.cache
def model_code_version(model: str) -> str:
    """SHA-256 (12 hex) of the source files of the model's classes and the modules they use,
    plus the harness's training code: a changed model file retires its checkpoints (read once
    per process)."""
    from mer_bench.models import WRAPPERS, load_builtin_models

    base, *wrappers = model.split("+")
    objs: list[Any] = [load_builtin_models().get(base).cls, *(WRAPPERS.get(w) for w in wrappers)]
    mods: set[ModuleType] = set()
    for obj in objs:
        mods |= _package_modules(sys.modules[obj.__module__])
    for name in HARNESS_MODULES:
        __import__(name)
        mods.add(sys.modules[name])
    h = hashlib.sha256()
    for mod in sorted(mods, key=lambda m: m.__name__):
        path = getattr(mod, "__file__", None)
        h.update(mod.__name__.encode() + b"\0")
        if path and Path(path).is_file():
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]
