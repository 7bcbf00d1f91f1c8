"""Run cells: (model, scenario, seed) -> train once (or per rate), score every grid point, store.

Why one module owns this: data flows one way (dataset -> scenario corruption -> model ->
scorer -> store) and the harness, not the model, owns masks, selection and test data. A cell's
training is keyed separately from its scenario (`train_key`), so one trained model serves every
scenario with the same training distribution (rmfm-iid, trmfm-iid, rmm-iid, smm-iid ...).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from mer_bench.errors import UserError
from mer_bench.paths import results_default
from mer_bench.results.store import Store, atomic_write_bytes, keeps_joint
from mer_bench.training import provenance
from mer_bench.training.keys import data_identity, dataset_slug, model_code_version
from mer_bench.training.progress import grid_bar
from mer_bench.training.selection import describe as describe_selection
from mer_bench.training.trainer import (
    TrainResult,
    TrainSettings,
    WarmupStore,
    predict,
    resolve_device,
    seed_torch,
    train,
)

JOINT_SAMPLES = 300  # joint representations kept per stored grid point (Fig. 8 scatter)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a cell except the seed. `None` means "the model's default"."""

    model: str
    scenario: str
    dataset: str = "synth-mosi"
    variant: str = "unaligned"
    task: str = "binary"
    protocol: str = "fair"
    epochs: int | None = None
    device: str = "auto"
    rates: tuple[float, ...] | None = None
    train_policy: str | None = None
    batch_size: int | None = None
    patience: int | None = None
    hparams: tuple[tuple[str, Any], ...] = ()
    data_root: str | None = None
    scale: float | None = None
    compat: str | None = None
    ablations: tuple[str, ...] = ()
    text_encoder: str | None = None  # None: $MER_BENCH_TEXT_ENCODER, else fixed features
    hp_from: str | None = None  # "tuned:PATH" (a `mer-bench tune` summary)


@dataclass(frozen=True)
class Resolved:
    """A cell with every default filled in, plus its identities."""

    cfg: RunConfig
    seed: int
    model_cls: type
    scenario: Any
    hparams: dict[str, Any]
    compat: frozenset[str]
    policy: str
    epochs: int
    patience: int
    batch_size: int
    run_id: str
    config_hash: str
    hash_payload: dict[str, Any] = field(default_factory=dict, compare=False)
    data: dict[str, Any] | None = None  # the loaded data's identity (`identify`)
    text_encoder: str | None = None
    hparams_source: str = ""

    @property
    def eval_batch_size(self) -> int:
        """Under `batch_pe` positions depend on the batch row, so evaluate with the training
        batch size (no row unseen in training); otherwise 256."""
        return self.batch_size if "batch_pe" in self.compat else 256

    def train_key(self, point_label: str | None = None) -> str:
        """Keys a trained model: everything that shapes training, the data's identity and
        the model's code version, so a stale checkpoint is never reused."""
        return self._key(self._key_payload(point_label))

    def warmup_key(self) -> str:
        """Keys a model's warm-up stage (`BenchModel.selection_start`): the training key
        without what only the selected stage sees (policy, one-to-one point, patience)."""
        payload = self._key_payload(None)
        for name in ("policy", "one_to_one_point", "one_to_one_mode", "patience"):
            payload.pop(name)
        return self._key({**payload, "stage": "warm-up"}) + "__warmup"

    def _key_payload(self, point_label: str | None) -> dict[str, Any]:
        c = self.cfg
        return {
            "model": c.model,
            "dataset": c.dataset,
            "variant": c.variant,
            "task": c.task,
            "distribution": self.scenario.distribution,
            "scale": c.scale,
            "seed": self.seed,
            "epochs": self.epochs,
            "patience": self.patience,
            "batch_size": self.batch_size,
            "policy": self.policy,
            "hparams": self.hparams,
            "one_to_one_point": point_label,
            "one_to_one_mode": self.scenario.mode.name if point_label is not None else None,
            "data": self.data,
            "code": model_code_version(c.model),
            **({"text_encoder": self.text_encoder} if self.text_encoder else {}),
        }

    def _key(self, payload: dict[str, Any]) -> str:
        slug = dataset_slug(self.cfg.dataset)
        return f"{self.cfg.model.replace('+', '-')}__{slug}__{provenance.config_hash(payload)}"


