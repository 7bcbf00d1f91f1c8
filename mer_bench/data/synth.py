"""Embedded synthetic datasets `synth-mosi` and `synth-mosei`, written as MMSA pickles.

Why: the benchmark must run end to end with no download. The synthetic sets have MOSI's /
MOSEI's split sizes, feature dims, sequence lengths and class priors, and real structure:

- labels: the train split reproduces the real train class counts exactly, both the 7-class
  counts (round_half_even(clip(y))) and the neg/zero/pos counts, so some labels are exactly 0.
  Valid/test (and any `--scale`) take the same nine-cell proportions, rounded by largest
  remainder;
- text: sentences over a generated vocabulary of many individually rare sentiment words with
  polarity and strength (as in real transcripts, sentiment is spread over many words), negators
  that flip the next sentiment word, neutral filler (Zipf-like), and *spurious topic words*:
  `n_topics` topics whose label lean is graded (from -1 to 1 times `topic_lean`, shared by all
  splits, scaled per split by `spurious`), an utterance mixing a main topic with a second one
  (topics entangled with each other), and topic words that also carry a little sentiment
  (`topic_sentiment`: entangled with the sentiment words' direction). Each word is
  one WordPiece-like id in [1000, 30522); `text_bert` has [CLS]/[SEP]/padding as MMSA builds it,
  and `raw_text` spells the same words. Text features are the `EmbeddingTableEncoder` vectors
  of the ids, plus a small word-class component (so that, as with BERT features, sentiment is
  linearly readable) and contextual noise; padding rows are zero;
- audio/vision: per-frame AR(1) sequences; a few dims carry a noisy copy of the label, the rest
  are noise; a per-video (speaker) offset; variable valid lengths with zero padding.

Cross-dataset twins `synth-mosi-casp` / `synth-mosei-casp` imitate CASP's release that CIDer's
cross setting reads (768/25/171, aligned, 44 / 75 positions, no length or class-label keys).
They share the seed's vocabulary, text encoder and feature styles, so a model trained on one
meets the other's labelling, utterance lengths and a dataset-wide audio/vision offset
(`domain_shift`) - a shift, not a different world.

Everything is drawn from `numpy.random.Generator`s seeded by (seed, component, split), so the
same arguments give a byte-identical file. Calibration (see benchmarks/calibrate_synth.py):
text alone is the strongest modality, audio and vision are clearly above chance, and all
three together beat text alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mer_bench.data.encoders import EmbeddingTableEncoder
from mer_bench.data.manifest import file_sha256
from mer_bench.data.mmsa import ANNOTATIONS, StreamDict, write_pickle_stream
from mer_bench.data.schema import CLS_ID, SEP_ID, SPLITS, seven_class, three_class
from mer_bench.errors import UserError

DEFAULT_SEED = 20250101
GENERATOR_VERSION = 2  # 2: graded, entangled topic words (OOD calibration)
TEXT_LEN = 50
MIN_PER_SPLIT = 8


@dataclass(frozen=True)
class Profile:
    """What a synthetic set imitates: sizes, dims, lengths and train class counts."""

    name: str
    counts: tuple[int, int, int]  # train, valid, test
    seven: tuple[int, ...]  # train 7-class counts (classes 0..6)
    three: tuple[int, int, int]  # train neg / zero / pos counts
    d_audio: int
    d_vision: int
    len_audio: int  # unaligned sequence lengths
    len_vision: int
    audio_signal_dims: int
    vision_signal_dims: int
    knobs: tuple[tuple[str, Any], ...] = ()  # calibration overrides of the `Knobs` defaults
    text_len: int = TEXT_LEN  # token positions (MMSA: 50; CASP's cross release: 44 / 75)
    casp: bool = False  # CASP cross-dataset release: aligned only, no per-modality lengths


PROFILES: dict[str, Profile] = {
    "synth-mosi": Profile(
        "synth-mosi", (1284, 229, 686), (24, 199, 227, 248, 227, 313, 46), (552, 53, 679),
        d_audio=5, d_vision=20, len_audio=375, len_vision=500,
        audio_signal_dims=2, vision_signal_dims=6,
    ),
    "synth-mosei": Profile(
        "synth-mosei", (16326, 1871, 4659), (311, 1305, 2039, 6798, 4117, 1549, 207),
        (4738, 3540, 8048), d_audio=74, d_vision=35, len_audio=500, len_vision=500,
        audio_signal_dims=6, vision_signal_dims=4,
        # MOSEI labels crowd near 0 (42% in [-0.5, 0.5]): words react more to small sentiment;
        # shorter utterances with a stronger word-class component keep the OOD probe drop
        # near the real-data band (benchmarks/calibrate_synth.py)
        knobs=(
            ("text_noise", 0.15), ("polarity_sharpness", 12.0), ("sentiment_base", 0.6),
            ("sentiment_slope", 3.0), ("unique_audio", 0.5), ("unique_vision", 0.5),
            ("audio_noise", 0.6), ("vision_noise", 0.6), ("audio_share", 0.3),
            ("vision_share", 0.3), ("word_class_gain", 1.4), ("words_median", 7.0),
        ),
    ),
    # CASP-shaped cross-dataset pair (what CIDer's cross setting reads): MMSA-FET features with
    # shared dims 768/25/171, aligned, 44 (MOSI) / 75 (MOSEI) positions, the cross train class
    # counts CIDer's priors imply (1274 / 16245); valid/test sizes are not published, MMSA's are
    # used. Same seed -> same vocabulary, encoder and feature styles: one "world", two datasets.
    "synth-mosi-casp": Profile(
        "synth-mosi-casp", (1274, 229, 686), (24, 198, 227, 244, 227, 308, 46), (551, 50, 673),
        d_audio=25, d_vision=171, len_audio=44, len_vision=44,
        audio_signal_dims=4, vision_signal_dims=12, text_len=44, casp=True,
    ),
    "synth-mosei-casp": Profile(
        "synth-mosei-casp", (16245, 1871, 4659), (311, 1301, 2036, 6746, 4098, 1546, 207),
        (4728, 3505, 8012), d_audio=25, d_vision=171, len_audio=75, len_vision=75,
        audio_signal_dims=4, vision_signal_dims=12, text_len=75, casp=True,
        # MOSEI's labelling (as synth-mosei), longer utterances, and a recording-condition shift
        knobs=(
            ("text_noise", 0.15), ("polarity_sharpness", 12.0), ("sentiment_base", 0.6),
            ("sentiment_slope", 3.0), ("unique_audio", 0.5), ("unique_vision", 0.5),
            ("audio_noise", 0.6), ("vision_noise", 0.6), ("audio_share", 0.3),
            ("vision_share", 0.3), ("words_median", 16.0), ("domain_shift", 0.25),
        ),
    ),
}
CROSS_PROFILES = {"synth-mosi": "synth-mosi-casp", "synth-mosei": "synth-mosei-casp"}


@dataclass(frozen=True)
class Knobs:
    """Calibration knobs (recorded in the sidecar JSON).

    Sentiment model: audio and vision each carry a *unique* part of the sentiment that the
    words miss (`unique_*`: e.g. an enthusiastic "it was fine"); the sentence expresses
    t = y - u_audio - u_vision + text noise, audio sees share * y + u_audio + noise, vision
    likewise. So text alone is strongest, each non-verbal modality is weak alone, and the
    three together recover y far better than text alone.
    """

    text_noise: float = 0.35  # sd of extra noise on the sentence's expressed sentiment
    unique_audio: float = 1.0  # sd of the sentiment part only audio carries
    unique_vision: float = 1.0
    audio_share: float = 0.35  # how much of y itself audio carries
    vision_share: float = 0.35
    audio_noise: float = 0.7  # sd of audio's sample-level noise
    vision_noise: float = 0.7
    sentiment_base: float = 0.3  # Poisson mean of sentiment words at |sentiment| = 0
    sentiment_slope: float = 1.5  # extra sentiment words per unit |sentiment|
    polarity_sharpness: float = 6.0  # P(positive word) = sigmoid(sharpness * sentiment)
    negation_prob: float = 0.1  # a sentiment word is negated (negator + opposite word)
    # topic k's lean b_k * spurious[split]; P(main topic k | y) ~ exp(b_k tanh(y))
    spurious: tuple[float, float, float] = (1.0, 1.0, 1.0)
    topic_lean: float = 2.0  # leans are graded over [-topic_lean, topic_lean]
    n_topics: int = 24
    second_topic: float = 0.4  # share of an utterance's topic words from a second topic
    topic_sentiment: float = 0.3  # each topic word's sentiment component: lean x this
    topic_words_mean: float = 1.6
    word_class_gain: float = 0.7  # sentiment/topic directions added to word vectors
    context_mix: float = 0.15  # each token feature mixes in its neighbours
    context_noise: float = 0.05  # per-element contextual noise
    frame_noise: float = 1.0  # AR(1) frame noise sd (in units of the signal loading)
    ar_phi: float = 0.9
    words_median: float = 11.0  # median words per utterance (lognormal)
    domain_shift: float = 0.0  # sd of a dataset-wide offset on audio/vision (cross pairs)
    speaker_sd: float = 0.35
    signal_gain: float = 0.6


@dataclass
class Vocabulary:
    words: list[str]
    ids: np.ndarray  # (V,) int64 token id of each word
    kind: list[str]  # positive | negative | negator | topic-<k> | filler
    polarity: np.ndarray  # (V,) -1, 0, +1
    strength: np.ndarray  # (V,) 0..3
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # group -> word indices
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # group -> Zipf probabilities

    def describe(self) -> list[dict]:
        return [
            {"word": w, "id": int(i), "kind": k, "polarity": int(p), "strength": int(s)}
            for w, i, k, p, s in zip(
                self.words, self.ids, self.kind, self.polarity, self.strength
            )
        ]


def profile(dataset: str) -> Profile:
    try:
        return PROFILES[dataset]
    except KeyError:
        raise UserError(
            f"unknown synthetic dataset {dataset!r}; choose one of: {', '.join(PROFILES)}"
        ) from None


# ----------------------------------------------------------------------------- labels
# Nine label cells: 7-class bins 0-2, bin 3 split into negative / exactly zero / positive,
# bins 4-6. Each cell's value range keeps round_half_even and the sign exact.
_CELLS = (
    (-3.0, -2.5), (-2.5, -1.5), (-1.5, -0.5), (-0.5, 0.0), (0.0, 0.0), (0.0, 0.5),
    (0.5, 1.5), (1.5, 2.5), (2.5, 3.0),
)


def train_cells(p: Profile) -> np.ndarray:
    """The nine cell counts implied by the train 7-class and neg/zero/pos counts."""
    s, (neg, zero, pos) = p.seven, p.three
    neg3 = neg - sum(s[:3])
    pos3 = pos - sum(s[4:])
    if neg3 < 0 or pos3 < 0 or neg3 + zero + pos3 != s[3]:
        raise ValueError(f"inconsistent class counts for {p.name}")
    return np.array([s[0], s[1], s[2], neg3, zero, pos3, s[4], s[5], s[6]], dtype=np.int64)


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    exact = weights / weights.sum() * total
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def split_counts(dataset: str, scale: float | None = None) -> dict[str, int]:
    """Samples per split: the real counts, times `scale` (at least MIN_PER_SPLIT each)."""
    p = profile(dataset)
    if scale is None or scale == 1:
        return dict(zip(SPLITS, p.counts))
    if not 0 < scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {scale}")
    return {s: max(MIN_PER_SPLIT, int(round(n * scale))) for s, n in zip(SPLITS, p.counts)}


def _cells_for(p: Profile, n: int) -> np.ndarray:
    cells = train_cells(p)
    return cells.copy() if n == cells.sum() else _largest_remainder(cells.astype(float), n)


def _draw_labels(p: Profile, n: int, rng: np.random.Generator) -> np.ndarray:
    counts = _cells_for(p, n)
    eps = 0.01  # with 2-decimal labels, keeps every value strictly inside its cell
    parts = []
    for (lo, hi), c in zip(_CELLS, counts):
        if lo == hi:
            parts.append(np.zeros(c))
            continue
        v = lo + eps + (hi - lo - 2 * eps) * rng.random(c)
        parts.append(np.round(v, 2))
    y = np.concatenate(parts).astype(np.float32)
    y = y[rng.permutation(n)]
    # the cells are exact by construction; keep the promise checked
    got = np.bincount(seven_class(y), minlength=7), np.bincount(three_class(y), minlength=3)
    want7 = counts[[0, 1, 2]].tolist() + [int(counts[3:6].sum())] + counts[[6, 7, 8]].tolist()
    want3 = [int(counts[:4].sum()), int(counts[4]), int(counts[5:].sum())]
    assert got[0].tolist() == want7 and got[1].tolist() == want3
    return y


def synth_labels(
    dataset: str, seed: int | None = None, scale: float | None = None
) -> dict[str, np.ndarray]:
    """Regression labels per split, without building any features (cheap)."""
    p = profile(dataset)
    seed = DEFAULT_SEED if seed is None else int(seed)
    counts = split_counts(dataset, scale)
    return {
        s: _draw_labels(p, counts[s], np.random.default_rng([seed, 1, i]))
        for i, s in enumerate(SPLITS)
    }


# ----------------------------------------------------------------------------- vocabulary
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_N_FILLER, _N_PER_STRENGTH, _N_TOPIC_WORDS, _N_NEGATORS = 700, 150, 10, 3
_MAX_TOPICS = 48
# The most frequent filler words are real English function words and transcript fillers, as in
# real transcripts: word statistics (OOD splits, CLUE-style) skip them as stop words, while the
# text features still carry them.
_STOP_FILLERS = tuple(
    """the i and it a to that you was of is so um in like uh this just but they he what its
    we be have on with for my me not do all know about there as really think very one if or
    at an yeah some would are because then well were his can me been get go had also she
    really mean thing kind""".split()
)


def _zipf(n: int, a: float = 1.05) -> np.ndarray:
    w = 1.0 / np.arange(2, n + 2, dtype=np.float64) ** a
    return w / w.sum()


def build_vocabulary(seed: int) -> Vocabulary:
    """Pseudo-words with kinds and WordPiece-like ids, deterministic in `seed`.

    Sentiment words are equally likely within their group (each rare, as real sentiment
    vocabulary is); filler and topic words follow Zipf-like frequencies."""
    rng = np.random.default_rng([seed, 0])
    sizes = {
        "filler": _N_FILLER,
        "negator": _N_NEGATORS,
        **{f"topic-{t}": _N_TOPIC_WORDS for t in range(_MAX_TOPICS)},
        **{f"positive-{s}": _N_PER_STRENGTH for s in (1, 2, 3)},
        **{f"negative-{s}": _N_PER_STRENGTH for s in (1, 2, 3)},
    }
    total = sum(sizes.values())
    stop = list(dict.fromkeys(_STOP_FILLERS))
    seen: set[str] = set(stop)
    words: list[str] = []
    while len(words) < total:
        k = int(rng.integers(1, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                    for _ in range(k))
        if w not in seen:
            seen.add(w)
            words.append(w)
    words[: len(stop)] = stop  # the head of the filler group (its most frequent words)
    ids = rng.choice(np.arange(1000, 30522), size=total, replace=False).astype(np.int64)
    kind: list[str] = []
    polarity = np.zeros(total, dtype=np.int64)
    strength = np.zeros(total, dtype=np.int64)
    groups: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}
    start = 0
    for g, n in sizes.items():
        idx = np.arange(start, start + n)
        base = g.split("-")[0]
        groups[g] = idx
        probs[g] = np.full(n, 1.0 / n) if base in ("positive", "negative") else _zipf(n)
        kind += [base if base in ("positive", "negative") else g] * n
        if base in ("positive", "negative"):
            polarity[idx] = 1 if base == "positive" else -1
            strength[idx] = int(g.split("-")[1])
        start += n
    return Vocabulary(words, ids, kind, polarity, strength, groups, probs)


def _pick(rng: np.random.Generator, vocab: Vocabulary, group: str, size: int) -> np.ndarray:
    return vocab.groups[group][rng.choice(len(vocab.groups[group]), size=size, p=vocab.probs[group])]


# ----------------------------------------------------------------------------- text
@dataclass
class TextPlan:
    words: np.ndarray  # (N, 48) word indices into the vocabulary, -1 = none
    n_words: np.ndarray  # (N,)
    text_bert: np.ndarray  # (N, 3, 50) int64
    raw_text: np.ndarray  # (N,) str


def _sentences(
    y: np.ndarray,
    t: np.ndarray,
    vocab: Vocabulary,
    knobs: Knobs,
    spurious: float,
    rng: np.random.Generator,
    text_len: int = TEXT_LEN,
) -> TextPlan:
    """Sentences expressing sentiment `t`; topic words correlate with the sign of `y`."""
    n, max_words = len(y), text_len - 2
    n_tok = np.round(rng.lognormal(np.log(knobs.words_median), 0.55, n))
    n_tok = np.clip(n_tok, 3, max_words).astype(np.int64)
    t = t + knobs.text_noise * rng.standard_normal(n)
    k = rng.poisson(knobs.sentiment_base + knobs.sentiment_slope * np.abs(t))
    k = np.minimum(k, n_tok // 2)
    u = np.arange(max_words)[None, :]
    is_sent = u < k[:, None]
    negated = is_sent & (rng.random((n, max_words)) < knobs.negation_prob)
    negated &= np.cumsum(negated, axis=1) + k[:, None] <= n_tok[:, None]
    m = negated.sum(1)
    h = np.minimum(rng.poisson(knobs.topic_words_mean, n), n_tok - k - m)
    units = n_tok - m  # sentiment + topic + filler units; negators ride along
    is_topic = (u >= k[:, None]) & (u < (k + h)[:, None])
    is_fill = (u >= (k + h)[:, None]) & (u < units[:, None])

    words = np.full((n, max_words), -1, dtype=np.int64)
    # sentiment words: meant polarity from t; negation flips the surface word
    pos = rng.random((n, max_words)) < 1.0 / (1.0 + np.exp(-knobs.polarity_sharpness * t[:, None]))
    surface_pos = pos ^ negated
    strength = np.clip(np.round(np.abs(t)[:, None] + 0.7 * rng.standard_normal((n, max_words))), 1, 3)
    for pol, sp in (("positive", True), ("negative", False)):
        for s in (1, 2, 3):
            sel = is_sent & (surface_pos == sp) & (strength == s)
            words[sel] = _pick(rng, vocab, f"{pol}-{s}", int(sel.sum()))
    words[is_topic] = _topic_words(y, is_topic, vocab, knobs, spurious, rng)
    words[is_fill] = _pick(rng, vocab, "filler", int(is_fill.sum()))

    # shuffle the units of each sentence, then put each negator right before its word
    keys = rng.random((n, max_words))
    keys[u >= units[:, None]] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    words = np.take_along_axis(words, order, axis=1)
    negated = np.take_along_axis(negated, order, axis=1)
    negators = _pick(rng, vocab, "negator", n * max_words).reshape(n, max_words)
    pair = np.full((n, 2 * max_words), -1, dtype=np.int64)
    pair[:, 0::2] = np.where(negated, negators, -1)
    pair[:, 1::2] = words
    compact = np.argsort(pair < 0, axis=1, kind="stable")
    tokens = np.take_along_axis(pair, compact, axis=1)[:, :max_words]
    assert ((tokens >= 0).sum(1) == n_tok).all()

    text_bert = np.zeros((n, 3, text_len), dtype=np.int64)
    ids = np.where(tokens >= 0, vocab.ids[np.maximum(tokens, 0)], 0)
    text_bert[:, 0, 0] = CLS_ID
    text_bert[:, 0, 1 : text_len - 1] = ids
    text_bert[np.arange(n), 0, n_tok + 1] = SEP_ID
    text_bert[:, 1, :] = np.arange(text_len)[None, :] < (n_tok + 2)[:, None]
    words_arr = np.asarray(vocab.words)
    raw = np.array(
        [" ".join(words_arr[row[: c]]) for row, c in zip(tokens, n_tok)], dtype=str
    )
    return TextPlan(tokens, n_tok, text_bert, raw)


def topic_leans(knobs: Knobs) -> np.ndarray:
    """Each topic's graded label lean, evenly spread over [-topic_lean, topic_lean] in a fixed
    interleaved order (neighbouring topics lean differently)."""
    t = int(knobs.n_topics)
    if not 1 <= t <= _MAX_TOPICS:
        raise UserError(f"n_topics must be in 1..{_MAX_TOPICS}, got {t}")
    grid = np.linspace(-1.0, 1.0, t) if t > 1 else np.zeros(1)
    order = np.argsort((np.arange(t) * 7) % t, kind="stable")  # deterministic interleave
    return knobs.topic_lean * grid[order]


def _topic_words(y, is_topic, vocab: Vocabulary, knobs: Knobs, spurious: float, rng) -> np.ndarray:
    """Topic words of each utterance: a main topic drawn with P(k | y) ~ exp(b_k tanh(y)),
    and a share `second_topic` of its topic words from a second topic drawn the same way."""
    n = len(y)
    b = topic_leans(knobs) * spurious
    logits = b[None, :] * np.tanh(y)[:, None]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cum = p.cumsum(1)
    main = (rng.random((n, 1)) > cum).sum(1)
    second = (rng.random((n, 1)) > cum).sum(1)
    topic = np.where(rng.random(is_topic.shape) < knobs.second_topic, second[:, None], main[:, None])
    topic = np.minimum(topic[is_topic], len(b) - 1)
    out = np.empty(len(topic), dtype=np.int64)
    for k in np.unique(topic):
        sel = topic == k
        out[sel] = _pick(rng, vocab, f"topic-{int(k)}", int(sel.sum()))
    return out


def _text_features(
    plan: TextPlan,
    vocab: Vocabulary,
    encoder: EmbeddingTableEncoder,
    knobs: Knobs,
    rng: np.random.Generator,
    directions: np.ndarray,
) -> np.ndarray:
    """(N, 50, d) token features: table vectors + word-class component + context, pads zero."""
    d = encoder.dim
    # rows: vocabulary words, then [CLS], then [SEP]
    table = encoder.table(np.concatenate([vocab.ids, [CLS_ID, SEP_ID]]))
    cls_dir, neg_dir = directions[0], directions[2]
    g = knobs.word_class_gain
    v, text_len = len(vocab.words), plan.text_bert.shape[2]
    table[:v] += g * (vocab.polarity * vocab.strength / 2.0)[:, None] * cls_dir[None, :]
    kinds = np.asarray(vocab.kind)
    topic_of = np.full(v, -1)
    for t in range(_MAX_TOPICS):
        topic_of[vocab.groups[f"topic-{t}"]] = t
    lean = np.zeros(v, dtype=np.float32)
    is_t = (topic_of >= 0) & (topic_of < len(topic_leans(knobs)))
    lean[is_t] = topic_leans(knobs)[topic_of[is_t]]
    # a topic's words share a direction (what a topic is to a sentence encoder), and carry a
    # little sentiment along the sentiment direction (entangled with the sentiment words)
    tdirs = directions[3:]
    table[:v] += g * np.where(is_t[:, None], tdirs[np.maximum(topic_of, 0)], 0.0)
    table[:v] += g * knobs.topic_sentiment * lean[:, None] * cls_dir[None, :]
    table[:v] += g * (kinds == "negator")[:, None] * neg_dir
    n = len(plan.n_words)
    rows = np.full((n, text_len), -1, dtype=np.int64)
    rows[:, 0] = v
    rows[:, 1 : text_len - 1] = plan.words
    rows[np.arange(n), plan.n_words + 1] = v + 1
    out = np.empty((n, text_len, d), dtype=np.float32)
    valid = rows >= 0
    chunk = 1024
    for s in range(0, n, chunk):
        r = rows[s : s + chunk]
        x = table[np.maximum(r, 0)]
        mix = np.zeros_like(x)
        mix[:, 1:] += x[:, :-1]
        mix[:, :-1] += x[:, 1:]
        vm = valid[s : s + chunk, :, None]
        x += knobs.context_mix * mix * vm
        x += knobs.context_noise * rng.standard_normal(x.shape, dtype=np.float32)
        x *= vm
        out[s : s + chunk] = x
    return out


# ----------------------------------------------------------------------------- audio/vision
def _videos(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Group n clips into videos of ~5-35 clips: (video index per clip, clip number)."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(np.clip(rng.poisson(18), 5, 40)))
    video = np.repeat(np.arange(len(sizes)), sizes)[:n]
    clip = np.concatenate([np.arange(1, s + 1) for s in sizes])[:n]
    return video, clip


def _sequences(
    s: np.ndarray,
    lengths: np.ndarray,
    video: np.ndarray,
    size: tuple[int, int],
    knobs: Knobs,
    rng: np.random.Generator,
    style: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """(N, T, D) AR(1) frames whose signal dims follow `s`, zero after each length."""
    t_len, d = size
    loading, offset, scale = style
    n = len(s)
    speaker = knobs.speaker_sd * rng.standard_normal((int(video.max()) + 1 if n else 1, d))
    mean = knobs.signal_gain * s[:, None] * loading[None, :] + speaker[video]
    out = np.empty((n, t_len, d), dtype=np.float32)
    phi = np.float32(knobs.ar_phi)
    innov = np.float32(math.sqrt(1 - knobs.ar_phi**2))
    steps = np.arange(t_len)[None, :]
    chunk = 512
    for a in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - a), t_len, d), dtype=np.float32)
        x[:, 1:] *= innov
        for t in range(1, t_len):
            x[:, t] += phi * x[:, t - 1]
        x *= np.float32(knobs.frame_noise)
        x += mean[a : a + chunk, None, :].astype(np.float32)
        x *= scale
        x += offset
        x *= (steps < lengths[a : a + chunk, None])[:, :, None]
        out[a : a + chunk] = x
    return out


def _style(d: int, n_signal: int, rng: np.random.Generator):
    loading = np.zeros(d, dtype=np.float32)
    loading[:n_signal] = rng.choice([-1.0, 1.0], n_signal) * rng.uniform(0.7, 1.3, n_signal)
    perm = rng.permutation(d)  # signal dims are not simply the first ones
    offset = rng.normal(0, 1, d).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, d).astype(np.float32)
    return loading[perm], offset, scale


# ----------------------------------------------------------------------------- assembly
def cache_path(
    dataset: str, variant: str = "unaligned", seed: int | None = None, scale: float | None = None
) -> Path:
    """cache_dir()/synth/{name}/{variant}_{text_len}[_scale{F}][_seed{N}].pkl (MMSA: _50)"""
    from mer_bench.paths import cache_dir

    name = f"{variant}_{profile(dataset).text_len}"
    if scale is not None and scale != 1:
        name += f"_scale{scale:g}"
    if seed is not None and int(seed) != DEFAULT_SEED:
        name += f"_seed{int(seed)}"
    return cache_dir() / "synth" / dataset / f"{name}.pkl"


def sidecar_path(pkl: str | os.PathLike) -> Path:
    return Path(f"{pkl}.json")


def _video_names(n_videos: int, rng: np.random.Generator, split: int) -> list[str]:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    names = ["".join(alphabet[rng.integers(len(alphabet), size=10)]) for _ in range(n_videos)]
    return [f"{'tvs'[split]}{nm}" for nm in names]


@dataclass
class SplitDraws:
    """Everything of one split except features: labels, sentences, ids, modality views."""

    y: np.ndarray
    plan: TextPlan
    ids: np.ndarray
    video: np.ndarray
    s_audio: np.ndarray
    s_vision: np.ndarray
    rng: np.random.Generator  # continues with the lengths draw


def _draw_split(
    y: np.ndarray, i: int, seed: int, vocab: Vocabulary, knobs: Knobs, text_len: int = TEXT_LEN
) -> SplitDraws:
    n = len(y)
    lrng = np.random.default_rng([seed, 9, i])
    u_a = knobs.unique_audio * lrng.standard_normal(n)
    u_v = knobs.unique_vision * lrng.standard_normal(n)
    s_a = knobs.audio_share * y + u_a + knobs.audio_noise * lrng.standard_normal(n)
    s_v = knobs.vision_share * y + u_v + knobs.vision_noise * lrng.standard_normal(n)
    plan = _sentences(
        y, y - u_a - u_v, vocab, knobs, knobs.spurious[i], np.random.default_rng([seed, 2, i]),
        text_len,
    )
    vrng = np.random.default_rng([seed, 6, i])
    video, clip = _videos(n, vrng)
    names = _video_names(int(video.max()) + 1, vrng, i)
    ids = np.array([f"{names[v]}$_${c}" for v, c in zip(video, clip)], dtype=str)
    return SplitDraws(y, plan, ids, video, s_a, s_v, vrng)


def synth_text(
    dataset: str, seed: int | None = None, scale: float | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], Vocabulary]:
    """Labels, ids, transcripts and text_bert of each split, without any features.

    Identical to what `synthesize` writes for the same (dataset, seed, scale), at a fraction
    of the cost (used by OOD split building on synth-mosei, whose features are ~8.5 GB).
    """
    seed_v = DEFAULT_SEED if seed is None else int(seed)
    knobs = default_knobs(dataset)
    vocab = build_vocabulary(seed_v)
    labels = synth_labels(dataset, seed_v, scale)
    text_len = profile(dataset).text_len
    out = {}
    for i, split in enumerate(SPLITS):
        d = _draw_split(labels[split], i, seed_v, vocab, knobs, text_len)
        out[split] = {
            "id": d.ids,
            "raw_text": d.plan.raw_text,
            "text_bert": d.plan.text_bert,
            "regression_labels": d.y,
        }
    return out, vocab


@dataclass
class _World:
    """What every split of one synthetic file shares: the seed's vocabulary, text encoder,
    word-class directions and audio/vision styles (shared by datasets with the same dims, so
    a cross pair lives in one world), plus this dataset's profile, knobs and labels."""

    p: Profile
    seed: int
    knobs: Knobs
    vocab: Vocabulary
    encoder: EmbeddingTableEncoder
    directions: np.ndarray
    a_style: tuple[np.ndarray, np.ndarray, np.ndarray]
    v_style: tuple[np.ndarray, np.ndarray, np.ndarray]
    labels: dict[str, np.ndarray]
    lens: tuple[int, int, int]  # text, audio, vision positions


