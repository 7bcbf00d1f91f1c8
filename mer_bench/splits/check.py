"""`mer-bench split check`: what a split does, before anything is trained.

Why: a user should see the cost of a split (structural checks, shift statistic, priors, and a
linear probe's IID and OOD accuracy beside the majority class) without training a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mer_bench.data.schema import SPLITS
from mer_bench.errors import UserError
from mer_bench.splits.files import coverage_problems, hint, ood_json_path, read_split_json
from mer_bench.splits.probe import bag_of_words, pooled, probe_table, sentence_embeddings
from mer_bench.splits.search import fmt, split_report
from mer_bench.splits.source import SourceData, iid_rows, load_source, rows_from_ids
from mer_bench.splits.statistic import WordIndex

PROBE_MODES = ("auto", "text", "none")
FEATURE_PROBE_MAX = 5000  # samples; larger sets (synth-mosei) probe text only unless asked


def check_split_cli(
    dataset: str | None,
    task: str,
    split: str = "ood",
    label_csv: str | None = None,
    data_root: str | None = None,
    path: str | None = None,
    probe: str = "auto",
    variant: str = "unaligned",
) -> str:
    """Recompute the statistic and priors of a split, check its structure against the data,
    and (unless `probe='none'`) probe its IID and OOD cost."""
    if probe not in PROBE_MODES:
        raise UserError(f"unknown --probe {probe!r}; choose one of: {', '.join(PROBE_MODES)}")
    if split not in ("iid", "ood") and path is None:
        path, split = split, "ood"
    doc, p = None, None
    if path is not None or split == "ood":
        if not path and not dataset:
            raise UserError("give --dataset NAME or --path FILE")
        p = Path(path) if path else ood_json_path(dataset or "", task)
        doc = read_split_json(p, hint=hint(dataset or "DATASET", task))
        dataset = dataset or doc.get("dataset")
        task = doc.get("task", task)
    src = load_source(dataset, task, label_csv, data_root, variant)
    parts = {"iid": iid_rows(src)}
    if doc is not None:
        problems = coverage_problems(doc, src.ids.tolist())
        if problems and problems[0].startswith("lists"):
            raise UserError(f"{p}: {problems[0]}; {hint(dataset, task)}")
        parts["ood"] = rows_from_ids(src, doc["ids"], hint(dataset, task))
    rows = parts.get("ood", parts["iid"])
    index = WordIndex.build(src.texts, (doc or {}).get("params", {}).get("min_count"))
    rep = split_report(src, task, rows, index)
    lines = _summary(f"{p}" if doc else f"{dataset} iid ({src.origin})", task, rep, index)
    if doc is not None:
        lines += _file_checks(doc, src, rep, problems, dataset, task)
    if probe != "none":
        lines += _probe_lines(src, parts, index, task, probe, dataset, data_root, variant,
                              label_csv)
    return "\n".join(lines)


def _summary(where: str, task: str, rep: dict, index: WordIndex) -> list[str]:
    st, tv = rep["statistic"], rep["train_vs_valid"]
    lines = [
        f"{where}: task {task}, sizes {'/'.join(str(rep['sizes'][s]) for s in SPLITS)}, "
        f"{st['words']} frequent words (min_count {index.min_count})",
        f"shift statistic train vs test: TV {st['tv']:.4f}, flip {st['flip']:.3f}, "
        f"skew train {st['skew_train']:.3f} / test {st['skew_test']:.3f}",
        f"train vs valid: TV {tv['tv']:.4f}, flip {tv['flip']:.3f}",
    ]
    return lines + [f"priors {s:5s}: {fmt(rep['priors'][s])}" for s in SPLITS]


def _file_checks(doc: dict, src: SourceData, rep: dict, coverage: list[str], dataset: str,
                 task: str) -> list[str]:
    """Structure (already enforced on read), coverage of the data, provenance, stored figures."""
    lines = ["checks: train/valid/test disjoint and duplicate-free: ok; sizes as stated: ok; "
             + (f"covers the data's {len(src.ids)} ids: ok" if not coverage
                else f"coverage: {coverage[0]}")]
    lines.append(
        f"algorithm {doc.get('algorithm', '?')} {doc.get('algorithm_version', '?')}, seed "
        f"{doc.get('seed')}, strength {doc.get('params', {}).get('strength', 'max (1.0 files)')}"
        + (f", train priors {doc['params']['train_priors']}" if doc.get("params", {}).get(
            "train_priors") else "")
    )
    stored = doc.get("ood", {}).get("statistic", {}).get("tv")
    if doc.get("source", {}).get("sha256") != src.sha256():
        lines.append(
            "note: the data differ from those the split was built on (source sha256); "
            f"the figures above are for the current data; to rebuild, {hint(dataset, task)}"
        )
    elif stored is not None:
        ok = abs(stored - rep["statistic"]["tv"]) < 1e-4
        lines.append(f"stored statistic {stored:.4f}: {'matches' if ok else 'DIFFERS'}")
    return lines


def _probe_lines(src: SourceData, parts: dict, index: WordIndex, task: str, mode: str,
                 dataset: str | None, data_root, variant: str, label_csv: str | None) -> list[str]:
    feats, how = _text_features(src, index)
    if mode == "auto" and not label_csv and dataset and len(src.ids) <= FEATURE_PROBE_MAX:
        feats.update(_modality_features(src, dataset, data_root, variant))
    table = probe_table(feats, src.regression.astype(np.float32), parts)
    k = 0 if task == "binary" else 1
    metric = "Non0_acc_2" if task == "binary" else "Acc_7"
    names = list(parts)
    head = f"probe ({how}; ridge on train, tuned on valid; test {metric} x100):"
    lines = [head + "  " + "  ".join(f"{n:>6s}" for n in names) + ("    drop" if len(names) > 1 else "")]
    for name, res in table.items():
        vals = [100 * res[n][k] for n in names]
        drop = f"  {vals[0] - vals[-1]:6.1f}" if len(vals) > 1 else ""
        lines.append(f"  {name:<16s}" + "  ".join(f"{v:6.1f}" for v in vals) + drop)
    return lines


def _text_features(src: SourceData, index: WordIndex) -> tuple[dict, str]:
    """Sentence embeddings when the encoder is installed, else bag of frequent words."""
    emb = sentence_embeddings(src.texts.tolist(), src.sha256())
    if emb is not None:
        return {"text (MiniLM)": emb}, "text: mean-pooled MiniLM sentence embeddings"
    return {"text (words)": bag_of_words(index.doc_words, len(index.vocab))}, \
        "text: bag of frequent words (no encoder installed)"


def _modality_features(src: SourceData, dataset: str, data_root, variant: str) -> dict:
    """Mean-pooled text/audio/vision of the dataset's own features, in `src` row order."""
    from mer_bench.data.registry import load_iid

    try:
        ds = load_iid(dataset, variant, data_root)[0]
    except UserError:
        return {}
    ids = np.concatenate([np.asarray(ds[s].id).astype(str) for s in SPLITS])
    pos = {v: i for i, v in enumerate(ids.tolist())}
    if set(pos) != set(src.ids.tolist()):
        return {}
    order = np.asarray([pos[v] for v in src.ids.tolist()])
    out = {}
    for m in ("text", "audio", "vision"):
        out[m] = np.concatenate([pooled(ds[s], m) for s in SPLITS])[order]
    out["all three"] = np.concatenate([out[m] for m in ("text", "audio", "vision")], axis=1)
    return out
