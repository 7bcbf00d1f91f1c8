"""Real data formats -> `MMDataset`: MMSA pickles, CIDer OOD pickles, CASP cross pickles,
MMSA `label.csv`; and the one MMSA pickle writer.

Why here: every file format is converted once, at load, into the schema of `schema.py`
(float32 features, int64 ids/lengths/classes, numpy `str` ids and transcripts), so nothing
downstream sees a format. Shapes are read from the arrays, never from configuration.

Layouts accepted under a data root (first match wins):
  MMSA      <root>/{MOSI,CMU-MOSI}/Processed/{aligned,unaligned}_50.pkl   (same for MOSEI)
  CIDer OOD <root>/OOD_{MOSI,MOSEI}/{binary,seven}/{MOSI,MOSEI}_{aligned,unaligned}_50.pkl
  CASP      <root>/MSA_cross_datasets/{mosi,mosei}.pkl
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from mer_bench.data.safe_pickle import safe_load_with_hash
from mer_bench.data.schema import SPLITS, MMDataset, Split, three_class, validate_dataset
from mer_bench.errors import DataError, UserError

# Key order of an MMSA split dict, as MMSA writes it.
MMSA_KEYS = (
    "raw_text",
    "text",
    "text_bert",
    "audio",
    "vision",
    "audio_lengths",
    "vision_lengths",
    "regression_labels",
    "classification_labels",
    "annotations",
    "id",
)
REQUIRED_KEYS = ("text", "audio", "vision", "regression_labels")
ANNOTATIONS = np.array(["Negative", "Neutral", "Positive"])
DATA_HINT = "set --data-root or $MER_BENCH_DATA to the directory that holds them"
PICKLE_PROTOCOL = 4


# ----------------------------------------------------------------------------- conversion
def _float32(x: Any, where: str, key: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: '{key}' is not a numeric array ({e})") from None
    return arr


def _int64(x: Any, where: str, key: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise DataError(f"{where}: '{key}' contains NaN or infinite values")
            if not np.array_equal(arr, np.round(arr)):
                raise DataError(f"{where}: '{key}' has non-integer values")
        return np.asarray(arr, dtype=np.int64)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: '{key}' is not an integer array ({e})") from None


def _strings(x: Any, n: int, where: str, key: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.size == n else arr
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{where}: '{key}' has shape {arr.shape}, expected ({n},)")
    width = arr.dtype.itemsize // (4 if arr.dtype.kind == "U" else 1)
    if arr.dtype.kind in "US" and width > MAX_TEXT_CHARS:
        raise DataError(f"{where}: '{key}' holds strings longer than {MAX_TEXT_CHARS} characters")
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8", errors="replace")
    values = [str(v) for v in arr.tolist()]
    long = next((i for i, v in enumerate(values) if len(v) > MAX_TEXT_CHARS), None)
    if long is not None:  # one huge field would widen every row of a fixed-width array
        raise DataError(
            f"{where}: '{key}' entry {long} is longer than {MAX_TEXT_CHARS} characters"
        )
    return np.array(values, dtype=str) if n else np.array([], dtype=str)


def _labels(x: Any, where: str, key: str) -> np.ndarray:
    arr = _float32(x, where, key)
    if arr.ndim > 1 and arr.size == arr.shape[0]:  # (N, 1) or (N, 1, 1) label layouts
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"{where}: '{key}' must be 1-D (N,), got {arr.shape}")
    return arr


def convert_split(
    d: Any, where: str, aligned: bool | None = None, split_name: str = "split"
) -> tuple[Split, bool]:
    """One MMSA split dict -> (`Split`, aligned). `aligned=None` infers it from the shapes
    (all three sequence lengths equal). Raises `DataError` naming `where` and the key."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a dict of arrays, got {type(d).__name__}")
    for key in REQUIRED_KEYS:
        if key not in d:
            raise DataError(f"{where}: missing key '{key}'")
    text = _float32(d["text"], where, "text")
    vision = _float32(d["vision"], where, "vision")
    audio = _float32(d["audio"], where, "audio")
    for key, arr in (("text", text), ("audio", audio), ("vision", vision)):
        if arr.ndim != 3:
            raise DataError(f"{where}: '{key}' must be 3-D (N, T, D), got shape {arr.shape}")
    neg_inf = np.isneginf(audio)
    if neg_inf.any():  # published MOSEI audio has -inf (log of zero energy): MMSA sets it to 0
        if not audio.flags.writeable:
            audio = audio.copy()
        audio[neg_inf] = 0.0
    del neg_inf
    y = _labels(d["regression_labels"], where, "regression_labels")
    n = y.shape[0]

    text_bert = None
    if d.get("text_bert") is not None:
        text_bert = _int64(d["text_bert"], where, "text_bert")
        if text_bert.ndim != 3 or text_bert.shape[0] != n or text_bert.shape[1] != 3:
            raise DataError(f"{where}: 'text_bert' must be (N, 3, L), got {text_bert.shape}")
    if aligned is None:
        aligned = text.shape[1] == audio.shape[1] == vision.shape[1]
    if text_bert is not None:
        text_len = text_bert[:, 1, :].sum(axis=1).astype(np.int64)
    else:
        text_len = np.full(n, text.shape[1], dtype=np.int64)

    lengths = {}
    for key in ("audio_lengths", "vision_lengths"):
        if aligned or d.get(key) is None:
            # MMSA and CIDer use the text lengths for aligned data (frames follow the tokens)
            lengths[key] = text_len.copy()
        else:
            arr = _int64(d[key], where, key).reshape(-1)
            lengths[key] = arr
    if d.get("classification_labels") is not None:
        cls = _int64(_labels(d["classification_labels"], where, "classification_labels"),
                     where, "classification_labels")
    else:
        cls = three_class(y)
    ids = (
        _strings(d["id"], n, where, "id")
        if d.get("id") is not None
        else np.array([f"{split_name}_{i}" for i in range(n)], dtype=str)
    )
    raw = (
        _strings(d["raw_text"], n, where, "raw_text")
        if d.get("raw_text") is not None
        else np.full(n, "", dtype=str)
    )
    split = Split(
        text=text,
        audio=audio,
        vision=vision,
        audio_lengths=lengths["audio_lengths"],
        vision_lengths=lengths["vision_lengths"],
        regression_labels=y,
        classification_labels=cls,
        id=ids,
        raw_text=raw,
        text_bert=text_bert,
    )
    return split, bool(aligned)


