"""The in-memory MMSA-schema dataset: one type for real, OOD, cross-dataset and synthetic data.

Why: every loader returns this type, so scenarios, models and scorers never see file formats.
Shapes are read from the arrays and checked, never taken from configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mer_bench.errors import DataError

SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")

# bert-base-uncased WordPiece special ids (also all-MiniLM-L6-v2), as in the official CIDer code.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
SPECIAL_IDS = frozenset({PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID})

# Split keys of the MMSA pickle that this type reads (annotations is optional and ignored).
ARRAY_KEYS = ("text", "audio", "vision", "regression_labels")
OPTIONAL_KEYS = (
    "text_bert",
    "audio_lengths",
    "vision_lengths",
    "classification_labels",
    "raw_text",
    "id",
)


def three_class(y: np.ndarray) -> np.ndarray:
    """CIDer's "binary" target: 0 negative (y < 0), 1 neutral (y == 0), 2 positive (y > 0)."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.int64)


def seven_class(y: np.ndarray) -> np.ndarray:
    """round_half_even(clip(y, -3, 3)) + 3, as MMSA and CIDer (numpy rounds half to even)."""
    return (np.round(np.clip(np.asarray(y, dtype=np.float64), -3, 3)) + 3).astype(np.int64)


@dataclass
class Split:
    """One split in the MMSA schema. Arrays are float32 / int64; strings are numpy `str` arrays.

    `text_bert` is (N, 3, L_t): input ids, attention mask, segment ids. When it is absent
    (CASP pickles), every text position is valid and there are no special tokens.
    """

    text: np.ndarray  # (N, L_t, D_t) float32 token features
    audio: np.ndarray  # (N, L_a, D_a) float32
    vision: np.ndarray  # (N, L_v, D_v) float32
    audio_lengths: np.ndarray  # (N,) int64 valid frames
    vision_lengths: np.ndarray  # (N,) int64 valid frames
    regression_labels: np.ndarray  # (N,) float32 in [-3, 3]
    classification_labels: np.ndarray  # (N,) int64: 0 neg, 1 neu, 2 pos
    id: np.ndarray  # (N,) str
    raw_text: np.ndarray  # (N,) str
    text_bert: np.ndarray | None = None  # (N, 3, L_t) int64

    def __len__(self) -> int:
        return int(self.regression_labels.shape[0])

    @property
    def text_lengths(self) -> np.ndarray:
        """Valid text positions per sample, [CLS] and [SEP] included."""
        if self.text_bert is None:
            return np.full(len(self), self.text.shape[1], dtype=np.int64)
        return self.text_bert[:, 1, :].sum(axis=1).astype(np.int64)

    @property
    def has_special_tokens(self) -> bool:
        return self.text_bert is not None

    def lengths(self, modality: str) -> np.ndarray:
        return {
            "text": self.text_lengths,
            "audio": self.audio_lengths,
            "vision": self.vision_lengths,
        }[modality]

    def labels(self, task: str) -> np.ndarray:
        """Class targets for `binary` (3-way, from classification_labels) or `seven`."""
        if task == "binary":
            return self.classification_labels
        if task == "seven":
            return seven_class(self.regression_labels)
        raise ValueError(f"unknown task {task!r}")

    def subset(self, idx: np.ndarray) -> Split:
        """A new split holding rows `idx` (used for OOD repartitions and --scale)."""
        idx = np.asarray(idx)
        return Split(
            text=self.text[idx],
            audio=self.audio[idx],
            vision=self.vision[idx],
            audio_lengths=self.audio_lengths[idx],
            vision_lengths=self.vision_lengths[idx],
            regression_labels=self.regression_labels[idx],
            classification_labels=self.classification_labels[idx],
            id=self.id[idx],
            raw_text=self.raw_text[idx],
            text_bert=None if self.text_bert is None else self.text_bert[idx],
        )


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its inputs: feature dims, sequence lengths, alignment."""

    dims: tuple[int, int, int]  # (D_t, D_a, D_v)
    lens: tuple[int, int, int]  # (L_t, L_a, L_v)
    aligned: bool
    has_text_ids: bool

    @property
    def d_text(self) -> int:
        return self.dims[0]


@dataclass
class MMDataset:
    """A dataset: three splits plus where it came from (`source`, `sha256`, `meta`)."""

    name: str
    variant: str  # "aligned" | "unaligned"
    splits: dict[str, Split]
    source: str = ""
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    @property
    def spec(self) -> DataSpec:
        s = self.splits["train"]
        return DataSpec(
            dims=(s.text.shape[2], s.audio.shape[2], s.vision.shape[2]),
            lens=(s.text.shape[1], s.audio.shape[1], s.vision.shape[1]),
            aligned=self.variant == "aligned",
            has_text_ids=s.text_bert is not None,
        )

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def validate_split(split: Split, where: str) -> None:
    """Check one split's internal consistency; raise a `DataError` naming `where` and the key."""
    n = len(split)
    for key in (
        "text",
        "audio",
        "vision",
        "audio_lengths",
        "vision_lengths",
        "classification_labels",
        "id",
        "raw_text",
    ):
        arr = getattr(split, key)
        if arr.shape[0] != n:
            raise DataError(f"{where}: '{key}' has {arr.shape[0]} rows but labels have {n}")
    for key in ("text", "audio", "vision"):
        if getattr(split, key).ndim != 3:
            raise DataError(f"{where}: '{key}' must be 3-D (N, T, D), got {getattr(split, key).shape}")
        if not np.isfinite(getattr(split, key)).all():
            raise DataError(f"{where}: '{key}' contains NaN or infinite values")
    if not np.isfinite(split.regression_labels).all():
        raise DataError(f"{where}: 'regression_labels' contains NaN or infinite values")
    if split.text_bert is not None:
        tb = split.text_bert
        if tb.ndim != 3 or tb.shape[1] != 3 or tb.shape[2] != split.text.shape[1]:
            raise DataError(
                f"{where}: 'text_bert' must be (N, 3, {split.text.shape[1]}), got {tb.shape}"
            )
    for key, t in (("audio_lengths", split.audio.shape[1]), ("vision_lengths", split.vision.shape[1])):
        arr = getattr(split, key)
        if arr.size and (arr.min() < 0 or arr.max() > t):
            raise DataError(f"{where}: '{key}' out of range [0, {t}]")
    cl = split.classification_labels
    if cl.size and (cl.min() < 0 or cl.max() > 2):
        raise DataError(f"{where}: 'classification_labels' must be in {{0, 1, 2}}")


def validate_dataset(ds: MMDataset, expected_counts: dict[str, int] | None = None) -> None:
    """Check every split and that feature dims and lengths agree across splits."""
    missing = [s for s in SPLITS if s not in ds.splits]
    if missing:
        raise DataError(f"{ds.source or ds.name}: missing split(s) {', '.join(missing)}")
    ref = ds.splits["train"]
    for name in SPLITS:
        split = ds.splits[name]
        where = f"{ds.source or ds.name} [{name}]"
        validate_split(split, where)
        for key in ("text", "audio", "vision"):
            if getattr(split, key).shape[1:] != getattr(ref, key).shape[1:]:
                raise DataError(
                    f"{where}: '{key}' shape {getattr(split, key).shape[1:]} differs from train "
                    f"{getattr(ref, key).shape[1:]}"
                )
        if expected_counts and name in expected_counts and len(split) != expected_counts[name]:
            raise DataError(f"{where}: {len(split)} samples, expected {expected_counts[name]}")
