"""Cross-dataset evaluation: train/valid from one dataset, test from its registry partner.

Why: CIDer's cross-dataset setting (train on MOSI, test on MOSEI and back) uses CASP's pickles
`MSA_cross_datasets/{mosi,mosei}.pkl`, whose features share dims 768/25/171 and are word-aligned
but have different lengths (44 vs 75). A model is built for the training data's shapes, so the
test split must be made to fit them, and pairs that cannot fit are refused up front.

Rules (checked by `check_compatible`):
- same feature dims (D_t, D_a, D_v): refused otherwise (no projection is invented);
- both aligned: refused otherwise (unaligned audio/vision lengths are per-dataset choices);
- sequence length may differ: the test split is cut or zero-padded to the training length, on
  the side where the data keeps its padding (detected from the zero rows), so no content moves.
  Samples longer than the training length lose their surplus positions; the count is recorded
  in `meta["cross"]["truncated"]`. With `text_bert`, a cut keeps [SEP] as the last valid token.
"""

from __future__ import annotations

import numpy as np

from mer_bench.data.schema import SEP_ID, MMDataset, Split
from mer_bench.errors import UserError


def check_compatible(train: MMDataset, test: MMDataset) -> None:
    """Raise a one-line `UserError` unless `test` can be evaluated by a model built on `train`."""
    a, b = train.spec, test.spec
    if a.dims != b.dims:
        raise UserError(
            f"cannot cross {train.name} -> {test.name}: feature dims (text, audio, vision) "
            f"{a.dims} vs {b.dims} differ; cross-dataset needs the same dims (e.g. CASP's "
            "768/25/171 pickles)"
        )
    if not (a.aligned and b.aligned):
        raise UserError(
            f"cannot cross {train.name} -> {test.name}: cross-dataset needs aligned data on both "
            f"sides (got {train.variant} / {test.variant}); use --variant aligned"
        )
    if a.has_text_ids != b.has_text_ids:
        raise UserError(
            f"cannot cross {train.name} -> {test.name}: one side has token ids (text_bert) and "
            "the other does not"
        )


def _pads_left(x: np.ndarray) -> bool:
    """True if zero (padding) rows sit at the start of the sequences rather than at the end."""
    if x.shape[0] == 0 or x.shape[1] < 2:
        return False
    first = np.abs(x[:, 0]).sum(axis=-1) == 0
    last = np.abs(x[:, -1]).sum(axis=-1) == 0
    return bool(first.mean() > last.mean())


def _fit(arr: np.ndarray, length: int, left: bool) -> np.ndarray:
    t = arr.shape[1]
    if t == length:
        return arr
    if t > length:
        return arr[:, t - length :] if left else arr[:, :length]
    pad = np.zeros((arr.shape[0], length - t, *arr.shape[2:]), dtype=arr.dtype)
    return np.concatenate([pad, arr] if left else [arr, pad], axis=1)


def fit_length(split: Split, length: int) -> tuple[Split, int]:
    """Cut or zero-pad an aligned split to `length` positions; returns (split, #truncated)."""
    t = split.text.shape[1]
    if t == length:
        return split, 0
    left = _pads_left(split.text) if split.text_bert is None else False
    lens = split.text_lengths
    truncated = int((lens > length).sum())
    tb = None
    if split.text_bert is not None:
        tb = _fit(split.text_bert.transpose(0, 2, 1), length, False).transpose(0, 2, 1).copy()
        cut = lens > length
        if cut.any():  # the last kept position becomes [SEP], as a tokenizer's truncation does
            tb[cut, 0, length - 1] = SEP_ID
    new_len = np.minimum(lens, length).astype(np.int64)
    return (
        Split(
            text=_fit(split.text, length, left),
            audio=_fit(split.audio, length, left),
            vision=_fit(split.vision, length, left),
            audio_lengths=np.minimum(split.audio_lengths, length).astype(np.int64)
            if split.text_bert is not None
            else new_len,
            vision_lengths=np.minimum(split.vision_lengths, length).astype(np.int64)
            if split.text_bert is not None
            else new_len,
            regression_labels=split.regression_labels,
            classification_labels=split.classification_labels,
            id=split.id,
            raw_text=split.raw_text,
            text_bert=tb,
        ),
        truncated,
    )


def combine(train: MMDataset, test: MMDataset) -> MMDataset:
    """train/valid of `train` with the test split of `test`, fitted to the training length."""
    check_compatible(train, test)
    length = train.spec.lens[0]
    src_len = test.spec.lens[0]
    fitted, truncated = fit_length(test["test"], length)
    meta = dict(train.meta)
    meta.update(
        distribution="cross",
        cross={
            "train": train.name,
            "test": test.name,
            "test_source": test.source,
            "test_sha256": test.sha256,
            "test_length": src_len,
            "fitted_to": length,
            "truncated": truncated,
        },
    )
    return MMDataset(
        name=f"{train.name}->{test.name}",
        variant=train.variant,
        splits={"train": train["train"], "valid": train["valid"], "test": fitted},
        source=train.source,
        sha256=train.sha256,
        meta=meta,
    )
