"""Serving a split: a loaded dataset, repartitioned by the id lists of an `ood.json`.

Why: the registry loads data; a split is applied to loaded data (pooled, selected by id), so
no loader knows about splits and no split code loads features.
"""

from __future__ import annotations

import os

import numpy as np

from mer_bench.data.schema import SPLITS, MMDataset, Split
from mer_bench.errors import UserError
from mer_bench.splits.files import coverage_problems, hint as _hint, ood_json_path, read_split_json
from mer_bench.splits.search import DEFAULT_SEED, build_split_document
from mer_bench.splits.source import SourceData

# ----------------------------------------------------------------------------- serving
def _gather(splits: dict[str, Split], picks: list[tuple[str, int]]) -> Split:
    """A new split holding the given (source split, row) pairs, in order.

    Each field is allocated once at its final size and filled source by source, so no
    concatenated intermediate copy of the features is made.
    """
    by_src: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = np.array([p[0] for p in picks])
    rows = np.array([p[1] for p in picks], dtype=np.int64)
    for s in SPLITS:
        pos = np.flatnonzero(names == s)
        if len(pos):
            by_src[s] = (pos, rows[pos])
    if len(by_src) == 1:  # all rows from one source: Split.subset is exactly this
        (s, (pos, r)), = by_src.items()
        return splits[s].subset(r[np.argsort(pos)])
    n = len(picks)
    ref = splits["train"]

    def fill(key: str) -> np.ndarray | None:
        arrs = [getattr(splits[s], key) for s in by_src]
        if any(a is None for a in arrs):
            return None
        dtype = np.result_type(*arrs) if arrs[0].dtype.kind in "US" else arrs[0].dtype
        out = np.empty((n, *arrs[0].shape[1:]), dtype=dtype)
        for s, (pos, r) in by_src.items():
            out[pos] = getattr(splits[s], key)[r]
        return out

    keys = ("text", "audio", "vision", "audio_lengths", "vision_lengths", "regression_labels",
            "classification_labels", "id", "raw_text")
    fields = {k: fill(k) for k in keys}
    fields["text_bert"] = fill("text_bert") if ref.text_bert is not None else None
    return Split(**fields)


def apply_ood(
    ds: MMDataset, task: str, data_root: str | os.PathLike | None = None,
    splits_root: str | os.PathLike | None = None,
) -> MMDataset:
    """Serve `ds` repartitioned by `splits/{ds.name}/{task}/ood.json` (pooled, selected by id).

    The split's source hash must match the data: the full (id, label, text) hash, or at least
    the (id, label) hash (label.csv transcripts and pickle `raw_text` may differ in case and
    punctuation only). Otherwise, or when the file is missing, a one-line `UserError` says how
    to build it. Exception: synthetic datasets (`synth-*`) whose data differ from the committed
    file (e.g. `--scale`, another generator seed) get the same algorithm run in memory with the
    default seed, recorded as `meta["ood_split"]["built_in_memory"]`.
    """
    hint = _hint(ds.name, task)
    path = ood_json_path(ds.name, task, splits_root)
    synthetic = ds.name.startswith("synth-")
    src = SourceData(
        ids=np.concatenate([np.asarray(ds[s].id).astype(str) for s in SPLITS]),
        regression=np.concatenate([np.asarray(ds[s].regression_labels) for s in SPLITS]),
        texts=np.concatenate([np.asarray(ds[s].raw_text).astype(str) for s in SPLITS]),
        iid=np.concatenate([np.full(len(ds[s]), s) for s in SPLITS]),
        origin=ds.source or ds.name,
    )
    built_here = False
    if synthetic and not path.is_file():
        doc, built_here = build_split_document(src, ds.name, task, DEFAULT_SEED)[0], True
    else:
        doc = read_split_json(path, hint)
    if doc.get("task", task) != task:
        raise UserError(f"{path} is a {doc.get('task')} split, not {task}; {hint}")
    want = doc.get("source", {})
    matches = want.get("sha256") == src.sha256() or want.get("labels_sha256") == src.sha256(False)
    if not matches and synthetic:
        # e.g. a --scale'd or re-seeded synthetic set: same algorithm, built in memory
        doc, built_here = build_split_document(src, ds.name, task, DEFAULT_SEED)[0], True
        want = doc["source"]
    elif not matches and ds.meta.get("scale") and _ids_within(src.ids, doc):
        # a --scale'd real dataset (evenly spaced rows of each split): serve the listed ids
        # that are present; the full-data hash cannot be checked on a subset
        doc = {**doc, "ids": {s: [v for v in doc["ids"][s] if v in set(src.ids.tolist())]
                              for s in SPLITS}}
    elif not matches:
        raise UserError(
            f"{path} was built from different data ({want.get('n', '?')} samples, source "
            f"{want.get('origin', '?')}) than {ds.source or ds.name} ({len(src.ids)} samples); {hint}"
        )
    elif not ds.meta.get("scale"):
        problems = coverage_problems(doc, src.ids.tolist())
        if problems:
            raise UserError(f"{path}: {problems[0]}; {hint}")
    where = {}
    for s in SPLITS:
        for r, v in enumerate(np.asarray(ds[s].id).astype(str).tolist()):
            where[v] = (s, r)
    new = {}
    for s in SPLITS:
        try:
            new[s] = _gather(ds.splits, [where[v] for v in doc["ids"][s]])
        except KeyError as e:
            raise UserError(f"{path} lists id {e.args[0]!r} not in {ds.source or ds.name}; {hint}") from None
    meta = dict(ds.meta)
    meta.update(
        distribution="ood",
        ood_split={
            "path": str(path),
            "algorithm": doc.get("algorithm"),
            "algorithm_version": doc.get("algorithm_version"),
            "seed": doc.get("seed"),
            "source_sha256": want.get("sha256"),
            "file_sha256": None if built_here else _file_hash(path),
            "strength": doc.get("params", {}).get("strength", "max"),
            "statistic": doc.get("ood", {}).get("statistic", {}).get("tv"),
            "built_in_memory": built_here,
        },
    )
    return MMDataset(
        name=ds.name, variant=ds.variant, splits=new, source=ds.source, sha256=ds.sha256, meta=meta
    )


def _ids_within(ids: np.ndarray, doc: dict) -> bool:
    listed = set().union(*(doc["ids"][s] for s in SPLITS))
    return set(ids.tolist()) <= listed




def _file_hash(path) -> str:
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()
