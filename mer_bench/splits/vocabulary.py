"""CIDer's counterfactual "bias word" vocabulary, computed on a training split.

Why: the counterfactual text keeps only these tokens (plus special tokens) and masks the rest,
so the vocabulary decides what "the text's bias" means. It must come from the training split
of whichever partition is in use (IID or OOD) and must never look at valid/test labels.

Rule (official `bert_dataloader.py`, paper silent): per WordPiece id in the training split's
`text_bert` input ids, skipping [PAD]/[UNK]/[CLS]/[SEP]/[MASK], count raw occurrences per class
(binary: the 3-class labels, but the CV uses [neg, pos] only; seven: all 7 classes); cv =
population std / mean of those counts; keep cv >= `cv_min`; sort by total occurrences
(descending; ties keep first-appearance order, as Python's stable sort over the official
insertion-ordered dict does); keep `top_k`.

`stale_cv=True` reproduces the official bug for binary: a token seen only in neutral samples
has no [neg, pos] evidence, and the official loop then reuses the std and mean of the token it
processed just before. The official loop visits tokens in dict insertion order, i.e. the order
of each token's first occurrence when reading the training split row by row, position by
position; that is the order used here. If the very first token is neutral-only there is no
previous value (the official code would fail); here it does not qualify. Default
(`stale_cv=False`): neutral-only tokens never qualify.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from mer_bench.data.schema import SPECIAL_IDS, MMDataset, Split
from mer_bench.errors import UserError

NO_IDS_NOTE = (
    "no token ids (text_bert) in this dataset: counterfactual text is not available, "
    "the harness skips counterfactual scoring"
)


def _counts(ids: np.ndarray, labels: np.ndarray, k: int):
    """Unique non-special tokens in first-appearance order, their per-class counts (T, k)."""
    ids = np.asarray(ids, dtype=np.int64)
    n, length = ids.shape
    flat = ids.reshape(-1)
    lab = np.repeat(np.asarray(labels, dtype=np.int64), length)
    keep = ~np.isin(flat, np.fromiter(SPECIAL_IDS, dtype=np.int64))
    flat, lab = flat[keep], lab[keep]
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, k), np.int64)
    uniq, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    counts = np.bincount(inv * k + lab, minlength=len(uniq) * k).reshape(len(uniq), k)
    order = np.argsort(first, kind="stable")  # first-appearance (official insertion) order
    return uniq[order], counts[order]


def _cv(m: np.ndarray) -> np.ndarray:
    mean = m.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, m.std(axis=1) / mean, np.nan)


def select_bias_tokens(
    ids: np.ndarray,
    labels: np.ndarray,
    task: str,
    top_k: int = 100,
    cv_min: float = 0.1,
    normalise: bool = False,
    stale_cv: bool = False,
) -> list[dict]:
    """The bias tokens of (N, L) input ids with task labels: [{"id", "count", "cv"}, ...]."""
    if task not in ("binary", "seven"):
        raise UserError(f"unknown task {task!r}; choose binary or seven")
    k = 3 if task == "binary" else 7
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise UserError(f"{task} labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    tokens, counts = _counts(ids, labels, k)
    m = counts.astype(np.float64)
    if normalise:
        size = np.bincount(labels, minlength=k).astype(np.float64)
        m = m / np.maximum(size, 1.0)
    if task == "binary":
        m = m[:, [0, 2]]
    cv = _cv(m)
    if stale_cv and task == "binary":
        # official loop: no [neg, pos] evidence -> reuse the previous token's value
        evidence = (counts[:, 0] + counts[:, 2]) > 0
        last = np.where(evidence, np.arange(len(cv)), -1)
        last = np.maximum.accumulate(last) if len(last) else last
        cv = np.where(last >= 0, cv[np.maximum(last, 0)], np.nan)
    ok = np.flatnonzero(np.nan_to_num(cv, nan=-1.0) >= cv_min)
    total = counts.sum(axis=1)
    ranked = ok[np.argsort(-total[ok], kind="stable")][:top_k]
    return [
        {"id": int(tokens[i]), "count": int(total[i]), "cv": round(float(cv[i]), 6)}
        for i in ranked
    ]


def ids_hash(ids: Sequence[str], labels: np.ndarray, token_ids: np.ndarray | None) -> str:
    """SHA-256 of a training split's (id, label, token ids) content, in id order."""
    h = hashlib.sha256()
    ids = np.asarray(ids).astype(str)
    for r in np.argsort(ids, kind="stable"):
        h.update(f"{ids[r]}\t{int(labels[r])}\t".encode())
        if token_ids is not None:
            h.update(np.asarray(token_ids[r], dtype="<i8").tobytes())
        h.update(b"\n")
    return h.hexdigest()