def _world(
    dataset: str, variant: str, seed: int, scale: float | None, d_text: int, knobs: Knobs
) -> _World:
    p = profile(dataset)
    vocab = build_vocabulary(seed)
    encoder = EmbeddingTableEncoder(seed=seed, dim=d_text)
    drng = np.random.default_rng([seed, 7])
    directions = drng.standard_normal((3, d_text)).astype(np.float32)
    topic_dirs = np.random.default_rng([seed, 11]).standard_normal((_MAX_TOPICS, d_text))
    directions = np.concatenate([directions, topic_dirs.astype(np.float32)])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) / np.sqrt(d_text) / 0.25
    srng = np.random.default_rng([seed, 8])
    a_style = _style(p.d_audio, p.audio_signal_dims, srng)
    v_style = _style(p.d_vision, p.vision_signal_dims, srng)
    if knobs.domain_shift:  # a dataset-wide recording-condition offset (cross pairs)
        shift = np.random.default_rng([seed, 10, zlib.crc32(dataset.encode())])

        def shifted(style: tuple[np.ndarray, np.ndarray, np.ndarray]):
            loading, offset, scale_ = style
            noise = shift.standard_normal(offset.shape, dtype=np.float32)
            return loading, offset + knobs.domain_shift * noise, scale_

        a_style, v_style = shifted(a_style), shifted(v_style)
    aligned = variant == "aligned"
    lens = (p.text_len, *((p.text_len, p.text_len) if aligned else (p.len_audio, p.len_vision)))
    labels = synth_labels(dataset, seed, scale)
    return _World(p, seed, knobs, vocab, encoder, directions, a_style, v_style, labels, lens)