def _run_id(r: Resolved, h: str) -> str:
    c = r.cfg
    parts = [c.model.replace("+", "-"), dataset_slug(c.dataset), c.variant, c.task,
             r.scenario.name, c.protocol, f"s{r.seed}", h]
    return "__".join(parts)


def identify(r: Resolved, ds) -> Resolved:
    """`r` with the loaded data's identity in its config hash, run id and training key."""
    ident = data_identity(ds)
    h = provenance.config_hash({**r.hash_payload, "data": ident})
    return replace(r, data=ident, config_hash=h, run_id=_run_id(r, h))


def resolve(cfg: RunConfig, seed: int) -> Resolved:
    """Fill defaults and validate names without loading data (errors are one line, exit 2)."""
    from mer_bench.models import load_builtin_models
    from mer_bench.scenarios import get_scenario
    from mer_bench.training import validate

    if cfg.task not in ("binary", "seven"):
        raise UserError(f"unknown task {cfg.task!r}; choose one of: binary, seven")
    validate.check_seeds([seed])
    validate.check_count("--epochs", cfg.epochs, validate.MAX_EPOCHS)
    validate.check_count("--patience", cfg.patience, validate.MAX_EPOCHS)
    validate.check_count("--batch-size", cfg.batch_size, validate.MAX_BATCH)
    validate.check_rates(cfg.rates)
    if cfg.protocol not in ("fair", "paper"):
        raise UserError(f"unknown protocol {cfg.protocol!r}; choose one of: fair, paper")
    registry = load_builtin_models()
    base, *wrappers = cfg.model.split("+")
    cls = registry.get(base).cls
    if wrappers:
        from mer_bench.models import WRAPPERS

        for w in wrappers:
            WRAPPERS.get(w)
    scenario = get_scenario(cfg.scenario)
    if cfg.rates is not None:
        scenario = scenario.with_rates(cfg.rates)
    from mer_bench.data.registry import DATASETS

    if not cfg.dataset.endswith(".pkl"):
        entry = DATASETS.get(cfg.dataset)
        if cfg.variant not in entry.variants:
            raise UserError(
                f"dataset {cfg.dataset} has no variant {cfg.variant!r}; choose one of: "
                + ", ".join(entry.variants)
            )
        if scenario.distribution == "cross" and entry.cross_loader and cfg.variant != "aligned":
            raise UserError(
                f"{cfg.scenario} on {cfg.dataset} uses the aligned cross-dataset release; add "
                "--variant aligned"
            )
    from mer_bench.scenarios import check_compatible

    check_compatible(scenario, aligned=cfg.variant == "aligned")
    validate.check_model_variant(cfg.model, cfg.variant)

    hp = dict(cfg.hparams)
    if {"compat", "ablations"} & set(hp):
        raise UserError("set compat and ablations with --compat / --ablate, not --hp")
    tuned_source = None
    if cfg.hp_from:
        from mer_bench.training.hpsource import load_tuned

        tuned, tuned_source = load_tuned(cfg.hp_from, cfg.model)
        hp = {**tuned, **hp}  # explicit --hp wins over tuned values
    from mer_bench.textpath import resolve_text_encoder
    from mer_bench.training.hpsource import describe

    source = describe(cls, dict(cfg.hparams), tuned_source)
    text_encoder = resolve_text_encoder(cfg.text_encoder)
    compat: frozenset[str] = frozenset()
    if cfg.compat or cfg.ablations:
        if "compat" not in cls.defaults:
            raise UserError(f"model {base} has no --compat/--ablate switches")
        if cfg.compat:
            from cider.compat import expand_compat

            compat = expand_compat(cfg.compat, cls.compat_switches)
            hp["compat"] = ",".join(sorted(compat))
            if "split_class_means" in compat and cfg.protocol == "fair":
                raise UserError(
                    "compat split_class_means reads valid/test labels (the official MCM), which "
                    "the fair protocol forbids; use --protocol paper (oracle) or list the other "
                    "switches"
                )
        if cfg.ablations:
            hp["ablations"] = tuple(cfg.ablations)
    validate.check_model_hparams(cfg.model, hp)
    if cfg.train_policy:
        policy = cfg.train_policy
    elif "per_element_train" in compat:
        policy = "per-element-uniform"
    else:
        policy = "per-sample-uniform"
    if cls.training == "one-to-one":
        policy = "fixed-rate"
    epochs = getattr(cls, "max_epochs", 200) if cfg.epochs is None else cfg.epochs
    patience = getattr(cls, "patience", 10) if cfg.patience is None else cfg.patience
    batch_size = getattr(cls, "batch_size", 128) if cfg.batch_size is None else cfg.batch_size
    payload = {
        "grid": scenario.grid_labels(),
        "scenario_version": scenario.version,
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "policy": policy,
        "hparams": hp,
        "scale": cfg.scale,
        **({"text_encoder": text_encoder} if text_encoder else {}),
    }
    h = provenance.config_hash(payload)
    r = Resolved(
        cfg, seed, cls, scenario, hp, compat, policy, epochs, patience, batch_size, "", h, payload,
        text_encoder=text_encoder, hparams_source=source,
    )
    return replace(r, run_id=_run_id(r, h))


