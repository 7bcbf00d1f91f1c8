"""`mer-bench data verify` and `mer-bench data info`: check and describe dataset files.

Why: published features come from mirrors of varying quality (MMSA's own README warns about
versions with other counts). `verify` checks what the benchmark relies on (schema, keys,
shapes, split counts, finiteness, lengths, special tokens, checksums) and fails with one line;
`info` prints what is in a file so users can see it without writing code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer_bench.data.manifest import (
    EXPECTED_COUNTS,
    MMSA_SHA256,
    dataset_of,
    file_sha256,
    manifest_key,
)
from mer_bench.data.mmsa import mmsa_candidates, read_mmsa_pickle
from mer_bench.data.schema import CLS_ID, SEP_ID, SPLITS, MMDataset, seven_class, three_class
from mer_bench.errors import DataError, UserError

__all__ = ["verify", "info", "file_sha256"]


@dataclass
class Target:
    path: Path
    name: str
    variant: str | None
    expected_counts: dict[str, int] | None
    sha256: str | None  # required checksum, if any
    sha_origin: str  # where the required checksum comes from
    registered: bool


def _synth_targets(name: str) -> list[Target]:
    from mer_bench.data.synth import (
        GENERATOR_VERSION,
        cache_path,
        read_sidecar,
        split_counts,
        synthesize,
    )

    variants = [v for v in ("unaligned", "aligned") if cache_path(name, v).is_file()]
    out = []
    for v in variants or ["unaligned"]:
        path = cache_path(name, v)
        side = read_sidecar(path)
        if not path.is_file() or side is None or side.get("version") != GENERATOR_VERSION:
            synthesize(name, variant=v)
            side = read_sidecar(path) or {}
        out.append(
            Target(path, name, v, split_counts(name), side.get("sha256"), "its sidecar", True)
        )
    return out


def _real_targets(name: str, data_root: str | os.PathLike | None) -> list[Target]:
    from mer_bench.paths import data_root as resolve_root

    root = resolve_root(data_root)
    out, tried = [], []
    for v in ("unaligned", "aligned"):
        cands = mmsa_candidates(root, name, v)
        tried += cands
        for p in cands:
            if p.is_file():
                key = manifest_key(p)
                out.append(Target(p, name, v, EXPECTED_COUNTS[name],
                                  MMSA_SHA256.get(key or ""), "the MMSA README", True))
                break
    if not out:
        raise UserError(
            f"no {name.upper()} feature files found; tried: {', '.join(map(str, tried))}; "
            "set --data-root or $MER_BENCH_DATA to the directory that holds them"
        )
    return out


def _path_target(path: Path) -> Target:
    from mer_bench.data.synth import read_sidecar

    if not path.is_file():
        raise UserError(f"{path}: no such file, and not a dataset name (see `mer-bench ls datasets`)")
    side = read_sidecar(path, strict=True)
    if side and isinstance(side.get("counts"), dict):
        return Target(path, str(side.get("dataset", path.stem)), side.get("variant"),
                      side["counts"], side.get("sha256"), "its sidecar", False)
    ds = dataset_of(path)
    in_ood = any(part.upper().startswith("OOD_") for part in path.parts)
    counts = EXPECTED_COUNTS.get(ds) if ds and not in_ood else None
    if ds and in_ood:  # CIDer's OOD repartitions keep only the train size
        counts = {"train": EXPECTED_COUNTS[ds]["train"]}
    return Target(path, ds or path.stem, None, counts, None, "", False)


def resolve(target: str, data_root: str | os.PathLike | None = None) -> list[Target]:
    """A registered dataset name or a path -> the file(s) to check."""
    from mer_bench.data.registry import DATASETS

    if target in DATASETS:
        entry = DATASETS.get(target)
        if entry.kind == "synthetic":
            return _synth_targets(target)
        return _real_targets(target, data_root)
    return [_path_target(Path(target).expanduser())]


# ----------------------------------------------------------------------------- checks
def _check_text_bert(ds: MMDataset, where: str) -> str:
    total = ok_special = 0
    for s in SPLITS:
        tb = ds[s].text_bert
        if tb is None:
            return "text: no text_bert (features only; every position valid, no special tokens)"
        ids, mask = tb[:, 0], tb[:, 1]
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"{where} [{s}]: 'text_bert' mask row has values other than 0/1")
        length = mask.sum(1)
        prefix = np.arange(mask.shape[1])[None, :] < length[:, None]
        if not np.array_equal(mask.astype(bool), prefix):
            raise DataError(f"{where} [{s}]: 'text_bert' mask is not a prefix of ones")
        if (ids[~prefix] != 0).any():
            raise DataError(f"{where} [{s}]: 'text_bert' has non-zero ids in padding")
        if ids.size and (ids.min() < 0 or ids.max() >= 30522):
            raise DataError(f"{where} [{s}]: 'text_bert' ids outside [0, 30522)")
        rows = np.arange(len(ids))
        has = (length >= 2) & (ids[:, 0] == CLS_ID) & (ids[rows, np.maximum(length - 1, 0)] == SEP_ID)
        total += len(ids)
        ok_special += int(has.sum())
    pct = 100.0 * ok_special / max(total, 1)
    return f"text_bert: (N, 3, {ds['train'].text_bert.shape[2]}), mask prefix-shaped, [CLS]/[SEP] at the ends of {pct:.1f}% of rows"


def _check_file(t: Target) -> tuple[MMDataset, list[str]]:
    ds = read_mmsa_pickle(t.path, t.name, t.variant)
    where = str(t.path)
    counts = ds.counts()
    lines = [str(t.path)]
    _check_ids(ds, where)
    if t.expected_counts:
        for s, n in t.expected_counts.items():
            if counts.get(s) != n:
                raise DataError(f"{where} [{s}]: {counts.get(s)} samples, expected {n}")
        lines.append("  splits: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS) + " (as expected)")
    else:
        lines.append("  splits: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS)
                     + " (no expected counts known for this file)")
    spec = ds.spec
    lines.append(
        f"  dims: text {spec.dims[0]}, audio {spec.dims[1]}, vision {spec.dims[2]}; "
        f"steps: {spec.lens[0]}/{spec.lens[1]}/{spec.lens[2]} ({ds.variant})"
    )
    for s in SPLITS:
        y = ds[s].regression_labels
        if y.size and (y.min() < -3 - 1e-6 or y.max() > 3 + 1e-6):
            raise DataError(f"{where} [{s}]: 'regression_labels' outside [-3, 3]")
        bad = int((ds[s].classification_labels != three_class(y)).sum())
        if bad and t.sha_origin == "its sidecar":  # our own files must be exact
            raise DataError(f"{where} [{s}]: {bad} classification_labels disagree with sign(y)")
        if bad:
            lines.append(f"  note: {s}: {bad} classification_labels disagree with sign(y)")
    lines.append("  values: finite; lengths within range; labels in [-3, 3]")
    lines.append("  " + _check_text_bert(ds, where))
    return ds, lines


def _check_ids(ds: MMDataset, where: str) -> None:
    """Every split non-empty; ids unique within and across splits (a sample in two splits
    leaks test data into training)."""
    owner: dict[str, str] = {}
    for s in SPLITS:
        ids = np.asarray(ds[s].id).astype(str).tolist()
        if not ids:
            raise DataError(f"{where} [{s}]: the split is empty")
        for v in ids:
            if v in owner:
                both = "twice" if owner[v] == s else f"in both {owner[v]} and {s}"
                raise DataError(f"{where}: id {v!r} appears {both}")
            owner[v] = s


def _sha_line(t: Target, sha: str) -> str:
    if t.sha256:
        if sha != t.sha256:
            raise DataError(
                f"{t.path}: sha256 {sha[:16]}... does not match {t.sha256[:16]}... from {t.sha_origin}"
            )
        return f"  sha256: {sha} (matches {t.sha_origin})"
    key = manifest_key(t.path)
    if key and MMSA_SHA256.get(key) == sha:
        return f"  sha256: {sha} (matches the published {key})"
    if key:
        return f"  sha256: {sha} (differs from the published {key}: not the original release)"
    return f"  sha256: {sha}"


def verify(target: str, data_root: str | os.PathLike | None = None) -> str:
    """Check a dataset name or pickle path; return a short report ending in "OK"."""
    out: list[str] = []
    for t in resolve(target, data_root):
        ds, lines = _check_file(t)
        lines.append(_sha_line(t, ds.sha256))
        out += lines
    return "\n".join([*out, "OK"])


# ----------------------------------------------------------------------------- info
def _stats(x: np.ndarray) -> str:
    return f"{x.mean():.1f}/{int(x.min())}-{int(x.max())}" if x.size else "-"


def _describe(ds: MMDataset) -> str:
    from tabulate import tabulate

    rows = []
    for s in SPLITS:
        sp = ds[s]
        y = sp.regression_labels
        c3 = np.bincount(three_class(y), minlength=3)
        c7 = np.bincount(seven_class(y), minlength=7)
        rows.append(
            (
                s,
                len(sp),
                "x".join(map(str, sp.text.shape[1:])),
                "x".join(map(str, sp.audio.shape[1:])),
                "x".join(map(str, sp.vision.shape[1:])),
                _stats(sp.text_lengths),
                _stats(sp.audio_lengths),
                _stats(sp.vision_lengths),
                "/".join(map(str, c3)),
                "/".join(map(str, c7)),
                f"{y.mean():+.2f}",
            )
        )
    table = tabulate(
        rows,
        headers=["split", "N", "text TxD", "audio TxD", "vision TxD", "len t mean/min-max",
                 "len a", "len v", "neg/neu/pos", "7-class", "mean y"],
    )
    head = [
        f"dataset: {ds.name} ({ds.variant})",
        f"source: {ds.source}",
        f"sha256: {ds.sha256}",
        f"text ids: {'yes (text_bert)' if ds.spec.has_text_ids else 'no (features only)'}",
    ]
    if ds.meta.get("synthetic") or ds.meta.get("generator_version"):
        head.append(f"synthetic: generator v{ds.meta.get('generator_version')}, seed {ds.meta.get('seed')}")
    return "\n".join([*head, table])


def info(target: str, data_root: str | os.PathLike | None = None) -> str:
    """A table of splits, counts, shapes, lengths and label priors of a name or pickle path."""
    from mer_bench.data.synth import read_sidecar

    parts = []
    for t in resolve(target, data_root):
        ds = read_mmsa_pickle(t.path, t.name, t.variant)
        side = read_sidecar(t.path)
        if side:
            ds.meta.update(synthetic=True, generator_version=side.get("version"), seed=side.get("seed"))
        parts.append(_describe(ds))
    return "\n\n".join(parts)