def _split_items(w: _World, i: int, split: str) -> Iterator[tuple[str, Any]]:
    """One split's arrays, lazily (the writer pickles each before the next is built)."""
    d = _draw_split(w.labels[split], i, w.seed, w.vocab, w.knobs, w.p.text_len)
    y, plan, ids, video, vrng = d.y, d.plan, d.ids, d.video, d.rng
    n = len(y)
    tl, la, lv = w.lens
    t_len = plan.n_words + 2
    if la == lv == tl:
        a_len, v_len = t_len.copy(), t_len.copy()
    else:
        a_len = np.clip(np.round(t_len * la / tl * vrng.uniform(0.55, 1.0, n)), 4, la)
        v_len = np.clip(np.round(t_len * lv / tl * vrng.uniform(0.55, 1.0, n)), 4, lv)
        a_len, v_len = a_len.astype(np.int64), v_len.astype(np.int64)
    cls = three_class(y)
    yield "raw_text", plan.raw_text
    yield "text", _text_features(
        plan, w.vocab, w.encoder, w.knobs, np.random.default_rng([w.seed, 3, i]), w.directions
    )
    yield "text_bert", plan.text_bert
    yield "audio", _sequences(
        d.s_audio, a_len, video, (la, w.p.d_audio), w.knobs,
        np.random.default_rng([w.seed, 4, i]), w.a_style,
    )
    yield "vision", _sequences(
        d.s_vision, v_len, video, (lv, w.p.d_vision), w.knobs,
        np.random.default_rng([w.seed, 5, i]), w.v_style,
    )
    if not w.p.casp:  # CASP's release has no lengths or class labels (derived on load)
        yield "audio_lengths", a_len
        yield "vision_lengths", v_len
    yield "regression_labels", y
    if not w.p.casp:
        yield "classification_labels", cls
        yield "annotations", ANNOTATIONS[cls]
    yield "id", ids