# ----------------------------------------------------------------------------- one cell
def effective_hparams(model: torch.nn.Module) -> dict[str, Any]:
    """Every hyper-parameter the model ran with (its defaults merged with the request), a
    wrapped base's under "base": the config hash covers only what was requested, so the
    record is what tells two code versions' defaults apart."""
    h = dict(getattr(model, "hparams", {}))
    base = getattr(model, "base", None)
    if base is not None and hasattr(base, "hparams"):
        h["base"] = effective_hparams(base)
    return json.loads(json.dumps(h, default=str))


def _train_drops(r: Resolved, point):
    """The training corruption: a registered policy, or (one-to-one) the scenario's own mode
    at that grid point; draws depend only on (seed, epoch, sample id)."""
    from mer_bench.scenarios import get_policy
    from mer_bench.scenarios.base import sample_rngs

    if r.policy == "fixed-rate":
        mode = r.scenario.mode

        def drops(ids, lengths, epoch):
            rngs = sample_rngs(r.seed, f"train|fixed|{mode.name}|{epoch}", ids)
            return mode.fn(lengths, point.rate, rngs)

        return drops
    if r.policy == "none":
        return None
    policy = get_policy(r.policy)
    return policy.bind(r.seed)


def _eval_drops(r: Resolved, point):
    return lambda ids, lengths: r.scenario.drops(ids, lengths, point, r.seed)


def _cf_vocab(r: Resolved, ds) -> np.ndarray | None:
    from mer_bench.splits.vocabulary import cf_vocab_ids

    if ds["train"].text_bert is None:
        return None
    return cf_vocab_ids(ds, r.cfg.task, stale_cv="stale_cv" in r.compat)


# checkpoints written by this process: under `force` only these are reused, so a forced grid
# retrains each shared training once (cells sharing one run in the same process)
_FRESH: set[str] = set()


def _reusable(path, retrain: bool) -> bool:
    """A stored checkpoint or warm-up is reused unless retraining, when only one this process
    wrote is."""
    return path.exists() and (not retrain or str(path) in _FRESH)