def dataset_from_obj(
    obj: Any,
    source: str,
    name: str,
    variant: str | None = None,
    sha256: str = "",
    expected_counts: dict[str, int] | None = None,
    meta: dict | None = None,
) -> MMDataset:
    """A loaded pickle object (dict train/valid/test -> split dicts) -> validated `MMDataset`."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict with keys train/valid/test, got {type(obj).__name__}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise DataError(f"{source}: missing split(s) {', '.join(missing)}")
    aligned = None if variant is None else variant == "aligned"
    splits: dict[str, Split] = {}
    for s in SPLITS:
        splits[s], aligned = convert_split(obj[s], f"{source} [{s}]", aligned, s)
    ds = MMDataset(
        name=name,
        variant="aligned" if aligned else "unaligned",
        splits=splits,
        source=source,
        sha256=sha256,
        meta=dict(meta or {}),
    )
    validate_dataset(ds, expected_counts)
    return ds


def read_mmsa_pickle(
    path: str | os.PathLike,
    name: str | None = None,
    variant: str | None = None,
    expected_counts: dict[str, int] | None = None,
    meta: dict | None = None,
) -> MMDataset:
    """Read an MMSA-format pickle (plain or joblib) safely into a validated `MMDataset`.

    `variant=None` infers aligned/unaligned from the shapes. For aligned data the audio and
    vision lengths are the text lengths (sum of the text_bert mask), as MMSA and CIDer do.
    """
    path = Path(path)
    obj, sha = safe_load_with_hash(path)
    return dataset_from_obj(
        obj, str(path), name or path.stem, variant, sha, expected_counts, meta
    )


# ----------------------------------------------------------------------------- writing
class StreamDict:
    """A dict written item by item: values may be produced lazily by an iterator, so a large
    dataset is pickled without holding every array in memory at once."""

    def __init__(self, items: Iterable[tuple[str, Any]]) -> None:
        self.items = items


class _StreamPickler(pickle._Pickler):  # Python pickler: its dispatch table is extensible
    dispatch = pickle._Pickler.dispatch.copy()

    def save_stream_dict(self, obj: StreamDict) -> None:
        self.write(pickle.EMPTY_DICT)
        for key, value in obj.items:
            self.save(key)
            self.save(value)
            self.write(pickle.SETITEM)

    dispatch[StreamDict] = save_stream_dict


def write_pickle_stream(path: str | os.PathLike, obj: Any) -> Path:
    """Pickle `obj` (which may contain `StreamDict`s) to `path` atomically: a temporary file in
    the same directory, then `os.replace`. Protocol 4, no memo (fast mode): identical inputs
    give identical bytes, and written arrays are released as soon as they are saved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            p = _StreamPickler(f, protocol=PICKLE_PROTOCOL)
            p.fast = True
            p.dump(obj)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def split_items(split: Split) -> Iterator[tuple[str, Any]]:
    """The MMSA key/value pairs of one split, in MMSA's key order."""
    values: dict[str, Callable[[], Any]] = {
        "raw_text": lambda: np.asarray(split.raw_text, dtype=str),
        "text": lambda: split.text,
        "text_bert": lambda: split.text_bert,
        "audio": lambda: split.audio,
        "vision": lambda: split.vision,
        "audio_lengths": lambda: np.asarray(split.audio_lengths, dtype=np.int64),
        "vision_lengths": lambda: np.asarray(split.vision_lengths, dtype=np.int64),
        "regression_labels": lambda: np.asarray(split.regression_labels, dtype=np.float32),
        "classification_labels": lambda: np.asarray(split.classification_labels, dtype=np.int64),
        "annotations": lambda: ANNOTATIONS[np.asarray(split.classification_labels)],
        "id": lambda: np.asarray(split.id, dtype=str),
    }
    for key in MMSA_KEYS:
        if key == "text_bert" and split.text_bert is None:
            continue
        yield key, values[key]()


