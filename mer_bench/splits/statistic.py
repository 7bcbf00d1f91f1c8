"""The word-label shift statistic of a split: frequent words, their class distributions per side.

Why: an OOD split is defined by how far each frequent word's class distribution moves between
training and test; building, checking and reporting all use this one definition.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from mer_bench.data.schema import seven_class, three_class
from mer_bench.errors import UserError

TASKS = ("binary", "seven")
ALPHA = 1.0  # additive smoothing of each word's class distribution

# A small English stop-word list (function words, auxiliaries, fillers common in transcripts).
STOP_WORDS = frozenset(
    """
    a an the and or but if so as of at by for from in into on onto to up down out off over under
    with without about above below between through during before after again further then once
    here there when where why how all any both each few more most other some such no nor not
    only own same than too very can will just should would could might must shall may
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those am is are was were be been being have has had having do does did doing
    im ive id ill youre youve theyre thats its dont didnt doesnt isnt wasnt arent werent cant
    couldnt wouldnt shouldnt wont hes shes theres whats lets
    uh um umm uhh ah oh yeah okay ok like know mean just really well also gonna wanna kind sort
    thing things get got go going s t d ll m re ve
    """.split()
)

_WORD_RE = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric runs of `text` (apostrophes split words: "don't" -> don, t)."""
    return _WORD_RE.findall(str(text).lower())


def content_words(text: str) -> set[str]:
    """The distinct non-stop words of one document (the statistic counts documents)."""
    return {w for w in words(text) if w not in STOP_WORDS}


def task_labels(regression: np.ndarray, task: str) -> np.ndarray:
    if task == "binary":
        return three_class(regression)
    if task == "seven":
        return seven_class(regression)
    raise UserError(f"unknown task {task!r}; choose binary or seven")


def n_classes(task: str) -> int:
    return 3 if task == "binary" else 7



# ----------------------------------------------------------------------------- statistic
@dataclass
class WordIndex:
    """Frequent non-stop words of a pool and, per document, the frequent words it contains."""

    vocab: list[str]
    df: np.ndarray  # (V,) document frequency in the pool: the word weights n_w
    doc_words: list[list[int]]  # per document, indices into vocab
    min_count: int

    @classmethod
    def build(cls, texts: np.ndarray, min_count: int | None = None) -> WordIndex:
        sets = [content_words(t) for t in texts]
        if min_count is None:
            min_count = max(10, math.ceil(0.01 * len(texts)))
        counts: dict[str, int] = {}
        for s in sets:
            for w in s:
                counts[w] = counts.get(w, 0) + 1
        vocab = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        pos = {w: i for i, w in enumerate(vocab)}
        doc_words = [sorted(pos[w] for w in s if w in pos) for s in sets]
        df = np.array([counts[w] for w in vocab], dtype=np.int64)
        return cls(vocab=vocab, df=df, doc_words=doc_words, min_count=int(min_count))

    def class_counts(self, y: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """(V, k) document counts of each word per class over `rows` (labels < 0 ignored)."""
        out = np.zeros((len(self.vocab), k), dtype=np.int64)
        for r in rows:
            c = y[r]
            if c < 0:
                continue
            for w in self.doc_words[r]:
                out[w, c] += 1
        return out


def stat_labels(labels: np.ndarray, task: str) -> tuple[np.ndarray, int]:
    """Labels in statistic space: binary neg->0, pos->1, neutral->-1 (ignored); seven as is."""
    if task == "binary":
        return np.where(labels == 0, 0, np.where(labels == 2, 1, -1)).astype(np.int64), 2
    return labels.astype(np.int64), 7


def _smoothed(counts: np.ndarray, alpha: float) -> np.ndarray:
    k = counts.shape[1]
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + k * alpha)


def shift_statistic(
    index: WordIndex,
    labels: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    task: str,
    alpha: float = ALPHA,
) -> dict:
    """The shift between a training and a test side: the objective plus CLUE-style skews.

    tv: count-weighted mean TV distance between smoothed class distributions per word (the
    objective). skew_train / skew_test: count-weighted mean CLUE skew, |p(pos)-p(neg)| for
    binary and sum_c |p(c)-1/C| for seven (unsmoothed, words absent from a side skipped).
    flip: weighted fraction of words (present on both sides) whose leaning class, argmax of
    p(c|w) / p(c) with each side's own prior p(c), differs between the sides.
    """
    y, k = stat_labels(labels, task)
    ctr = index.class_counts(y, train_rows, k)
    cte = index.class_counts(y, test_rows, k)
    w = index.df.astype(np.float64)
    if len(w) == 0:
        return {"tv": 0.0, "skew_train": 0.0, "skew_test": 0.0, "flip": 0.0, "words": 0}
    tv = 0.5 * np.abs(_smoothed(ctr, alpha) - _smoothed(cte, alpha)).sum(axis=1)

    def skew(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = c.sum(axis=1)
        p = c / np.maximum(n, 1)[:, None]
        s = np.abs(p[:, 1] - p[:, 0]) if k == 2 else np.abs(p - 1.0 / k).sum(axis=1)
        return s, n > 0

    s_tr, ok_tr = skew(ctr)
    s_te, ok_te = skew(cte)
    both = ok_tr & ok_te
    flip = _lean(ctr) != _lean(cte)

    def wmean(v: np.ndarray, m: np.ndarray) -> float:
        return float((v * w * m).sum() / max((w * m).sum(), 1e-12))

    return {
        "tv": round(float((tv * w).sum() / w.sum()), 6),
        "skew_train": round(wmean(s_tr, ok_tr), 6),
        "skew_test": round(wmean(s_te, ok_te), 6),
        "flip": round(wmean(flip.astype(np.float64), both), 6),
        "words": int(len(w)),
    }


def _lean(c: np.ndarray) -> np.ndarray:
    """The class each word leans to relative to its side's prior: argmax of p(c|w) / p(c)."""
    side = c.sum(axis=0).astype(np.float64)
    prior = side / max(side.sum(), 1.0)
    lift = c / np.maximum(c.sum(axis=1, keepdims=True), 1) / np.maximum(prior, 1e-12)
    return lift.argmax(axis=1)


def priors(labels: np.ndarray, rows: np.ndarray, k: int) -> list[float]:
    c = np.bincount(labels[rows], minlength=k).astype(np.float64)
    return [round(float(x), 6) for x in c / max(c.sum(), 1.0)]