def _build_and_train(
    r: Resolved, ds, device: str, store: Store, point, progress: bool, retrain: bool = False
):
    """Build the model, prepare it on training data, and train it or load its checkpoint
    (with `retrain`, only a checkpoint this process wrote)."""
    from mer_bench.textpath import build_with_text_encoder

    seed_torch(r.seed)
    model = build_with_text_encoder(r.cfg.model, ds.spec, r.cfg.task, r.text_encoder, **r.hparams)
    model.prepare(ds["train"], cf_vocab=_cf_vocab(r, ds))
    model.to(device)
    if "split_class_means" in r.compat:  # oracle compat: early stopping sees valid's means too
        model.prepare_eval(ds["valid"])
    key = r.train_key(point.label if r.policy == "fixed-rate" else None)
    ckpt = store.checkpoint_path(key)
    if _reusable(ckpt, retrain):
        return model, _load_checkpoint(model, ckpt, key, r.seed), key, True
    with store.claim_training(key):  # busy: this cell is skipped, as a claimed cell is
        if _reusable(ckpt, retrain):  # written by another process while this one checked
            return model, _load_checkpoint(model, ckpt, key, r.seed), key, True
        result = _train_and_save(r, ds, model, device, point, progress, ckpt, key,
                                 _warmup_store(r, store, retrain))
    return model, result, key, False


def _train_and_save(r: Resolved, ds, model, device: str, point, progress: bool, ckpt,
                    key: str, warmup: WarmupStore) -> TrainResult:
    """Train with validation-only early stopping and write the checkpoint atomically."""
    settings = TrainSettings(
        task=r.cfg.task,
        epochs=r.epochs,
        patience=r.patience,
        batch_size=r.batch_size,
        seed=r.seed,
        device=device,
        eval_batch_size=r.eval_batch_size,
    )
    from mer_bench.scenarios.base import rate_point

    val_points = (
        [(point, _eval_drops(r, point))]
        if r.policy == "fixed-rate"
        else [(rate_point(0.0), None)]
    )
    result = train(
        model,
        ds["train"],
        ds["valid"],
        settings,
        _train_drops(r, point),
        val_points,
        progress=progress,
        desc=f"{r.cfg.model} s{r.seed}" + (f" @{point.label}" if r.policy == "fixed-rate" else ""),
        warmup=warmup,
    )
    _save_state(ckpt, {"model": model.state_dict(), "info": asdict(result), "seed": r.seed,
                       "train_key": key})
    _FRESH.add(str(ckpt))
    return result


def _save_state(path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"could not write checkpoint {path} ({e.strerror or e})") from None


def _warmup_store(r: Resolved, store: Store, retrain: bool) -> WarmupStore:
    """A model's warm-up kept beside the checkpoints under `warmup_key`, checked on load like
    a checkpoint (with `retrain`, only one this process wrote is reused)."""
    key = r.warmup_key()
    path = store.checkpoint_path(key)

    def load() -> dict | None:
        if not _reusable(path, retrain):
            return None
        state = _read_state(path)
        if state.get("warmup_key") != key:
            raise UserError(f"{path} is not the warm-up {key}; {_FIX}")
        return state

    def save(state: dict) -> None:
        _save_state(path, {**state, "warmup_key": key})
        _FRESH.add(str(path))

    return WarmupStore(load, save)


_FIX = "delete it or rerun with --force"


def _read_state(path) -> dict:
    """A stored checkpoint or warm-up through the safe loader; a one-line error with the fix."""
    from mer_bench.data.safe_pickle import safe_torch_load

    try:
        state = safe_torch_load(path)
    except UserError as e:
        raise UserError(f"{e}; {_FIX}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a mer-bench checkpoint; {_FIX}")
    return state