def write_mmsa_pickle(ds: MMDataset, path: str | os.PathLike) -> Path:
    """Write `ds` in exactly the MMSA layout (dict train/valid/test -> MMSA keys)."""
    return write_pickle_stream(
        path, StreamDict((s, StreamDict(split_items(ds.splits[s]))) for s in SPLITS)
    )


# ----------------------------------------------------------------------------- locating files
_DS_DIRS = {"mosi": ("MOSI", "CMU-MOSI"), "mosei": ("MOSEI", "CMU-MOSEI")}


def _check_ds(ds: str) -> str:
    key = ds.lower().replace("synth-", "")
    if key not in _DS_DIRS:
        raise UserError(f"unknown real dataset {ds!r}; choose mosi or mosei")
    return key


def _first_existing(candidates: list[Path], what: str) -> Path:
    for p in candidates:
        if p.is_file():
            return p
    tried = ", ".join(str(p) for p in candidates)
    raise UserError(f"{what} not found; tried: {tried}; {DATA_HINT}")


def mmsa_candidates(root: Path, ds: str, variant: str) -> list[Path]:
    key = _check_ds(ds)
    return [root / d / "Processed" / f"{variant}_50.pkl" for d in _DS_DIRS[key]]


def find_mmsa_file(root: str | os.PathLike | None, ds: str, variant: str) -> Path:
    """The MMSA feature pickle for `ds` ('mosi'/'mosei') and `variant` under the data root."""
    from mer_bench.paths import data_root

    if variant not in ("aligned", "unaligned"):
        raise UserError(f"unknown variant {variant!r}; choose aligned or unaligned")
    base = data_root(root)
    return _first_existing(mmsa_candidates(base, ds, variant), f"{ds.upper()} {variant} features")


def ood_path(root: str | os.PathLike | None, ds: str, task: str, variant: str) -> Path:
    from mer_bench.paths import data_root

    key = _check_ds(ds).upper()
    if task not in ("binary", "seven"):
        raise UserError(f"unknown task {task!r}; choose binary or seven")
    base = data_root(root)
    return _first_existing(
        [base / f"OOD_{key}" / task / f"{key}_{variant}_50.pkl"],
        f"CIDer OOD {key} {task} {variant} pickle",
    )


