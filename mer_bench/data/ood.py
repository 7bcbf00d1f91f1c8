"""OOD repartitions: a test set whose word-label statistics differ from training.

Why: CIDer evaluates on CLUE-style re-partitioned MOSI/MOSEI whose construction was never
published. This module builds such splits with a documented objective and a seeded search, so
any dataset (real via its label.csv, synthetic, or a new one) gets a reproducible OOD split
stored as id lists under `splits/{dataset}/{task}/ood.json`, and serves them to the registry.

Objective (see `splits/README.md`): over the frequent non-stop words w (document frequency >=
`min_count` in the whole pool), the count-weighted mean total-variation distance between the
word's class distribution in the training side and in the test side,

    S = sum_w n_w * TV(p_train(.|w), p_test(.|w)) / sum_w n_w,

with add-`alpha` smoothing of both distributions (so a word cannot score by keeping a single
test occurrence). Binary compares negative vs positive only (neutral ignored), seven compares
all 7 classes. The search is simulated annealing over swaps between the test set and the
train/valid pool, with incremental count updates, started from a greedy "label against its
words' bias" selection, under class-prior constraints (train-pool priors near the IID train
priors, test priors near the IID test priors, every class in every split). Train and valid are
then a stratified random split of the pool, so they agree with each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mer_bench.data.schema import SPLITS, MMDataset, Split, seven_class, three_class
from mer_bench.errors import DataError, UserError

ALGORITHM = "mer-bench-ood"
ALGORITHM_VERSION = "1.0"
FORMAT = "mer-bench-split/1"
TASKS = ("binary", "seven")
DEFAULT_SEED = 1111
DEFAULTS = {
    "min_count": None,  # None -> max(10, ceil(0.01 * N)) (CLUE's 200-400 on MOSEI-sized data)
    "alpha": 1.0,  # additive smoothing of each word's class distribution
    "prior_tol": 0.03,  # max |train-pool prior - IID train prior| per class, absolute ...
    "prior_tol_rel": 0.25,  # ... and relative to the IID prior (keeps rare classes rare-ish)
    "test_prior_tol": 0.10,  # max |test prior - IID test prior| per class, absolute ...
    "test_prior_tol_rel": 0.5,  # ... and relative (no class vanishes from the test set)
    "iters_per_sample": 20,  # swap proposals = max(iters_per_sample * N, min_proposals)
    "min_proposals": 100_000,
    "t0_scale": 0.5,  # initial temperature = t0_scale * median |delta| of early proposals
    "t_final_ratio": 1e-3,  # geometric cooling to t0 * t_final_ratio
}

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


# ----------------------------------------------------------------------------- source data
@dataclass
class SourceData:
    """Ids, labels and text of every sample of a dataset, with its IID split assignment."""

    ids: np.ndarray  # (N,) str
    regression: np.ndarray  # (N,) float32
    texts: np.ndarray  # (N,) str
    iid: np.ndarray  # (N,) str in SPLITS
    origin: str = ""
    token_ids: np.ndarray | None = None  # (N, L) WordPiece input ids, for the cf vocabulary
    vocab: list | dict | None = None  # token strings for those ids
    token_note: str = ""  # how the token ids were obtained

    def __post_init__(self) -> None:
        if len(set(self.ids.tolist())) != len(self.ids):
            raise DataError(f"{self.origin}: sample ids are not unique")

    def labels(self, task: str) -> np.ndarray:
        return task_labels(self.regression, task)

    def sha256(self, with_text: bool = True) -> str:
        """SHA-256 of the canonical (id, label, text) content, in id order.

        Labels are float32 printed to 4 decimals and text is its lower-cased word sequence, so a
        label.csv and an MMSA pickle of the same data (or a regenerated synthetic dataset)
        hash alike. `with_text=False` hashes (id, label) only.
        """
        h = hashlib.sha256()
        order = np.argsort(self.ids, kind="stable")
        for k in order:
            line = f"{self.ids[k]}\t{float(np.float32(self.regression[k])):.4f}"
            if with_text:
                line += "\t" + " ".join(words(self.texts[k]))
            h.update((line + "\n").encode("utf-8"))
        return h.hexdigest()


def source_from_label_csv(path: str | os.PathLike, tokens: bool = False) -> SourceData:
    """An MMSA label.csv (ids `video$_$clip`, labels, text, `mode` as the IID split).

    `tokens=True` also tokenises the text with the bundled MiniLM WordPiece tokenizer (the
    bert-base-uncased vocabulary MMSA's `text_bert` uses), when it is installed.
    """
    from mer_bench.data.mmsa import read_label_csv

    df = read_label_csv(path)
    src = SourceData(
        ids=df["id"].to_numpy(dtype=str),
        regression=df["label"].to_numpy(dtype=np.float32),
        texts=df["text"].astype(str).to_numpy(dtype=str),
        iid=df["mode"].astype(str).to_numpy(dtype=str),
        origin=str(path),
    )
    if tokens:
        try:
            from mer_bench.data.cfvocab import wordpiece_vocab
            from mer_bench.data.encoders import tokenize

            src.token_ids = tokenize(src.texts.tolist(), "minilm", max_len=50)[0]
            src.vocab = wordpiece_vocab()
            src.token_note = "text tokenised with the bundled bert-base-uncased WordPiece vocabulary"
        except (ImportError, UserError) as e:
            src.token_note = f"no tokenizer available ({e})"
    return src


def source_from_splits(
    splits: dict[str, Split], origin: str = "", vocab: list | dict | None = None
) -> SourceData:
    """Pool the three IID splits of a dataset (train, valid, test order)."""
    parts = [splits[s] for s in SPLITS]
    has_ids = all(p.text_bert is not None for p in parts)
    return SourceData(
        ids=np.concatenate([np.asarray(p.id).astype(str) for p in parts]),
        regression=np.concatenate([np.asarray(p.regression_labels, np.float32) for p in parts]),
        texts=np.concatenate([np.asarray(p.raw_text).astype(str) for p in parts]),
        iid=np.concatenate([np.full(len(p), s) for s, p in zip(SPLITS, parts)]),
        origin=origin,
        token_ids=np.concatenate([p.text_bert[:, 0, :] for p in parts]) if has_ids else None,
        vocab=vocab,
        token_note="the dataset's text_bert ids" if has_ids else "",
    )


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
    alpha: float = DEFAULTS["alpha"],
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


# ----------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    test: np.ndarray  # row indices
    train: np.ndarray
    valid: np.ndarray
    objective_start: float
    objective_end: float
    accepted: int
    proposals: int
    seconds: float
    params: dict = field(default_factory=dict)


def _prior_bounds(
    labels: np.ndarray, iid: np.ndarray, n_test: int, k: int, tol: float, tol_rel: float,
    test_tol: float = DEFAULTS["test_prior_tol"], test_tol_rel: float = DEFAULTS["test_prior_tol_rel"],
) -> tuple[np.ndarray, np.ndarray]:
    """Allowed per-class test counts so the train pool's priors stay near the IID train ones,
    |p - p_iid| <= min(tol, tol_rel * p_iid), and the test priors near the IID test ones,
    |p - p_iid| <= min(test_tol, test_tol_rel * p_iid), per class."""
    n = len(labels)
    n_rest = n - n_test
    tot = np.bincount(labels, minlength=k)
    p_tr = np.bincount(labels[iid == "train"], minlength=k) / max((iid == "train").sum(), 1)
    p_te = np.bincount(labels[iid == "test"], minlength=k) / max((iid == "test").sum(), 1)
    tol = np.minimum(tol, tol_rel * p_tr)
    lo = np.ceil(tot - n_rest * (p_tr + tol) - 1e-9).astype(np.int64)
    hi = np.floor(tot - n_rest * (p_tr - tol) + 1e-9).astype(np.int64)
    ttol = np.minimum(test_tol, test_tol_rel * p_te)
    t_lo = np.ceil(n_test * (p_te - ttol) - 1e-9).astype(np.int64)
    t_hi = np.floor(n_test * (p_te + ttol) + 1e-9).astype(np.int64)
    both_lo, both_hi = np.maximum(lo, t_lo), np.minimum(hi, t_hi)
    ok = both_lo <= both_hi  # where the two ranges do not meet, the train-side bound wins
    lo, hi = np.where(ok, both_lo, lo), np.where(ok, both_hi, hi)
    # every class present in test and at least 2 left for train and valid (when it can be)
    lo = np.maximum(lo, np.minimum(1, tot))
    hi = np.minimum(hi, np.maximum(tot - 2, lo))
    hi = np.maximum(hi, lo)
    return lo, hi


def _quotas(labels: np.ndarray, iid: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_test: int, k: int):
    """Initial per-class test counts: the IID test counts, clipped to bounds, summing to n_test."""
    q = np.clip(np.bincount(labels[iid == "test"], minlength=k), lo, hi)
    tot = np.bincount(labels, minlength=k)
    while q.sum() != n_test:
        if q.sum() < n_test:
            room = np.where(q < np.minimum(hi, tot), tot - q, -1)
            if room.max() <= 0:
                raise DataError("cannot place the test set within the class-prior constraints")
            q[int(room.argmax())] += 1
        else:
            room = np.where(q > lo, q, -1)
            if room.max() <= 0:
                raise DataError("cannot place the test set within the class-prior constraints")
            q[int(room.argmax())] -= 1
    return q


def _initial_test(index, y_stat, labels, quotas, k_stat, rng) -> np.ndarray:
    """Greedy start: per class, the samples whose label goes most against their words' bias."""
    n = len(labels)
    pool_counts = index.class_counts(y_stat, np.arange(n), k_stat) + 1.0
    p_w = pool_counts / pool_counts.sum(axis=1, keepdims=True)
    prior = (np.bincount(y_stat[y_stat >= 0], minlength=k_stat) + 1.0) / ((y_stat >= 0).sum() + k_stat)
    score = np.zeros(n)
    for r in range(n):
        c = y_stat[r]
        ws = index.doc_words[r]
        if c >= 0 and ws:
            score[r] = float(np.sum(prior[c] - p_w[ws, c])) / math.sqrt(len(ws))
    score += 1e-9 * rng.random(n)  # random tie-break
    chosen = []
    for c, q in enumerate(quotas):
        rows = np.flatnonzero(labels == c)
        chosen.append(rows[np.argsort(-score[rows], kind="stable")[: int(q)]])
    return np.sort(np.concatenate(chosen))


def _stratified_valid(labels: np.ndarray, rest: np.ndarray, n_valid: int, k: int, rng) -> np.ndarray:
    """A class-stratified random valid set of size n_valid from rows `rest`."""
    counts = np.bincount(labels[rest], minlength=k)
    exact = counts * n_valid / max(len(rest), 1)
    q = np.floor(exact).astype(np.int64)
    q = np.where((counts >= 2) & (q == 0) & (n_valid >= k), 1, q)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    if n_valid > len(rest):
        raise DataError(f"cannot draw {n_valid} valid samples from a pool of {len(rest)}")
    cap = np.where(counts >= 2, counts - 1, counts)  # leave each class one training sample
    for limit in (cap, counts):  # fall back to the full class sizes if that is not enough
        while q.sum() < n_valid and (q < limit).any():
            for c in order:
                if q.sum() < n_valid and q[c] < limit[c]:
                    q[c] += 1
    while q.sum() > n_valid:
        c = int(np.argmax(q))
        q[c] -= 1
    out = []
    for c in range(k):
        rows = rest[labels[rest] == c]
        out.append(rows[rng.permutation(len(rows))[: int(q[c])]])
    return np.sort(np.concatenate(out))


def build_ood(
    src: SourceData,
    task: str,
    seed: int = 1111,
    *,
    min_count: int | None = DEFAULTS["min_count"],
    alpha: float = DEFAULTS["alpha"],
    prior_tol: float = DEFAULTS["prior_tol"],
    prior_tol_rel: float = DEFAULTS["prior_tol_rel"],
    test_prior_tol: float = DEFAULTS["test_prior_tol"],
    test_prior_tol_rel: float = DEFAULTS["test_prior_tol_rel"],
    iters_per_sample: int = DEFAULTS["iters_per_sample"],
    min_proposals: int = DEFAULTS["min_proposals"],
    t0_scale: float = DEFAULTS["t0_scale"],
    t_final_ratio: float = DEFAULTS["t_final_ratio"],
) -> SearchResult:
    """Search a test set of the IID test size maximising the word-label shift objective.

    Deterministic for a given (content, task, seed): rows are processed in id order and all
    randomness comes from `numpy.random.default_rng(seed)`.
    """
    t_start = time.perf_counter()
    k = n_classes(task)
    order = np.argsort(src.ids, kind="stable")  # canonical row order: independent of input order
    ids, texts, iid = src.ids[order], src.texts[order], src.iid[order]
    labels = src.labels(task)[order]
    n = len(ids)
    sizes = {s: int((iid == s).sum()) for s in SPLITS}
    if min(sizes.values()) == 0:
        raise DataError(f"{src.origin}: every IID split must be non-empty, got {sizes}")
    n_test = sizes["test"]
    rng = np.random.default_rng(seed)

    index = WordIndex.build(texts, min_count)
    y_stat, ks = stat_labels(labels, task)
    lo, hi = _prior_bounds(
        labels, iid, n_test, k, prior_tol, prior_tol_rel, test_prior_tol, test_prior_tol_rel
    )
    quotas = _quotas(labels, iid, lo, hi, n_test, k)
    test0 = _initial_test(index, y_stat, labels, quotas, ks, rng)

    # ---- incremental state (plain Python lists: faster than numpy for a few words per swap)
    nw = index.df.astype(float).tolist()
    wsum = float(sum(nw)) or 1.0
    in_test = np.zeros(n, dtype=bool)
    in_test[test0] = True
    all_c = index.class_counts(y_stat, np.arange(n), ks).tolist()
    tst_c = index.class_counts(y_stat, test0, ks).tolist()
    dw = index.doc_words
    ys = y_stat.tolist()
    yl = labels.tolist()
    kal = ks * alpha

    all_n = [sum(a) for a in all_c]

    def tv(w: int, t: list[int]) -> float:
        a = all_c[w]
        st = sum(t)
        dt, dr = st + kal, all_n[w] - st + kal
        return 0.5 * sum(abs((ai - ti + alpha) / dr - (ti + alpha) / dt) for ai, ti in zip(a, t))

    tvw = [tv(w, tst_c[w]) for w in range(len(nw))]
    obj = sum(x * v for x, v in zip(nw, tvw)) / wsum
    obj_start = obj
    cls_test = np.bincount(labels[test0], minlength=k).tolist()
    lo_l, hi_l = lo.tolist(), hi.tolist()
    test_rows = test0.tolist()
    rest_rows = np.flatnonzero(~in_test).tolist()
    n_rest = len(rest_rows)

    def propose(i: int, j: int) -> tuple[float, dict]:
        new: dict[int, list[int]] = {}
        ci, cj = ys[i], ys[j]
        if ci >= 0:
            for w in dw[i]:
                t = new.get(w) or tst_c[w][:]
                t[ci] -= 1
                new[w] = t
        if cj >= 0:
            for w in dw[j]:
                t = new.get(w) or tst_c[w][:]
                t[cj] += 1
                new[w] = t
        d = 0.0
        for w, t in new.items():
            d += nw[w] * (tv(w, t) - tvw[w])
        return d / wsum, new

    n_iter = int(max(iters_per_sample * n, min_proposals))
    a_draw = rng.integers(0, n_test, size=n_iter).tolist()
    b_draw = rng.integers(0, n_rest, size=n_iter).tolist()
    u_draw = rng.random(n_iter).tolist()
    # temperature from the spread of early proposals' deltas
    probe = [abs(propose(test_rows[a], rest_rows[b])[0]) for a, b in zip(a_draw[:300], b_draw[:300])]
    probe = [p for p in probe if p > 0]
    t0 = t0_scale * (float(np.median(probe)) if probe else 0.0)
    decay = t_final_ratio ** (1.0 / max(n_iter, 1))
    temp = t0
    accepted = 0
    for it in range(n_iter):
        temp *= decay
        a, b = a_draw[it], b_draw[it]
        i, j = test_rows[a], rest_rows[b]
        li, lj = yl[i], yl[j]
        if li != lj and (cls_test[li] - 1 < lo_l[li] or cls_test[lj] + 1 > hi_l[lj]):
            continue
        d, new = propose(i, j)
        if d < 0 and (temp <= 0 or u_draw[it] >= math.exp(d / temp)):
            continue
        for w, t in new.items():
            tst_c[w] = t
            tvw[w] = tv(w, t)
        obj += d
        cls_test[li] -= 1
        cls_test[lj] += 1
        test_rows[a], rest_rows[b] = j, i
        accepted += 1
    obj = sum(x * v for x, v in zip(nw, tvw)) / wsum  # re-sum: no drift from increments

    test = np.sort(np.asarray(test_rows, dtype=np.int64))
    rest = np.sort(np.asarray(rest_rows, dtype=np.int64))
    valid = _stratified_valid(labels, rest, sizes["valid"], k, rng)
    train = np.setdiff1d(rest, valid)
    params = {
        "min_count": index.min_count,
        "alpha": alpha,
        "prior_tol": prior_tol,
        "prior_tol_rel": prior_tol_rel,
        "test_prior_tol": test_prior_tol,
        "test_prior_tol_rel": test_prior_tol_rel,
        "iters_per_sample": iters_per_sample,
        "min_proposals": min_proposals,
        "t0_scale": t0_scale,
        "t_final_ratio": t_final_ratio,
        "vocabulary_size": len(index.vocab),
        "stop_words": len(STOP_WORDS),
    }
    # map canonical rows back to the caller's rows
    return SearchResult(
        test=order[test],
        train=order[train],
        valid=order[valid],
        objective_start=round(obj_start, 6),
        objective_end=round(obj, 6),
        accepted=accepted,
        proposals=n_iter,
        seconds=round(time.perf_counter() - t_start, 3),
        params=params,
    )


# ----------------------------------------------------------------------------- split files
def split_report(src: SourceData, task: str, rows: dict[str, np.ndarray], index: WordIndex) -> dict:
    """Statistic (train vs test, and train vs valid) and class priors of one assignment."""
    labels = src.labels(task)
    k = n_classes(task)
    return {
        "statistic": shift_statistic(index, labels, rows["train"], rows["test"], task),
        "train_vs_valid": shift_statistic(index, labels, rows["train"], rows["valid"], task),
        "priors": {s: priors(labels, rows[s], k) for s in SPLITS},
        "sizes": {s: int(len(rows[s])) for s in SPLITS},
    }


def iid_rows(src: SourceData) -> dict[str, np.ndarray]:
    return {s: np.flatnonzero(src.iid == s) for s in SPLITS}


def rows_from_ids(src: SourceData, ids: dict[str, list[str]], hint: str) -> dict[str, np.ndarray]:
    pos = {v: i for i, v in enumerate(src.ids.tolist())}
    out = {}
    for s in SPLITS:
        missing = [x for x in ids[s] if x not in pos]
        if missing:
            raise UserError(
                f"split lists {len(missing)} id(s) not in the data (e.g. {missing[0]!r}); {hint}"
            )
        out[s] = np.asarray([pos[x] for x in ids[s]], dtype=np.int64)
    return out


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON next to `path` then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ood_json_path(dataset: str, task: str, root: str | os.PathLike | None = None) -> Path:
    from mer_bench.paths import splits_dir

    return splits_dir(root) / dataset / task / "ood.json"


def build_split_document(
    src: SourceData, dataset: str, task: str, seed: int, command: str = "", **params
) -> tuple[dict, SearchResult]:
    """Run the search and assemble the ood.json document (id lists, statistics, provenance)."""
    res = build_ood(src, task, seed, **params)
    index = WordIndex.build(src.texts, res.params["min_count"])
    ood_rows = {"train": res.train, "valid": res.valid, "test": res.test}
    doc = {
        "format": FORMAT,
        "dataset": dataset,
        "task": task,
        "algorithm": ALGORITHM,
        "algorithm_version": ALGORITHM_VERSION,
        "seed": int(seed),
        "params": res.params,
        "objective": "count-weighted mean TV distance between smoothed per-word class "
        "distributions, train vs test, over non-stop words with document count >= min_count"
        + ("; binary: negative vs positive only" if task == "binary" else "; 7 classes"),
        "source": {
            "origin": src.origin,
            "n": int(len(src.ids)),
            "sha256": src.sha256(with_text=True),
            "labels_sha256": src.sha256(with_text=False),
        },
        "search": {
            "objective_start": res.objective_start,
            "objective_end": res.objective_end,
            "proposals": res.proposals,
            "accepted": res.accepted,
        },
        "created_by": command,
        "iid": split_report(src, task, iid_rows(src), index),
        "ood": split_report(src, task, ood_rows, index),
        "ids": {s: sorted(src.ids[ood_rows[s]].tolist()) for s in SPLITS},
    }
    return doc, res


def _command_line(
    dataset: str, task: str, seed: int, label_csv: str | None, variant: str = "unaligned"
) -> str:
    """The `mer-bench split build` command that regenerates this file (no --out)."""
    cmd = f"mer-bench split build --dataset {dataset} --task {task} --seed {seed}"
    if label_csv:
        cmd += f" --label-csv {label_csv}"
    elif variant != "unaligned":
        cmd += f" --variant {variant}"
    return cmd


def load_source(
    dataset: str | None,
    task: str,
    label_csv: str | None,
    data_root: str | None,
    variant: str = "unaligned",
    tokens: bool = False,
) -> SourceData:
    """Ids, labels and text from a label.csv, else from the dataset's IID splits."""
    if label_csv:
        return source_from_label_csv(label_csv, tokens=tokens)
    if not dataset:
        raise UserError("give --dataset NAME (or --label-csv PATH)")
    if dataset.startswith("synth-"):
        src = synth_source(dataset)
        if src is not None:
            return src
    from mer_bench.data.cfvocab import dataset_vocab
    from mer_bench.data.registry import load_dataset

    ds = load_dataset(dataset, variant, "iid", task, data_root)
    return source_from_splits(
        ds.splits, origin=ds.source or dataset, vocab=dataset_vocab(ds.meta, ds.name)
    )


def synth_source(
    dataset: str, seed: int | None = None, scale: float | None = None, verify: bool = True
) -> SourceData | None:
    """Ids, labels, text and token ids of an embedded synthetic dataset, without features.

    Why: synth-mosei's features are ~8.5 GB, but its text and labels take seconds. This replays
    the generator's label, sentence and id draws (same seeded streams, same order). Because
    that mirrors the generator's internals, `verify=True` first replays a tiny scaled copy and
    compares it with a really generated one (about a second); on any mismatch, or if the
    generator changed shape, this returns None and the caller loads the full dataset instead.
    The source hash in ood.json is also checked against the real data when a split is served.
    """
    try:
        src = _replay_synth(dataset, seed, scale)
        if src is not None and verify and not _replay_matches(dataset, seed):
            return None
    except (ImportError, AttributeError, TypeError, ValueError, KeyError):
        return None
    return src


def _replay_matches(dataset: str, seed: int | None) -> bool:
    import tempfile as _tf

    from mer_bench.data import synth
    from mer_bench.data.mmsa import read_mmsa_pickle

    scale = max(0.004, 40 / sum(synth.split_counts(dataset).values()))
    with _tf.TemporaryDirectory() as tmp:
        pkl = synth.synthesize(dataset, seed=seed, scale=scale, out=Path(tmp) / "probe.pkl",
                               d_text=8)
        real = source_from_splits(read_mmsa_pickle(pkl).splits)
    replay = _replay_synth(dataset, seed, scale)
    return (
        replay is not None
        and replay.sha256() == real.sha256()
        and np.array_equal(replay.token_ids, real.token_ids)
    )


def _replay_synth(dataset: str, seed: int | None, scale: float | None) -> SourceData | None:
    from mer_bench.data import synth

    synth.profile(dataset)
    seed_v = synth.DEFAULT_SEED if seed is None else int(seed)
    knobs = synth.Knobs()
    vocab = synth.build_vocabulary(seed_v)
    labels = synth.synth_labels(dataset, seed_v, scale)
    parts = []
    for i, s in enumerate(SPLITS):
        y = labels[s]
        n = len(y)
        lrng = np.random.default_rng([seed_v, 9, i])
        u_a = knobs.unique_audio * lrng.standard_normal(n)
        u_v = knobs.unique_vision * lrng.standard_normal(n)
        plan = synth._sentences(
            y, y - u_a - u_v, vocab, knobs, knobs.spurious[i], np.random.default_rng([seed_v, 2, i])
        )
        vrng = np.random.default_rng([seed_v, 6, i])
        video, clip = synth._videos(n, vrng)
        names = synth._video_names(int(video.max()) + 1, vrng, i)
        ids = np.array([f"{names[v]}$_${c}" for v, c in zip(video, clip)], dtype=str)
        parts.append((s, ids, y, plan))
    return SourceData(
        ids=np.concatenate([x[1] for x in parts]),
        regression=np.concatenate([x[2] for x in parts]).astype(np.float32),
        texts=np.concatenate([x[3].raw_text for x in parts]),
        iid=np.concatenate([np.full(len(x[2]), x[0]) for x in parts]),
        origin=f"{dataset} (synthetic generator v{synth.GENERATOR_VERSION}, seed {seed_v}; "
        "text and labels only)",
        token_ids=np.concatenate([x[3].text_bert[:, 0, :] for x in parts]),
        vocab={int(i): w for i, w in zip(vocab.ids, vocab.words)},
        token_note="the synthetic generator's text_bert ids; token strings from its vocabulary",
    )


def build_split_cli(
    dataset: str | None,
    task: str,
    label_csv: str | None = None,
    seed: int | None = 1111,
    out: str | None = None,
    data_root: str | None = None,
    variant: str = "unaligned",
) -> str:
    """`mer-bench split build`: write ood.json (and cf_vocab.json) and return a summary."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose binary or seven")
    if not dataset:
        if not label_csv:
            raise UserError("give --dataset NAME (or --label-csv PATH with --dataset as folder name)")
        dataset = Path(label_csv).parent.name or "dataset"
    seed = 1111 if seed is None else int(seed)
    src = load_source(dataset, task, label_csv, data_root, variant, tokens=True)
    command = _command_line(dataset, task, seed, label_csv, variant)
    doc, res = build_split_document(src, dataset, task, seed, command=command)
    path = ood_json_path(dataset, task, out)
    write_json_atomic(path, doc)
    vocab_note = _write_cf_vocab(dataset, task, src, doc, out)
    iid, ood = doc["iid"], doc["ood"]
    return "\n".join(
        [
            f"wrote {path} ({res.seconds:.1f} s, algorithm {ALGORITHM} {ALGORITHM_VERSION}, seed {seed})",
            f"sizes train/valid/test: {'/'.join(str(ood['sizes'][s]) for s in SPLITS)}",
            f"shift statistic (TV): iid {iid['statistic']['tv']:.4f} -> ood {ood['statistic']['tv']:.4f}"
            f"; flip fraction iid {iid['statistic']['flip']:.3f} -> ood {ood['statistic']['flip']:.3f}",
            f"train priors: iid {_fmt(iid['priors']['train'])} -> ood {_fmt(ood['priors']['train'])}",
            f"test priors:  iid {_fmt(iid['priors']['test'])} -> ood {_fmt(ood['priors']['test'])}",
            vocab_note,
        ]
    )


def _fmt(p: list[float]) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in p) + "]"


def _write_cf_vocab(
    dataset: str, task: str, src: SourceData, doc: dict, out, dists=("iid", "ood")
) -> str:
    """cf_vocab.json: the bias-token vocabulary of the IID and of the new OOD training split."""
    from mer_bench.data.cfvocab import cf_vocab_from_arrays

    labels = src.labels(task)
    rows = {"iid": iid_rows(src)["train"], "ood": rows_from_ids(src, doc["ids"], "")["train"]}
    entries = {}
    for dist in dists:
        r = rows[dist]
        entries[dist] = cf_vocab_from_arrays(
            src.ids[r], None if src.token_ids is None else src.token_ids[r], labels[r], task,
            vocab=src.vocab,
        )
        if src.token_note:
            entries[dist]["token_source"] = src.token_note
    path = ood_json_path(dataset, task, out).with_name("cf_vocab.json")
    write_json_atomic(path, entries)
    if src.token_ids is None:
        return f"wrote {path} (empty: no token ids; counterfactual scoring is skipped)"
    counts = ", ".join(f"{d} {len(e['tokens'])}" for d, e in entries.items())
    return f"wrote {path} (bias tokens: {counts})"


def read_split_json(path: str | os.PathLike, hint: str = "") -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no OOD split at {p}; {hint}".rstrip("; "))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read split {p}: {e}; {hint}".rstrip("; ")) from None
    if not isinstance(doc, dict) or "ids" not in doc or not set(SPLITS) <= set(doc["ids"]):
        raise UserError(f"{p} is not a split file (no ids for train/valid/test); {hint}".rstrip("; "))
    return doc


def check_split_cli(
    dataset: str | None,
    task: str,
    split: str = "ood",
    label_csv: str | None = None,
    data_root: str | None = None,
    path: str | None = None,
) -> str:
    """`mer-bench split check`: recompute the shift statistic and class priors of a split."""
    if split not in ("iid", "ood") and path is None:
        path, split = split, "ood"
    doc = None
    if path is not None:
        split = "ood"
    if split == "ood":
        if not path and not dataset:
            raise UserError("give --dataset NAME or --path FILE")
        p = Path(path) if path else ood_json_path(dataset or "", task)
        doc = read_split_json(p, hint=_hint(dataset or "DATASET", task))
        dataset = dataset or doc.get("dataset")
        task = doc.get("task", task)
    src = load_source(dataset, task, label_csv, data_root)
    if doc is None:
        rows = iid_rows(src)
        where = f"{dataset} iid ({src.origin})"
        params = {}
    else:
        rows = rows_from_ids(src, doc["ids"], _hint(dataset, task))
        where = f"{p}"
        params = doc.get("params", {})
    index = WordIndex.build(src.texts, params.get("min_count"))
    rep = split_report(src, task, rows, index)
    st, tv = rep["statistic"], rep["train_vs_valid"]
    lines = [
        f"{where}: task {task}, sizes {'/'.join(str(rep['sizes'][s]) for s in SPLITS)}, "
        f"{st['words']} frequent words (min_count {index.min_count})",
        f"shift statistic train vs test: TV {st['tv']:.4f}, flip {st['flip']:.3f}, "
        f"skew train {st['skew_train']:.3f} / test {st['skew_test']:.3f}",
        f"train vs valid: TV {tv['tv']:.4f}, flip {tv['flip']:.3f}",
    ]
    lines += [f"priors {s:5s}: {_fmt(rep['priors'][s])}" for s in SPLITS]
    if doc is not None:
        stored = doc.get("ood", {}).get("statistic", {}).get("tv")
        if doc.get("source", {}).get("sha256") != src.sha256():
            lines.append(
                "note: the data differ from those the split was built on (source sha256); "
                f"the figures above are for the current data; to rebuild, {_hint(dataset, task)}"
            )
        elif stored is not None:
            ok = abs(stored - st["tv"]) < 1e-4
            lines.append(f"stored statistic {stored:.4f}: {'matches' if ok else 'DIFFERS'}")
    return "\n".join(lines)


def _hint(dataset: str, task: str) -> str:
    return f"run `mer-bench split build --dataset {dataset} --task {task}`"


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
    from mer_bench.data.cfvocab import dataset_vocab

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
        "params": {"min_count": index.min_count, "alpha": DEFAULTS["alpha"]},
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
    path = ood_json_path(dataset, task, out)
    write_json_atomic(path, doc)
    _write_cf_vocab(dataset, task, src, doc, out, dists=("ood",))
    return path