def synth_split(
    dataset: str, split: str, variant: str = "aligned", scale: float | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """One split of what `synthesize` writes, built in memory and identical to it (each split
    has its own random streams): a cross-dataset partner needs only its test split."""
    seed_v = DEFAULT_SEED if seed is None else int(seed)
    w = _world(dataset, variant, seed_v, scale, 768, default_knobs(dataset))
    return dict(_split_items(w, SPLITS.index(split), split))


def synthesize(
    dataset: str,
    variant: str = "unaligned",
    seed: int | None = None,
    scale: float | None = None,
    out: str | os.PathLike | None = None,
    d_text: int = 768,
    knobs: Knobs | None = None,
) -> Path:
    """Generate a synthetic MMSA pickle (and its `<pkl>.json` provenance); return its path.

    Deterministic: the same arguments give a byte-identical file. Prints nothing.
    """
    p = profile(dataset)
    if variant not in ("aligned", "unaligned"):
        raise UserError(f"unknown variant {variant!r}; choose aligned or unaligned")
    if p.casp and variant != "aligned":
        raise UserError(f"{dataset} imitates CASP's cross-dataset release, which is aligned only")
    if d_text < 1:
        raise UserError(f"d_text must be positive, got {d_text}")
    seed_v = DEFAULT_SEED if seed is None else int(seed)
    knobs = knobs or default_knobs(dataset)
    counts = split_counts(dataset, scale)
    path = Path(out) if out is not None else cache_path(dataset, variant, seed, scale)
    if path.exists() and path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file path ending in .pkl")

    w = _world(dataset, variant, seed_v, scale, d_text, knobs)
    write_pickle_stream(
        path, StreamDict((s, StreamDict(_split_items(w, i, s))) for i, s in enumerate(SPLITS))
    )
    meta = {
        "generator": "mer-bench synth",
        "version": GENERATOR_VERSION,
        "dataset": dataset,
        "variant": variant,
        "seed": seed_v,
        "scale": scale,
        "counts": counts,
        "dims": [d_text, p.d_audio, p.d_vision],
        "lens": list(w.lens),
        "d_text": d_text,
        "encoder": w.encoder.describe(),
        "knobs": asdict(knobs),
        "sha256": file_sha256(path),
        "vocabulary": w.vocab.describe(),
    }
    side = sidecar_path(path)
    tmp = side.with_name(f".{side.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, side)
    return path


def read_sidecar(pkl: str | os.PathLike, strict: bool = False) -> dict | None:
    """The `<pkl>.json` provenance, or None when there is none. A malformed one (not JSON, not
    an object, bad `counts`/`sha256`/`variant` fields) is a one-line `DataError` with `strict`,
    else None (a cache entry is then regenerated)."""
    side = sidecar_path(pkl)
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text())
        problem = _sidecar_problem(doc)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        problem = f"not readable JSON ({str(e).splitlines()[0][:60] if str(e) else type(e).__name__})"
    if problem is None:
        return doc
    if strict:
        from mer_bench.errors import DataError

        raise DataError(f"{side}: malformed sidecar: {problem}")
    return None


def _sidecar_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "expected a JSON object"
    counts = doc.get("counts")
    if counts is not None and not (
        isinstance(counts, dict)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())
    ):
        return "'counts' must map split names to non-negative integers"
    sha = doc.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return "'sha256' must be 64 hex digits"
    if doc.get("variant") not in (None, "aligned", "unaligned"):
        return "'variant' must be aligned or unaligned"
    return None


def default_knobs(dataset: str) -> Knobs:
    """The calibrated knobs of a synthetic set."""
    return replace(Knobs(), **dict(profile(dataset).knobs))


def with_knobs(**changes: Any) -> Knobs:
    """Default knobs with some changed (for calibration experiments)."""
    return replace(Knobs(), **changes)