def cf_vocab_from_arrays(
    ids: Sequence[str],
    token_ids: np.ndarray | None,
    labels: np.ndarray,
    task: str,
    vocab: Sequence[str] | dict | None = None,
    top_k: int = 100,
    cv_min: float = 0.1,
    normalise: bool = False,
    stale_cv: bool = False,
) -> dict:
    """The cf_vocab.json entry of one training split (ids, (N, L) token ids, task labels)."""
    out = {
        "task": task,
        "top_k": int(top_k),
        "cv_min": float(cv_min),
        "normalise": bool(normalise),
        "stale_cv": bool(stale_cv),
        "tokens": [],
        "split_hash": ids_hash(ids, labels, token_ids),
        "n_train": int(len(labels)),
    }
    if token_ids is None:
        out["note"] = NO_IDS_NOTE
        return out
    toks = select_bias_tokens(token_ids, labels, task, top_k, cv_min, normalise, stale_cv)
    for t in toks:
        t["token"] = _lookup(vocab, t["id"])
    out["tokens"] = [{"id": t["id"], "token": t["token"], "count": t["count"], "cv": t["cv"]} for t in toks]
    if normalise:
        out["note"] = "counts divided by training class sizes before the CV (normalise=True)"
    return out


def _lookup(vocab, token_id: int) -> str | None:
    if vocab is None:
        return None
    try:
        tok = vocab[token_id] if isinstance(vocab, dict) else vocab[int(token_id)]
    except (KeyError, IndexError):
        return None
    return None if tok is None else str(tok)


def build_cf_vocab(
    split: Split,
    task: str,
    top_k: int = 100,
    cv_min: float = 0.1,
    normalise: bool = False,
    stale_cv: bool = False,
    vocab: Sequence[str] | dict | None = None,
) -> dict:
    """Bias-token vocabulary of a TRAINING split (see module docstring for the rule)."""
    token_ids = None if split.text_bert is None else split.text_bert[:, 0, :]
    return cf_vocab_from_arrays(
        split.id, token_ids, split.labels(task), task, vocab, top_k, cv_min, normalise, stale_cv
    )


def cf_vocab_ids(ds: MMDataset, task: str, **opts) -> np.ndarray:
    """Bias token ids (int64, most frequent first) computed on `ds["train"]`; empty without ids."""
    train = ds["train"]
    if train.text_bert is None:
        return np.zeros(0, dtype=np.int64)
    opts.pop("vocab", None)
    toks = select_bias_tokens(train.text_bert[:, 0, :], train.labels(task), task, **opts)
    return np.asarray([t["id"] for t in toks], dtype=np.int64)


# ----------------------------------------------------------------------------- token strings
def wordpiece_vocab(model: str | os.PathLike = "minilm") -> list[str] | None:
    """bert-base-uncased's WordPiece vocabulary (MiniLM shares it), or None if not installed."""
    try:
        from mer_bench.data.encoders import resolve_model_dir

        path = resolve_model_dir(model) / "vocab.txt"
    except (ImportError, UserError):
        return None
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()


def dataset_vocab(ds_meta: dict, name: str = "") -> list[str] | dict | None:
    """Token strings for a dataset's ids: its own vocabulary sidecar, else the WordPiece vocab
    for data tokenised with bert-base-uncased (real MOSI/MOSEI, the real-text track)."""
    for key in ("vocab", "id_to_token"):
        v = ds_meta.get(key)
        if isinstance(v, (list, tuple)):
            return list(v)
        if isinstance(v, dict):
            return {int(a): str(b) for a, b in v.items()}
    entries = ds_meta.get("vocabulary")  # the synthetic generator's sidecar: [{"word", "id"}]
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        return {int(e["id"]): str(e["word"]) for e in entries if "id" in e and "word" in e}
    tokenizer = str(ds_meta.get("tokenizer", "")).lower()
    if name in ("mosi", "mosei") or "bert" in tokenizer or "minilm" in tokenizer:
        return wordpiece_vocab()
    return None
