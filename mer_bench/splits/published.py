"""CIDer's published OOD pickles, imported into the split-file format.

Why: published and built splits should be served the same way (id lists with statistics).
"""

from __future__ import annotations

import os
from pathlib import Path

from mer_bench.data.schema import SPLITS
from mer_bench.errors import UserError
from mer_bench.splits.files import out_json_path, write_json_atomic
from mer_bench.splits.search import (
    ALGORITHM_VERSION, FORMAT, _write_cf_vocab, split_report,
)
from mer_bench.splits.source import iid_rows, source_from_splits
from mer_bench.splits.statistic import ALPHA, TASKS, WordIndex

# CIDer's published OOD training priors (the only public trace of its repartition); the
# training class counts are prior x IID train size (largest remainder).
CIDER_TRAIN_PRIORS = {
    ("mosi", "binary"): [0.4875, 0.0428, 0.4696],
    ("mosi", "seven"): [0.0327, 0.1791, 0.1986, 0.1682, 0.1651, 0.2227, 0.0335],
    ("mosei", "binary"): [0.2661, 0.1825, 0.5514],
    ("mosei", "seven"): [0.0171, 0.0759, 0.1064, 0.4253, 0.2653, 0.0979, 0.0121],
}
PRIOR_SETS = ("cider",)


def published_train_priors(name: str, dataset: str, task: str) -> list[float]:
    """`--priors cider`: CIDer's training priors for a MOSI- or MOSEI-shaped dataset."""
    if name not in PRIOR_SETS:
        raise UserError(f"unknown --priors {name!r}; choose one of: {', '.join(PRIOR_SETS)}")
    base = dataset.lower().removeprefix("synth-")
    base = "mosei" if "mosei" in base else "mosi" if "mosi" in base else base
    if (base, task) not in CIDER_TRAIN_PRIORS:
        raise UserError(
            f"CIDer published priors for MOSI and MOSEI only, not {dataset!r}; drop --priors"
        )
    return CIDER_TRAIN_PRIORS[(base, task)]

def import_published_split(
    pickle_path_or_root: str | os.PathLike,
    dataset: str,
    task: str,
    variant: str = "unaligned",
    out: str | os.PathLike | None = None,
) -> Path:
    """Turn CIDer's published OOD pickle into `splits/{dataset}/{task}/ood.json` (id lists).

    Accepts the pickle itself or a data root holding
    `OOD_{MOSI,MOSEI}/{binary,seven}/{MOSI,MOSEI}_{aligned,unaligned}_50.pkl`; the file is read
    with the data layer's restricted unpickler. The statistic is recomputed from its raw_text.
    """
    from mer_bench.data import mmsa

    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose binary or seven")
    p = Path(pickle_path_or_root)
    if p.is_file():
        ds = mmsa.read_mmsa_pickle(p, name=dataset, variant=variant)
    else:
        ds = mmsa.read_cider_ood(p, dataset, task, variant)
    from mer_bench.splits.vocabulary import dataset_vocab

    src = source_from_splits(ds.splits, origin=ds.source, vocab=dataset_vocab(ds.meta, dataset))
    del ds
    rows = iid_rows(src)  # the pickle's own train/valid/test are the OOD partition
    index = WordIndex.build(src.texts)
    doc = {
        "format": FORMAT,
        "dataset": dataset,
        "task": task,
        "algorithm": "imported:cider",
        "algorithm_version": ALGORITHM_VERSION,
        "seed": None,
        "params": {"min_count": index.min_count, "alpha": ALPHA},
        "source": {
            "origin": src.origin,
            "n": int(len(src.ids)),
            "sha256": src.sha256(with_text=True),
            "labels_sha256": src.sha256(with_text=False),
        },
        "created_by": f"import_published_split({str(pickle_path_or_root)!r}, {dataset!r}, {task!r})",
        "ood": split_report(src, task, rows, index),
        "ids": {s: sorted(src.ids[rows[s]].tolist()) for s in SPLITS},
    }
    path = out_json_path(dataset, task, out)
    write_json_atomic(path, doc)
    _write_cf_vocab(path, task, src, doc, dists=("ood",))
    return path

