"""What a split is built from: ids, labels, text (and token ids) of every sample of a dataset.

Why: a split needs no features. Real data come from a label.csv or the dataset's IID splits;
the embedded synthetic sets replay the generator's text draws, so synth-mosei takes seconds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer_bench.data.schema import SPLITS, Split
from mer_bench.errors import DataError, UserError
from mer_bench.splits.statistic import task_labels, words

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
            from mer_bench.splits.vocabulary import wordpiece_vocab
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
    from mer_bench.data.registry import load_iid
    from mer_bench.splits.vocabulary import dataset_vocab

    ds = load_iid(dataset, variant, data_root)[0]
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

    seed_v = synth.DEFAULT_SEED if seed is None else int(seed)
    text, vocab = synth.synth_text(dataset, seed_v, scale)
    parts = [text[s] for s in SPLITS]
    return SourceData(
        ids=np.concatenate([x["id"] for x in parts]),
        regression=np.concatenate([x["regression_labels"] for x in parts]).astype(np.float32),
        texts=np.concatenate([x["raw_text"] for x in parts]),
        iid=np.concatenate([np.full(len(x["id"]), s) for s, x in zip(SPLITS, parts)]),
        origin=f"{dataset} (synthetic generator v{synth.GENERATOR_VERSION}, seed {seed_v}; "
        "text and labels only)",
        token_ids=np.concatenate([x["text_bert"][:, 0, :] for x in parts]),
        vocab={int(i): w for i, w in zip(vocab.ids, vocab.words)},
        token_note="the synthetic generator's text_bert ids; token strings from its vocabulary",
    )
