"""Dataset registry: `synth-mosi`, `synth-mosei` (embedded) and `mosi`, `mosei` (real files).

The registry loads data (`load_iid`: a dataset with its standard split, cached in process) and
knows each dataset's cross-dataset partner and release. It knows nothing of OOD splits:
`mer_bench.datasets.load_dataset` applies a split (`mer_bench.splits`) or a cross pairing
(`mer_bench.data.cross`) to loaded data.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer_bench.data.schema import MMDataset
from mer_bench.errors import UserError
from mer_bench.registry import Registry

# loader(variant, data_root, scale) -> MMDataset (iid)
Loader = Callable[[str, Path | None, float | None], MMDataset]
# cross_loader(data_root, scale, test_only) -> the dataset's cross-dataset release; with
# `test_only` only its test split is needed (it stands in for all three)
CrossLoader = Callable[[Path | None, float | None, bool], MMDataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    kind: str  # "synthetic" | "real"
    variants: tuple[str, ...]
    description: str
    loader: Loader
    cross_partner: str | None = None  # dataset tested on in `cross` scenarios
    cross_loader: CrossLoader | None = None  # its cross release; None: the iid loader


DATASETS: Registry[DatasetEntry] = Registry("dataset")


# ----------------------------------------------------------------------------- loaders
def _synth_file(name: str, variant: str, scale: float | None) -> tuple[Path, dict]:
    """The cached synthetic pickle (generated on first use or after a generator change)."""
    from mer_bench.data.synth import GENERATOR_VERSION, cache_path, read_sidecar, synthesize

    path = cache_path(name, variant, None, scale)
    side = read_sidecar(path)
    if not path.is_file() or side is None or side.get("version") != GENERATOR_VERSION:
        synthesize(name, variant=variant, scale=scale)
        side = read_sidecar(path) or {}
    return path, side


def _checked_cache(
    name: str, variant: str, scale: float | None, read: Callable[[Path, dict], MMDataset]
) -> MMDataset:
    """Read a cached synthetic file and check it against its sidecar's SHA-256; a file changed
    since it was generated (tampered, or half-copied) is reported and regenerated."""
    from mer_bench.data.synth import synthesize
    from mer_bench.errors import warn

    path, side = _synth_file(name, variant, scale)
    ds = read(path, side)
    if side.get("sha256") and ds.sha256 != side["sha256"]:
        warn(f"{path} does not match the checksum in its sidecar (changed since it was "
             "generated); regenerating it")
        synthesize(name, variant=variant, scale=scale)
        path, side = _synth_file(name, variant, scale)
        ds = read(path, side)
        if ds.sha256 != side.get("sha256"):
            raise UserError(f"{path}: regenerated file does not match its sidecar checksum")
    return ds


def _synth_meta(path: Path, side: dict, scale: float | None) -> dict:
    return {
        "synthetic": True,
        "generator_version": side.get("version"),
        "seed": side.get("seed"),
        "scale": scale,
        "sidecar": f"{path}.json",
    }


def _synth_loader(name: str) -> Loader:
    def load(variant: str, data_root: Path | None, scale: float | None) -> MMDataset:
        from mer_bench.data.mmsa import read_mmsa_pickle
        from mer_bench.data.synth import split_counts

        def read(path: Path, side: dict) -> MMDataset:
            return read_mmsa_pickle(
                path, name, variant, expected_counts=split_counts(name, scale),
                meta=_synth_meta(path, side, scale),
            )

        return _checked_cache(name, variant, scale, read)

    return load


def _synth_cross_loader(name: str) -> CrossLoader:
    """The CASP-shaped twin of an embedded set (same seed, so one feature world per pair)."""

    def load(data_root: Path | None, scale: float | None, test_only: bool) -> MMDataset:
        from mer_bench.data.mmsa import convert_split, read_casp_file
        from mer_bench.data.synth import CROSS_PROFILES, GENERATOR_VERSION, synth_split

        twin = CROSS_PROFILES[name]
        if not test_only:
            def read(path: Path, side: dict) -> MMDataset:
                ds = read_casp_file(path, name, f"synthetic CASP-shaped release ({twin})")
                ds.meta.update(_synth_meta(path, side, scale))
                return ds

            return _checked_cache(twin, "aligned", scale, read)
        # only the partner's test split is used: build just that (identical to the file's)
        raw = synth_split(twin, "test", "aligned", scale)
        test, _ = convert_split(raw, f"{twin} [test]", True, "test")
        meta = {"synthetic": True, "generator_version": GENERATOR_VERSION, "scale": scale,
                "origin": f"synthetic CASP-shaped release ({twin}), test split built in memory"}
        return MMDataset(name, "aligned", {"train": test, "valid": test, "test": test},
                         f"<{twin} test split>", "", meta)

    return load


def _real_cross_loader(name: str) -> CrossLoader:
    def load(data_root: Path | None, scale: float | None, test_only: bool) -> MMDataset:
        from mer_bench.data.mmsa import read_casp

        return shrink(read_casp(data_root, name), scale)

    return load


def _real_loader(name: str) -> Loader:
    def load(variant: str, data_root: Path | None, scale: float | None) -> MMDataset:
        from mer_bench.data.manifest import EXPECTED_COUNTS
        from mer_bench.data.mmsa import find_mmsa_file, read_mmsa_pickle

        path = find_mmsa_file(data_root, name, variant)
        ds = read_mmsa_pickle(path, name, variant, expected_counts=EXPECTED_COUNTS[name])
        return shrink(ds, scale)

    return load


def shrink(ds: MMDataset, scale: float | None) -> MMDataset:
    """Keep an evenly spaced fraction `scale` of each split (real data; for quick runs)."""
    if scale is None or scale == 1:
        return ds
    if not 0 < scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {scale}")
    splits = {}
    for s, split in ds.splits.items():
        k = max(1, min(len(split), int(round(len(split) * scale))))
        splits[s] = split.subset(np.unique(np.linspace(0, len(split) - 1, k).round().astype(int)))
    return MMDataset(ds.name, ds.variant, splits, ds.source, ds.sha256, {**ds.meta, "scale": scale})


DATASETS.register(
    "synth-mosi",
    DatasetEntry(
        "synth-mosi", "synthetic", ("aligned", "unaligned"),
        "embedded MOSI-shaped synthetic set (1284/229/686; 768/5/20), generated on first use",
        _synth_loader("synth-mosi"), cross_partner="synth-mosei",
        cross_loader=_synth_cross_loader("synth-mosi"),
    ),
)
DATASETS.register(
    "synth-mosei",
    DatasetEntry(
        "synth-mosei", "synthetic", ("aligned", "unaligned"),
        "embedded MOSEI-shaped synthetic set (16326/1871/4659; 768/74/35); use --scale",
        _synth_loader("synth-mosei"), cross_partner="synth-mosi",
        cross_loader=_synth_cross_loader("synth-mosei"),
    ),
)
DATASETS.register(
    "mosi",
    DatasetEntry(
        "mosi", "real", ("aligned", "unaligned"),
        "CMU-MOSI, MMSA features: <data-root>/MOSI/Processed/{aligned,unaligned}_50.pkl",
        _real_loader("mosi"), cross_partner="mosei", cross_loader=_real_cross_loader("mosi"),
    ),
)
DATASETS.register(
    "mosei",
    DatasetEntry(
        "mosei", "real", ("aligned", "unaligned"),
        "CMU-MOSEI, MMSA features: <data-root>/MOSEI/Processed/{aligned,unaligned}_50.pkl",
        _real_loader("mosei"), cross_partner="mosi", cross_loader=_real_cross_loader("mosei"),
    ),
)


# ----------------------------------------------------------------------------- load_iid
_CACHE: OrderedDict[tuple, MMDataset] = OrderedDict()


def _cache_budget() -> int:
    """Bytes of datasets kept in memory ($MER_BENCH_DATA_CACHE_MB, default 6000); the most
    recently used dataset is always kept."""
    try:
        return int(float(os.environ.get("MER_BENCH_DATA_CACHE_MB", "6000")) * 2**20)
    except ValueError:
        return 6000 * 2**20


def _nbytes(ds: MMDataset) -> int:
    total = 0
    for split in ds.splits.values():
        for key in ("text", "audio", "vision", "text_bert"):
            arr = getattr(split, key)
            total += 0 if arr is None else arr.nbytes
    return total


def clear_cache() -> None:
    """Forget every in-process dataset (tests, or to free memory between grids)."""
    _CACHE.clear()


def evict(key: tuple) -> None:
    """Drop one dataset from the in-process cache (it is rebuilt if asked for again)."""
    _CACHE.pop(key, None)


def cached(key: tuple, build: Callable[[], MMDataset]) -> MMDataset:
    """The in-process dataset cache (also holds repartitioned and cross views, by key)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    ds = build()
    _CACHE[key] = ds
    budget = _cache_budget()
    while len(_CACHE) > 1 and sum(_nbytes(d) for d in _CACHE.values()) > budget:
        _CACHE.popitem(last=False)
    return ds