def _load_checkpoint(model: torch.nn.Module, ckpt, key: str, seed: int) -> TrainResult:
    """Weights through the safe loader; the checkpoint must be the one its name says (training
    key and seed recorded inside), else a one-line error with the fix."""
    state = _read_state(ckpt)
    if not {"model", "info"} <= set(state):
        raise UserError(f"{ckpt} is not a mer-bench checkpoint; {_FIX}")
    if state.get("train_key") != key or state.get("seed") != seed:
        raise UserError(
            f"{ckpt} was written for training key {state.get('train_key')!r}, seed "
            f"{state.get('seed')!r}, not {key}, seed {seed}; {_FIX}"
        )
    try:
        model.load_state_dict(state["model"])
        return TrainResult(**state["info"])
    except (RuntimeError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise UserError(f"{ckpt} does not fit this model ({first}); {_FIX}") from None


@dataclass
class Stage:
    """What the stages of one cell hand each other: the loaded data, the trained model(s) per
    grid point, raw predictions, then scores (filled in order by train, predict, score)."""

    r: Resolved
    ds: Any
    device: str
    points: list
    one_to_one: bool
    trained: dict[str, tuple] = field(default_factory=dict)
    test_out: dict[str, dict] = field(default_factory=dict)
    valid_out: dict[str, dict] = field(default_factory=dict)
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    tau_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_cell(cfg: RunConfig, seed: int, results: str, force: bool = False, progress: bool = False):
    """Train and evaluate one (config, seed) cell and write it to the store; returns its record
    (or the existing record when the cell is already finished and `force` is False). The cell
    is claimed while it is computed, so a second process never trains it at the same time.
    Stages: train -> predict -> score -> record."""
    t_start = time.perf_counter()
    r, ds = identified(cfg, seed)
    t_data = time.perf_counter() - t_start
    store = Store(results)
    if store.is_done(r.run_id) and not force:
        return store.load_record(r.run_id)
    store.check_writable()
    with store.claim(r.run_id):
        if store.is_done(r.run_id) and not force:  # finished by another process meanwhile
            return store.load_record(r.run_id)
        return _compute_cell(r, ds, store, force, progress, t_start, t_data)


def identified(cfg: RunConfig, seed: int):
    """The resolved cell with its data's identity, and the data (loaded once per process)."""
    from mer_bench.datasets import load_dataset

    r = resolve(cfg, seed)
    ds = load_dataset(
        cfg.dataset,
        variant=cfg.variant,
        distribution=r.scenario.distribution,
        task=cfg.task,
        data_root=cfg.data_root,
        scale=cfg.scale,
    )
    return identify(r, ds), ds


def _compute_cell(r: Resolved, ds, store: Store, force: bool, progress: bool,
                  t_start: float, t_data: float) -> dict:
    """The four stages of one claimed cell, then the atomic write (a write failure is one
    line and keeps the trained checkpoints)."""
    st = Stage(r, ds, resolve_device(r.cfg.device), list(r.scenario.grid),
               r.policy == "fixed-rate")
    st.timings["data_s"] = t_data
    _stage_train(st, store, progress, force)
    st.timings["train_s"] = time.perf_counter() - t_start - st.timings["data_s"]
    _stage_predict(st, store, progress, force)
    st.timings["eval_s"] = (
        time.perf_counter() - t_start - st.timings["data_s"] - st.timings["train_s"]
    )
    _stage_score(st)
    record, rows = _stage_record(st)
    try:
        store.write_run(r.run_id, record, rows, st.preds)
    except OSError as e:
        kept = ", ".join(sorted({v[2] for v in st.trained.values()}))
        raise UserError(
            f"could not write results of {r.run_id} to {store.root} ({e.strerror or e}); the "
            f"trained checkpoint(s) {kept} are kept: free space or fix permissions and rerun"
        ) from None
    return record


def _stage_train(st: Stage, store: Store, progress: bool, force: bool) -> None:
    """Train stage: one model for every grid point (one-to-one models train in predict)."""
    if not st.one_to_one:
        model, tres, key, cached = _build_and_train(
            st.r, st.ds, st.device, store, st.points[0], progress, retrain=force
        )
        st.trained = {p.label: (model, tres, key, cached) for p in st.points}


def _stage_predict(st: Stage, store: Store, progress: bool, force: bool) -> None:
    """Predict stage: test (and, for counterfactual models under `fair`, validation)
    predictions at every grid point; the masks come from the harness."""
    from tqdm.auto import tqdm

    r, ds, points = st.r, st.ds, st.points
    valid, test = ds["valid"], ds["test"]
    st.preds = {
        "ids": np.asarray(test.id).astype(str),
        "y_reg": test.regression_labels,
        "labels": test.labels(r.cfg.task),
    }
    keep_joint = {points[0].label, points[len(points) // 2].label, points[-1].label}
    bar = tqdm(points, desc="evaluate", disable=not progress, leave=False)
    for p in bar:
        if st.one_to_one:
            st.trained[p.label] = _build_and_train(
                r, ds, st.device, store, p, progress, retrain=force
            )
        model = st.trained[p.label][0]
        cf = bool(getattr(model, "counterfactual", False))
        if "split_class_means" in r.compat:
            model.prepare_eval(test)
        st.test_out[p.label] = predict(
            model, test, _eval_drops(r, p), st.device, batch_size=r.eval_batch_size,
            counterfactual=cf, keep_joint=p.label in keep_joint,
        )
        if cf and r.cfg.protocol == "fair":
            if "split_class_means" in r.compat:
                model.prepare_eval(valid)
            st.valid_out[p.label] = predict(
                model, valid, _eval_drops(r, p), st.device, batch_size=r.eval_batch_size,
                counterfactual=True
            )


def _stage_score(st: Stage) -> None:
    """Score stage: move the raw predictions into `st.preds` (what the store keeps) and score
    them with `mer_bench.scoring`, the same pure function `mer-bench report` uses."""
    from mer_bench.metrics import TAU_GRID
    from mer_bench.scoring import score_predictions

    r, points, preds = st.r, st.points, st.preds
    model0 = st.trained[points[0].label][0]
    for p in points:
        o = st.test_out[p.label]
        preds[f"scores@{p.label}"] = o["scores"]
        if "cf_scores" in o:
            preds[f"cf_scores@{p.label}"] = o["cf_scores"]
        if "joint" in o and keeps_joint(r.scenario.name):
            preds[f"joint@{p.label}"] = o["joint"][:JOINT_SAMPLES].astype(np.float16)
        if p.label in st.valid_out:
            preds[f"valid_scores@{p.label}"] = st.valid_out[p.label]["scores"]
            preds[f"valid_cf_scores@{p.label}"] = st.valid_out[p.label]["cf_scores"]
    if st.valid_out:
        preds["valid_labels"] = st.ds["valid"].labels(r.cfg.task)
    scored = score_predictions(  # the correction strength's grid and name are the model's
        preds, output=model0.output, task=r.cfg.task, protocol=r.cfg.protocol,
        grid=[p.label for p in points],
        strengths=getattr(model0, "correction_grid", TAU_GRID),
        strength_name=getattr(model0, "correction_name", "tau"),
    )
    st.metrics.update(scored.metrics)
    st.tau_info = {**scored.tau_info, "counterfactual": bool(getattr(model0, "counterfactual", False))}


def _tidy_rows(st: Stage) -> pd.DataFrame:
    cfg, r = st.r.cfg, st.r
    return pd.DataFrame(
        [
            {
                "run_id": r.run_id,
                "model": cfg.model,
                "dataset": cfg.dataset,
                "variant": cfg.variant,
                "task": cfg.task,
                "scenario": r.scenario.name,
                "protocol": cfg.protocol,
                "seed": r.seed,
                "rate": p.label,
                "metric": m,
                "value": v,
            }
            for p in st.points
            for m, v in st.metrics[p.label].items()
        ]
    )


def _stage_record(st: Stage) -> tuple[dict, pd.DataFrame]:
    """Record stage: the tidy rows and the provenance record (AUILC over numeric grids)."""
    from mer_bench.metrics import HEADLINE, auilc
    from mer_bench.textpath import text_path

    r, cfg, points, metrics, ds = st.r, st.r.cfg, st.points, st.metrics, st.ds
    auilcs = {}
    if r.scenario.numeric and len(points) > 1:
        xs = [float(p.rate) for p in points]
        for m in metrics[points[0].label]:
            auilcs[m] = float(auilc(xs, [metrics[p.label][m] for p in points]))
    model0, tres = st.trained[points[0].label][0], st.trained[points[0].label][1]
    record = {
        "run_id": r.run_id,
        "status": "finished",
        "model": cfg.model,
        "model_paper": getattr(r.model_cls, "paper", ""),
        "output": model0.output,
        "training_mode": "one-to-one" if st.one_to_one else "one-to-all",
        "dataset": cfg.dataset,
        "variant": cfg.variant,
        "task": cfg.task,
        "scenario": r.scenario.name,
        "scenario_version": r.scenario.version,
        "scenario_definition": r.scenario.definition,
        "distribution": r.scenario.distribution,
        "protocol": cfg.protocol,
        "oracle": cfg.protocol == "paper"
        and (st.tau_info["counterfactual"] or "split_class_means" in r.compat),
        "seed": r.seed,
        "grid": [p.label for p in points],
        "config": {**asdict(cfg), "resolved_hparams": r.hparams},
        "config_hash": r.config_hash,
        "train_keys": sorted({v[2] for v in st.trained.values()}),
        "checkpoint_reused": all(v[3] for v in st.trained.values()),
        "epochs": r.epochs,
        "patience": r.patience,
        "batch_size": r.batch_size,
        "train_policy": r.policy,
        "compat": sorted(r.compat),
        "ablations": list(cfg.ablations),
        "text_missing": "unk-id" if r.text_encoder else "zero-feature",
        "text_path": text_path(r.text_encoder),
        "hparams_source": r.hparams_source,
        "eval_batch_size": r.eval_batch_size,
        "selection": describe_selection(tres.selection, HEADLINE[cfg.task], st.one_to_one),
        "updates": tres.updates,
        "headline": HEADLINE[cfg.task],
        "tau": st.tau_info,
        "n_parameters": int(model0.n_parameters()),
        "model_hparams": effective_hparams(model0),
        "data": {
            "name": ds.name,
            "source": ds.source,
            "sha256": ds.sha256,
            "counts": ds.counts(),
            "dims": list(ds.spec.dims),
            "lens": list(ds.spec.lens),
            "meta": {k: v for k, v in ds.meta.items() if isinstance(v, str | int | float | bool)},
            "identity": r.data,
            "dataset_arg": cfg.dataset,
            # OOD: which split document was used (path, hash, built in memory or not)
            **({"ood_split": ds.meta["ood_split"]} if "ood_split" in ds.meta else {}),
            # cross-dataset: which test set (and its checksum), and how it was fitted
            **({"cross": ds.meta["cross"]} if "cross" in ds.meta else {}),
        },
        "training": {
            "best_epoch": tres.best_epoch,
            "best_valid": tres.best_valid,
            "best_valid_loss": tres.best_valid_loss,
            "epochs_run": tres.epochs_run,
            "updates": tres.updates,
            "seconds_per_epoch": tres.seconds_per_epoch,
            "history": tres.history,
        },
        "timings": dict(st.timings),
        "peak_memory_mb": provenance.peak_memory_mb(st.device),
        "environment": provenance.environment(st.device),
        "versions": provenance.package_versions(),
        "git_commit": provenance.git_commit(),
        "auilc": auilcs,
        "metrics": metrics,
    }
    return record, _tidy_rows(st)


# ----------------------------------------------------------------------------- many cells
def _run_or_skip(cfg: RunConfig, seed: int, results: str, force: bool, progress: bool) -> None:
    """One cell; a cell claimed by another live process is skipped with a warning."""
    from mer_bench.results.store import CellBusy, warn

    try:
        run_cell(cfg, seed, results, force=force, progress=progress)
    except CellBusy as e:
        warn(f"skipped: {e}")


def _worker(cells: list[tuple[RunConfig, int]], results: str, force: bool, threads: int,
            parent: int | None = None) -> None:
    """Run a group of cells sharing one training in one process, with a fixed thread count so
    parallel workers do not oversubscribe the cores; exits when the parent process dies."""
    from mer_bench.alloc import tune_allocator

    if parent is not None:
        from mer_bench.training.watchdog import exit_when_orphaned

        exit_when_orphaned(parent)
    tune_allocator()  # a fresh worker process (joblib/Ray) did not run the CLI's entry
    torch.set_num_threads(threads)
    for cfg, seed in cells:
        _run_or_skip(cfg, seed, results, force, False)


def _groups(todo: list[tuple[Resolved, RunConfig, int]]) -> list[list[tuple[RunConfig, int]]]:
    groups: dict[str, list[tuple[RunConfig, int]]] = {}
    for r, cfg, seed in todo:
        groups.setdefault(r.train_key(), []).append((cfg, seed))
    return list(groups.values())


MAX_JOBS = 256


def run_cells(
    cells: Sequence[tuple[RunConfig, int]],
    results: str | None = None,
    force: bool = False,
    jobs: int = 1,
    backend: str = "joblib",
    address: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run every cell not yet in the store (all of them with `force`); cells sharing a training
    run in one job; joblib on one machine, Ray on a cluster, through the same worker. Every
    argument and the results location are checked before any training."""
    from mer_bench.data.registry import clear_cache

    results = results or results_default()  # as the CLI: $MER_BENCH_RESULTS or local-results
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"--jobs must be an integer in [1, {MAX_JOBS}], got {jobs!r}")
    for cfg, seed in cells:  # validate everything first (no data loaded)
        resolve(cfg, seed)
    store = Store(results)
    store.check_writable()
    resolved = [(identified(cfg, seed)[0], cfg, seed) for cfg, seed in cells]
    todo = [t for t in resolved if force or not store.is_done(t[0].run_id)]
    done = len(resolved) - len(todo)
    if progress and done:
        print(f"{done} of {len(resolved)} cell(s) already finished in {results}; skipping them")
    groups = _groups(todo)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(groups) or 1)))
    bar = grid_bar(len(groups), progress and backend != "ray")
    if backend == "ray":
        clear_cache()
        _run_ray(groups, results, force, threads, address)
    elif jobs == 1 or len(groups) <= 1:
        for group in groups:
            for cfg, seed in group:
                _run_or_skip(cfg, seed, results, force, progress)
            bar.update(1)
    else:
        from joblib import Parallel, delayed

        clear_cache()  # the workers load their own data; the parent only needed identities
        par = Parallel(n_jobs=jobs, return_as="generator_unordered")
        for _ in par(delayed(_worker)(g, results, force, threads, os.getpid()) for g in groups):
            bar.update(1)
    bar.close()
    records = [store.load_record(t[0].run_id) for t in resolved if store.is_done(t[0].run_id)]
    if progress:
        print(summary_table(records))
    return records


def _run_ray(groups, results: str, force: bool, threads: int, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs the `ray` extra: pip install 'mer-bench[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    remote = ray.remote(num_cpus=threads)(_worker)
    ray.get([remote.remote(g, os.path.abspath(results), force, threads) for g in groups])


def summary_table(records: list[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for rec in records:
        head = rec["headline"]
        first = rec["grid"][0]
        rows.append(
            [
                rec["model"],
                rec["dataset"],
                rec["scenario"],
                rec["task"],
                rec["protocol"] + (" (oracle)" if rec.get("oracle") else ""),
                rec["seed"],
                f"{100 * rec['metrics'][first][head]:.2f}",
                f"{100 * rec['auilc'][head]:.2f}" if head in rec.get("auilc", {}) else "-",
                "oracle" if isinstance(rec["tau"].get("tau"), dict) else rec["tau"].get("tau", "-"),
            ]
        )
    return tabulate(
        rows,
        headers=["model", "dataset", "scenario", "task", "protocol", "seed",
                 "headline@first x100", "AUILC x100", "tau"],
    )

