"""Counterfactual bias-token vocabulary: checked against an independent from-scratch count."""

from __future__ import annotations

import numpy as np
import pytest

from mer_bench.data.schema import MMDataset, Split
from mer_bench.splits.vocabulary import (
    NO_IDS_NOTE,
    build_cf_vocab,
    cf_vocab_ids,
    select_bias_tokens,
)

SPECIAL = {0, 100, 101, 102, 103}


def _reference(ids: np.ndarray, labels: np.ndarray, task: str, top_k=100, cv_min=0.1, stale=False):
    """A plain-Python re-count in the official loop's style (dict insertion order)."""
    k = 3 if task == "binary" else 7
    counts: dict[int, list[int]] = {}
    for row, y in zip(ids.tolist(), labels.tolist()):
        for t in row:
            if t in SPECIAL:
                continue
            counts.setdefault(t, [0] * k)[y] += 1
    kept = []
    prev = None
    for t, c in counts.items():
        vals = [c[0], c[2]] if task == "binary" else c
        mean = sum(vals) / len(vals)
        if mean > 0:
            std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            cv = std / mean
            prev = cv
        else:
            cv = prev if stale else None
        if cv is not None and cv >= cv_min:
            kept.append((t, sum(c), cv))
    kept = sorted(kept, key=lambda x: x[1], reverse=True)[:top_k]
    return kept


def _split(ids: np.ndarray, y: np.ndarray) -> Split:
    n, length = ids.shape
    tb = np.stack([ids, (ids != 0).astype(np.int64), np.zeros_like(ids)], axis=1)
    return Split(
        text=np.zeros((n, length, 2), np.float32),
        audio=np.zeros((n, 3, 2), np.float32),
        vision=np.zeros((n, 3, 2), np.float32),
        audio_lengths=np.full(n, 3), vision_lengths=np.full(n, 3),
        regression_labels=y.astype(np.float32),
        classification_labels=np.where(y < 0, 0, np.where(y > 0, 2, 1)),
        id=np.array([f"s{i}" for i in range(n)]), raw_text=np.array([""] * n), text_bert=tb,
    )


def _random_ids(n=400, length=20, seed=0):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(-3, 3, n) * 2) / 2  # includes exact zeros and .5 ties
    ids = rng.zipf(1.3, size=(n, length)) % 600 + 1000
    # class-dependent tokens so that CV varies
    ids[:, 1] = np.where(y > 0, 2001, 2002)
    ids[:, 0], ids[:, -1] = 101, 102
    ids[rng.random((n, length)) < 0.05] = 100
    ids[:, -4:-1] = 0
    return ids.astype(np.int64), y


@pytest.mark.parametrize("task", ["binary", "seven"])
def test_vocab_matches_independent_recount(task):
    ids, y = _random_ids()
    sp = _split(ids, y)
    vocab = build_cf_vocab(sp, task)
    labels = sp.labels(task)
    ref = _reference(ids, labels, task)
    got = [(t["id"], t["count"], t["cv"]) for t in vocab["tokens"]]
    assert len(got) <= 100 and len(got) == len(ref)
    assert [g[:2] for g in got] == [r[:2] for r in ref]
    for g, r in zip(got, ref):
        assert g[2] == pytest.approx(r[2], abs=1e-6) and r[2] >= 0.1
        assert g[0] not in SPECIAL
    assert cf_vocab_ids(MMDataset("x", "unaligned", {"train": sp}), task).tolist() == [g[0] for g in got]
    assert vocab["task"] == task and vocab["top_k"] == 100 and len(vocab["split_hash"]) == 64


def test_stale_cv_changes_result_on_neutral_only_token():
    # token 2000 (neg 5, pos 1: cv 2/3) appears first; token 3000 only in neutral samples
    rows = [[101, 2000, 102, 0]] * 6 + [[101, 3000, 3000, 102]] * 4
    labels = [-1.0] * 5 + [1.0] + [0.0] * 4
    sp = _split(np.array(rows), np.array(labels))
    default = build_cf_vocab(sp, "binary")
    stale = build_cf_vocab(sp, "binary", stale_cv=True)
    assert [t["id"] for t in default["tokens"]] == [2000]
    assert [t["id"] for t in stale["tokens"]] == [3000, 2000]  # 8 occurrences sort first
    assert stale["tokens"][0]["cv"] == pytest.approx(2 / 3, abs=1e-6)
    assert stale["stale_cv"] is True and default["stale_cv"] is False
    ref = _reference(np.array(rows), sp.labels("binary"), "binary", stale=True)
    assert [r[0] for r in ref] == [3000, 2000]
    # seven-class CV has no stale path: the flag changes nothing there
    assert build_cf_vocab(sp, "seven", stale_cv=True)["tokens"] == build_cf_vocab(sp, "seven")["tokens"]


def test_normalise_divides_by_class_size():
    # 1 neg sample and 9 pos samples; token 2000 once in each sample: raw cv 0.8, normalised 0
    rows = [[101, 2000, 102]] * 10
    y = np.array([-1.0] + [1.0] * 9)
    sp = _split(np.array(rows), y)
    assert [t["id"] for t in build_cf_vocab(sp, "binary")["tokens"]] == [2000]
    norm = build_cf_vocab(sp, "binary", normalise=True)
    assert norm["tokens"] == [] and norm["normalise"] is True and "normalise" in norm["note"]


def test_top_k_and_cv_min_respected():
    ids, y = _random_ids(seed=3)
    toks = select_bias_tokens(ids, np.where(y < 0, 0, np.where(y > 0, 2, 1)), "binary", top_k=7,
                              cv_min=0.3)
    assert len(toks) == 7 and all(t["cv"] >= 0.3 for t in toks)
    assert [t["count"] for t in toks] == sorted((t["count"] for t in toks), reverse=True)


def test_no_token_ids_gives_empty_vocabulary():
    ids, y = _random_ids(n=10)
    sp = _split(ids, y)
    sp.text_bert = None
    v = build_cf_vocab(sp, "binary")
    assert v["tokens"] == [] and v["note"] == NO_IDS_NOTE
    assert cf_vocab_ids(MMDataset("casp", "aligned", {"train": sp}), "binary").size == 0


def test_token_strings_from_vocabulary():
    rows = [[101, 2000, 102]] * 3 + [[101, 2001, 102]]
    sp = _split(np.array(rows), np.array([1.0, 1.0, 1.0, -1.0]))
    v = build_cf_vocab(sp, "binary", vocab={2000: "good"})
    assert [(t["id"], t["token"]) for t in v["tokens"]] == [(2000, "good"), (2001, None)]


def test_real_mosi_vocab_has_wordpiece_strings():
    from pathlib import Path

    from mer_bench.splits import source

    csv = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "label.csv"
    if not csv.is_file():
        pytest.skip("../shared/data/mosi/label.csv absent")
    src = source.source_from_label_csv(csv, tokens=True)
    if src.token_ids is None:
        pytest.skip(f"no MiniLM tokenizer: {src.token_note}")
    rows = np.flatnonzero(src.iid == "train")
    labels = src.labels("binary")[rows]
    from mer_bench.splits.vocabulary import cf_vocab_from_arrays

    v = cf_vocab_from_arrays(src.ids[rows], src.token_ids[rows], labels, "binary", vocab=src.vocab)
    words = [t["token"] for t in v["tokens"]]
    assert len(words) == 100 and all(isinstance(w, str) for w in words)
    ref = _reference(src.token_ids[rows], labels, "binary")
    assert [t["id"] for t in v["tokens"]] == [r[0] for r in ref]
    print("\nMOSI IID binary bias tokens (first 15):", words[:15])