def is_path(name: str) -> bool:
    return name.endswith((".pkl", ".pickle", ".joblib")) or os.sep in name or Path(name).is_file()


def check_variant(variant: str) -> None:
    if variant not in ("aligned", "unaligned"):
        raise UserError(f"unknown variant {variant!r}; choose aligned or unaligned")


def load_iid(
    name: str,
    variant: str = "unaligned",
    data_root: str | os.PathLike | None = None,
    scale: float | None = None,
) -> tuple[MMDataset, tuple]:
    """A registered dataset (or an MMSA pickle path) with its standard split, cached in
    process; returns it with its cache key (repartitioned views extend that key)."""
    key, build = iid_source(name, variant, data_root, scale)
    return cached(key, build), key


def iid_source(
    name: str,
    variant: str = "unaligned",
    data_root: str | os.PathLike | None = None,
    scale: float | None = None,
) -> tuple[tuple, Callable[[], MMDataset]]:
    """The cache key of a dataset's standard split and how to build it, without loading it
    (a cached repartitioned view is then served without reloading its base)."""
    check_variant(variant)
    root = None if data_root is None else str(data_root)
    scale = None if scale is None or float(scale) == 1.0 else float(scale)
    if name not in DATASETS and is_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: no such dataset file (or register a dataset name)")
        stat = path.stat()
        key = ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns, scale)

        def read_file() -> MMDataset:
            from mer_bench.data.mmsa import read_mmsa_pickle

            return shrink(read_mmsa_pickle(path, path.stem, None), scale)

        return key, read_file
    entry = DATASETS.get(name)
    if variant not in entry.variants:
        raise UserError(f"dataset {name!r} has no {variant!r} variant; choose {entry.variants}")
    key = (name, variant, "iid", root, scale)
    return key, lambda: entry.loader(variant, None if root is None else Path(root), scale)
