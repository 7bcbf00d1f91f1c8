"""Real-text track: an MMSA pickle from a real `label.csv`, with real WordPiece ids and real
encoder features; audio and vision are synthetic.

Why: the real MOSI/MOSEI feature files cannot be shipped, but their transcripts and labels can
be. This track keeps the text side real (the bert-base-uncased WordPiece ids MMSA's `text_bert`
uses, and token features from a local encoder, 384-d for MiniLM), so text-side behaviour
(counterfactual bias words, OOD word shifts, text-missing scenarios) is measured on real
language. Audio and vision are drawn label-conditioned by a small frame model of this module
(AR(1) sequences, a few label-carrying dims, per-video speaker offsets, MOSI or MOSEI dims and
lengths) and are marked synthetic in the `<out>.json` provenance sidecar.

Splits come from the csv's `mode` column; ids are `{video_id}$_${clip_id}` as in MMSA.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mer_bench.data.schema import SPLITS, MMDataset, Split, three_class, validate_dataset
from mer_bench.errors import UserError

TEXT_LEN = 50
FORMAT_VERSION = 1
DEFAULT_SEED = 20250101


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MAX_FEATURE = 1e4  # encoder features are O(1); larger values mean a broken encoder or cache


def _check_features(x: np.ndarray, where: str) -> None:
    if not np.isfinite(x).all():
        raise UserError(f"{where}: non-finite values")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > MAX_FEATURE:
        raise UserError(f"{where}: magnitude {peak:.3g} exceeds {MAX_FEATURE:g}")


def default_out(label_csv: str | os.PathLike, encoder: str, variant: str) -> Path:
    """cache_dir()/realtext/<csv-stem>_<encoder>_<variant>.pkl"""
    from mer_bench.paths import cache_dir

    enc = "minilm" if str(encoder) == "minilm" else Path(str(encoder)).name or "encoder"
    return cache_dir() / "realtext" / f"{Path(label_csv).stem}_{enc}_{variant}.pkl"


# (d_audio, d_vision, unaligned len_audio, len_vision, label-carrying dims a, v): MMSA's shapes
SHAPES = {"mosi": (5, 20, 375, 500, 2, 6), "mosei": (74, 35, 500, 500, 12, 8)}
AV_NOISE = 2.4  # sd of a modality's per-sample view of the label (text-like data: weaker)
AR_PHI = 0.9  # frame-to-frame correlation
SPEAKER_SD = 0.35  # per-video offset


def _shape_name(label_csv: Path, n: int) -> str:
    """MOSEI shapes for a csv that names MOSEI (or is MOSEI-sized), else MOSI shapes."""
    where = str(label_csv).lower()
    return "mosei" if "mosei" in where or n > 5000 else "mosi"


def _frames(y, lengths, video, t_len, d, n_signal, rng) -> np.ndarray:
    """(N, t_len, d) label-conditioned AR(1) frames, zero after each sample's length.

    A noisy per-sample view s = y + AV_NOISE * e drives `n_signal` randomly signed dims (the
    rest are noise), plus a per-video offset; dims get fixed random offsets and scales so the
    features are not standardised. Deterministic in `rng`.
    """
    n = len(y)
    loading = np.zeros(d, dtype=np.float32)
    loading[:n_signal] = rng.choice([-1.0, 1.0], n_signal) * rng.uniform(0.7, 1.3, n_signal)
    loading = loading[rng.permutation(d)]
    offset = rng.normal(0, 1, d).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, d).astype(np.float32)
    s = y + AV_NOISE * rng.standard_normal(n)
    speaker = SPEAKER_SD * rng.standard_normal((int(video.max()) + 1 if n else 1, d))
    mean = (0.5 * s[:, None] * loading[None, :] + speaker[video]).astype(np.float32)
    x = rng.standard_normal((n, t_len, d), dtype=np.float32)
    x[:, 1:] *= np.float32(np.sqrt(1 - AR_PHI**2))
    for t in range(1, t_len):
        x[:, t] += np.float32(AR_PHI) * x[:, t - 1]
    x += mean[:, None, :]
    x *= scale
    x += offset
    x *= (np.arange(t_len)[None, :] < lengths[:, None])[:, :, None]
    return x


def _audio_vision(
    y: np.ndarray, video: np.ndarray, t_len: np.ndarray, variant: str, shape: str,
    seed: int, split_index: int,
) -> dict[str, np.ndarray]:
    """Synthetic audio/vision for one split; unaligned lengths scale with the text length."""
    d_a, d_v, len_a, len_v, sig_a, sig_v = SHAPES[shape]
    la, lv = (TEXT_LEN, TEXT_LEN) if variant == "aligned" else (len_a, len_v)
    lrng = np.random.default_rng([seed, 16, split_index])
    if variant == "aligned":
        a_len, v_len = t_len.copy(), t_len.copy()
    else:
        n = len(y)
        a_len = np.clip(np.round(t_len * la / TEXT_LEN * lrng.uniform(0.55, 1.0, n)), 4, la)
        v_len = np.clip(np.round(t_len * lv / TEXT_LEN * lrng.uniform(0.55, 1.0, n)), 4, lv)
        a_len, v_len = a_len.astype(np.int64), v_len.astype(np.int64)
    audio = _frames(y, a_len, video, la, d_a, sig_a, np.random.default_rng([seed, 14, split_index]))
    vision = _frames(y, v_len, video, lv, d_v, sig_v, np.random.default_rng([seed, 15, split_index]))
    return {"audio": audio, "vision": vision, "audio_lengths": a_len, "vision_lengths": v_len}


def build_from_label_csv(
    label_csv: str | os.PathLike,
    encoder: str = "minilm",
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    variant: str = "unaligned",
) -> Path:
    """Build `<out>` (MMSA pickle) and `<out>.json` (provenance) from a real label.csv."""
    from mer_bench.data.encoders import cached_features, load_encoder, tokenize
    from mer_bench.data.mmsa import read_label_csv, write_mmsa_pickle

    if variant not in ("aligned", "unaligned"):
        raise UserError(f"unknown variant {variant!r}; choose aligned or unaligned")
    csv = Path(label_csv)
    df = read_label_csv(csv)
    if len(df) == 0:
        raise UserError(f"{csv}: no rows")
    counts = {s: int((df["mode"] == s).sum()) for s in SPLITS}
    if min(counts.values()) == 0:
        raise UserError(f"{csv}: every split needs rows in `mode`, got {counts}")
    seed = DEFAULT_SEED if seed is None else int(seed)
    csv_sha = _sha256(csv)
    out_path = Path(out) if out is not None else default_out(csv, encoder, variant)

    texts = df["text"].astype(str).tolist()
    ids, mask, segments = tokenize(texts, encoder, max_len=TEXT_LEN)
    enc = load_encoder(encoder)
    key = f"realtext/{csv_sha}/{enc.name}/{TEXT_LEN}"
    feats = cached_features(key, lambda: enc.encode(ids, mask))
    if feats.shape != (len(df), TEXT_LEN, enc.dim):  # stale or foreign cache entry
        feats = enc.encode(ids, mask)
    _check_features(feats, f"{enc.name} features of {csv}")

    shape = _shape_name(csv, len(df))
    video_codes = {v: i for i, v in enumerate(dict.fromkeys(df["video_id"].astype(str)))}
    y_all = df["label"].to_numpy(dtype=np.float32)
    splits: dict[str, Split] = {}
    for i, s in enumerate(SPLITS):
        rows = np.flatnonzero(df["mode"].to_numpy() == s)
        y = y_all[rows]
        video = np.array([video_codes[v] for v in df["video_id"].astype(str).iloc[rows]])
        video = np.unique(video, return_inverse=True)[1]  # dense 0..V-1 within the split
        t_len = mask[rows].sum(axis=1).astype(np.int64)
        av = _audio_vision(y, video, t_len, variant, shape, seed, i)
        splits[s] = Split(
            text=np.ascontiguousarray(feats[rows], dtype=np.float32),
            audio=av["audio"],
            vision=av["vision"],
            audio_lengths=av["audio_lengths"],
            vision_lengths=av["vision_lengths"],
            regression_labels=y,
            classification_labels=three_class(y),
            id=df["id"].to_numpy(dtype=str)[rows],
            raw_text=np.asarray(texts, dtype=str)[rows],
            text_bert=np.stack([ids[rows], mask[rows], segments[rows]], axis=1),
        )
    ds = MMDataset(name=csv.stem, variant=variant, splits=splits, source=str(csv))
    validate_dataset(ds, counts)
    write_mmsa_pickle(ds, out_path)
    meta = {
        "generator": "mer-bench realtext",
        "version": FORMAT_VERSION,
        "source_csv": str(csv),
        "source_csv_sha256": csv_sha,
        "encoder": enc.describe(),
        "tokenizer": "bert-base-uncased WordPiece (from the encoder directory)",
        "text_len": TEXT_LEN,
        "variant": variant,
        "seed": seed,
        "counts": counts,
        "dims": list(ds.spec.dims),
        "lens": list(ds.spec.lens),
        "real_modalities": ["text"],
        "synthetic_modalities": ["audio", "vision"],
        "synthetic_model": f"label-conditioned AR(1) frames (realtext v{FORMAT_VERSION}), "
        f"{shape.upper()} shapes, noise sd {AV_NOISE}",
        "sha256": _sha256(out_path),
    }
    side = Path(f"{out_path}.json")
    tmp = side.with_name(f".{side.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, side)
    return out_path
