"""Shared test fixtures: small random splits in the MMSA schema."""

from __future__ import annotations

import numpy as np

from mer_bench.data.schema import Split, three_class

DIMS, LENS = (12, 5, 6), (8, 14, 11)


def random_split(n: int = 24, seed: int = 0, lens=LENS, dims=DIMS) -> Split:
    """A small random split in the MMSA schema: [CLS] ids [SEP] text, random lengths, all
    three sentiment classes present."""
    rng = np.random.default_rng(seed)
    lt, la, lv = lens
    tl = rng.integers(4, lt + 1, n)
    tb = np.zeros((n, 3, lt), dtype=np.int64)
    for i in range(n):
        tb[i, 0, 0], tb[i, 0, tl[i] - 1] = 101, 102
        tb[i, 0, 1 : tl[i] - 1] = rng.integers(1000, 1020, tl[i] - 2)
        tb[i, 1, : tl[i]] = 1
    y = rng.uniform(-3, 3, n).astype(np.float32)
    y[:3] = 0.0
    return Split(
        text=rng.normal(size=(n, lt, dims[0])).astype(np.float32),
        audio=rng.normal(size=(n, la, dims[1])).astype(np.float32),
        vision=rng.normal(size=(n, lv, dims[2])).astype(np.float32),
        audio_lengths=rng.integers(1, la + 1, n),
        vision_lengths=rng.integers(1, lv + 1, n),
        regression_labels=y,
        classification_labels=three_class(y),
        id=np.array([f"s{i}" for i in range(n)]),
        raw_text=np.array([""] * n),
        text_bert=tb,
    )


def write_label_csv(ds, path):
    """An MMSA `label.csv` of a dataset's ids, transcripts, labels and IID splits (for the
    split builder's `--label-csv` path)."""
    from mer_bench.data.schema import SPLITS

    lines = ["video_id,clip_id,text,label,annotation,mode"]
    for s in SPLITS:
        for i, t, y in zip(ds[s].id, ds[s].raw_text, ds[s].regression_labels):
            v, c = i.split("$_$")
            lines.append(f"{v},{c},{t},{float(y)},x,{s}")
    path.write_text("\n".join(lines) + "\n")
    return path
