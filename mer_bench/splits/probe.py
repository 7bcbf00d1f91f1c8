"""A linear probe: what a split costs a simple model, before anything is trained.

Why: a split's shift statistic says how far word statistics move, not what that does to a
model. A ridge classifier on mean-pooled features (tuned on valid, scored on test) under the
IID and the OOD partition, beside the majority class of each test set, shows the cost.
"""

from __future__ import annotations

import numpy as np

from mer_bench.data.schema import Split, seven_class, three_class
from mer_bench.errors import UserError

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def ridge_predict(xtr, ytr, xva, yva, xte, n_classes: int) -> np.ndarray:
    """Ridge regression on one-hot targets (closed form; strength chosen on validation
    accuracy): fast and deterministic."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva, xte = (np.c_[((a - mu) / sd).astype(np.float64), np.ones(len(a))]
                     for a in (xtr, xva, xte))
    onehot = np.eye(n_classes)[ytr]
    gram, rhs = xtr.T @ xtr, xtr.T @ onehot
    best = (-1.0, None)
    for lam in LAMBDAS:
        w = np.linalg.solve(gram + lam * len(xtr) * 1e-3 * np.eye(len(gram)), rhs)
        acc = ((xva @ w).argmax(1) == yva).mean()
        if acc > best[0]:
            best = (acc, (xte @ w).argmax(1))
    return best[1]


def pooled(split: Split, modality: str) -> np.ndarray:
    """Mean over each sample's valid positions."""
    x = getattr(split, modality)
    lengths = split.lengths(modality)
    valid = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    return (x * valid[..., None]).sum(1) / np.maximum(valid.sum(1, keepdims=True), 1.0)


def scores(y_reg: np.ndarray, p3: np.ndarray, p7: np.ndarray) -> tuple[float, float]:
    """Non0_acc_2 (argmax over three classes, y == 0 dropped) and Acc_7."""
    nz = y_reg != 0
    non0 = ((p3[nz] == 0) & (y_reg[nz] < 0)) | ((p3[nz] == 2) & (y_reg[nz] > 0))
    return float(non0.mean()), float((p7 == seven_class(y_reg)).mean())


def majority(y_reg: np.ndarray) -> tuple[float, float]:
    """The best constant predictor on this test set: Non0_acc_2 and Acc_7."""
    nz = y_reg[y_reg != 0]
    share = float(max((nz > 0).mean(), (nz < 0).mean())) if len(nz) else 0.0
    return share, float(np.bincount(seven_class(y_reg), minlength=7).max() / max(len(y_reg), 1))


def probe(x: np.ndarray, y_reg: np.ndarray, rows: dict[str, np.ndarray]) -> tuple[float, float]:
    """Fit on rows['train'], tune on rows['valid'], score rows['test'] (Non0_acc_2, Acc_7)."""
    tr, va, te = (rows[s] for s in ("train", "valid", "test"))
    p3 = ridge_predict(x[tr], three_class(y_reg[tr]), x[va], three_class(y_reg[va]), x[te], 3)
    p7 = ridge_predict(x[tr], seven_class(y_reg[tr]), x[va], seven_class(y_reg[va]), x[te], 7)
    return scores(y_reg[te], p3, p7)


def bag_of_words(doc_words: list[list[int]], vocab_size: int) -> np.ndarray:
    """(N, V) 0/1 matrix of which frequent words each document contains."""
    x = np.zeros((len(doc_words), max(vocab_size, 1)), dtype=np.float32)
    for r, ws in enumerate(doc_words):
        x[r, ws] = 1.0
    return x


def sentence_embeddings(texts: list[str], key: str) -> np.ndarray | None:
    """Mean-pooled MiniLM token features of each text (cached), or None without the encoder."""
    try:
        from mer_bench.data.encoders import cached_features, load_encoder, tokenize
    except ImportError:
        return None

    def compute() -> np.ndarray:
        ids, mask, _ = tokenize(texts, "minilm", max_len=50)
        feats = load_encoder("minilm").encode(ids, mask)
        return feats.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)

    try:
        return cached_features(f"sentence/minilm/{key}", compute)
    except (ImportError, OSError, UserError):  # no encoder installed: the caller falls back
        return None


def probe_table(feats: dict[str, np.ndarray], y_reg: np.ndarray,
                partitions: dict[str, dict[str, np.ndarray]]) -> dict:
    """{feature set: {partition: (Non0_acc_2, Acc_7)}} plus each partition's majority class."""
    out = {name: {p: probe(x, y_reg, rows) for p, rows in partitions.items()}
           for name, x in feats.items()}
    out["majority"] = {p: majority(y_reg[rows["test"]]) for p, rows in partitions.items()}
    return out