def read_cider_ood(
    root: str | os.PathLike | None, ds: str, task: str = "binary", variant: str = "unaligned"
) -> MMDataset:
    """CIDer's published OOD repartition (joblib-written MMSA pickles, one per task)."""
    path = ood_path(root, ds, task, variant)
    return read_mmsa_pickle(
        path, name=_check_ds(ds), variant=variant,
        meta={"distribution": "ood", "task": task, "origin": "CIDer OOD release"},
    )


def casp_path(root: str | os.PathLike | None, ds: str) -> Path:
    from mer_bench.paths import data_root

    key = _check_ds(ds)
    base = data_root(root)
    return _first_existing(
        [base / "MSA_cross_datasets" / f"{key}.pkl"], f"CASP cross-dataset {key} pickle"
    )


def read_casp(root: str | os.PathLike | None, ds: str) -> MMDataset:
    """CASP's cross-dataset pickle `<root>/MSA_cross_datasets/{mosi,mosei}.pkl`."""
    return read_casp_file(casp_path(root, ds), _check_ds(ds), "CASP cross-dataset release")


def read_casp_file(path: str | os.PathLike, name: str, origin: str) -> MMDataset:
    """A pickle in CASP's cross-dataset format (shared 768/25/171 features, aligned).

    CASP documents only text/audio/vision/regression_labels; `text_bert` (which CIDer's cross
    run reads), `id` and `raw_text` are used when present. There are no lengths: with
    `text_bert` they come from its mask, without it every position counts as valid. The 3-class
    target always comes from the sign of the regression labels, as CIDer does for these files.
    """
    obj, sha = safe_load_with_hash(Path(path))
    if isinstance(obj, dict):
        for s in SPLITS:
            if isinstance(obj.get(s), dict):
                obj[s] = {k: v for k, v in obj[s].items() if k != "classification_labels"}
    return dataset_from_obj(obj, str(path), name, "aligned", sha, meta={"origin": origin})


# ----------------------------------------------------------------------------- label.csv
LABEL_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")  # `annotation` is optional
LABEL_RANGE = (-3.0, 3.0)  # MOSI/MOSEI sentiment scale
MAX_TEXT_CHARS = 20_000  # a transcript longer than this is not an utterance


def annotation_of(labels: np.ndarray) -> np.ndarray:
    """MMSA's `annotation` from the label's sign (what several MMSA-derived copies omit)."""
    return np.where(labels > 0, "Positive", np.where(labels < 0, "Negative", "Neutral"))
MODES = frozenset(SPLITS)


def read_label_csv(path: str | os.PathLike | IO[str]):
    """MMSA's `label.csv` -> DataFrame with video_id, clip_id, text, label, annotation, mode
    and `id` = "{video_id}$_${clip_id}" (MMSA's id). Extra columns are kept."""
    import pandas as pd

    where = str(path)
    try:
        df = pd.read_csv(
            path, dtype={"video_id": str, "clip_id": str, "text": str}, keep_default_na=False
        )
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{where}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; MMSA label.csv needs "
            f"{', '.join(LABEL_COLUMNS)} (annotation is optional)"
        )
    long = np.flatnonzero(df["text"].astype(str).str.len().to_numpy() > MAX_TEXT_CHARS)
    if len(long):
        raise DataError(
            f"{where}: transcript at data row {int(long[0]) + 1} is longer than "
            f"{MAX_TEXT_CHARS} characters"
        )
    bad = sorted(set(df["mode"].astype(str)) - MODES)
    if bad:
        raise DataError(f"{where}: bad mode value(s) {', '.join(map(repr, bad[:5]))}; expected train, valid or test")
    labels = pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(labels).all():
        row = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise DataError(
            f"{where}: non-numeric or non-finite label {df['label'].iloc[row]!r} at data row {row + 1}"
        )
    low, high = LABEL_RANGE
    out = np.flatnonzero((labels < low) | (labels > high))
    if len(out):
        row = int(out[0])
        raise DataError(
            f"{where}: label {labels[row]:g} at data row {row + 1} is outside [{low:g}, {high:g}]"
        )
    df["label"] = labels
    if "annotation" not in df.columns:
        df["annotation"] = annotation_of(labels)
    df["id"] = df["video_id"].astype(str) + "$_$" + df["clip_id"].astype(str)
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise DataError(f"{where}: duplicate clip id {dup!r}")
    return df
