"""Selection follows each model's criterion, schedules see the budget, updates are counted,
and no batch of one reaches a model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import DIMS, LENS, random_split
from torch import nn

from mer_bench.data.schema import DataSpec, three_class
from mer_bench.models import BenchModel, ModelOutput, build_model
from mer_bench.scenarios.base import rate_point
from mer_bench.training.schedules import plateau
from mer_bench.training.selection import selection_key
from mer_bench.training.trainer import TrainSettings, train

torch.set_num_threads(1)
SPEC = DataSpec(dims=DIMS, lens=LENS, aligned=False, has_text_ids=True)
COMPLETE = [(rate_point(0.0), None)]


class _Constant(BenchModel):
    """Predicts one learned score for every sample: while it stays positive the validation
    accuracy is the majority class's at every epoch, but the L1 loss keeps falling."""

    output = "regression"
    lr = 0.05

    def __init__(self, selection: str = "loss", sizes: list[int] | None = None) -> None:
        super().__init__(SPEC, "binary")
        self.selection = selection  # type: ignore[misc]
        self.bias = nn.Parameter(torch.tensor(0.1))
        self.sizes = sizes if sizes is not None else []

    def forward(self, batch) -> ModelOutput:
        self.sizes.append(len(batch))
        return ModelOutput(scores=self.bias.expand(len(batch)) + 0.0 * batch.y_reg)


def _positive_split(n: int, seed: int):
    """Labels mostly in (0.5, 3): the L1 optimum (the median) is far above the init 0.1."""
    split = random_split(n, seed)
    y = np.random.default_rng(seed).uniform(0.5, 3.0, n).astype(np.float32)
    y[:2] = -1.0
    return dataclasses.replace(split, regression_labels=y, classification_labels=three_class(y))


def test_a_model_on_a_plateau_is_not_reset_to_its_first_epoch():
    tr, va = _positive_split(24, 0), _positive_split(12, 1)
    settings = TrainSettings(epochs=6, patience=3, batch_size=8)
    res = train(_Constant("loss"), tr, va, settings, None, COMPLETE)
    heads = [h["valid_Non0_acc_2"] for h in res.history]
    losses = [h["valid_loss"] for h in res.history]
    assert len(set(heads)) == 1  # the headline never moves: a majority plateau
    assert losses == sorted(losses, reverse=True) and res.best_epoch == 5
    assert res.selection == "loss" and res.best_valid_loss == pytest.approx(losses[-1])
    # CIDer's rule (headline first) breaks the headline's ties by the loss
    tie = train(_Constant("headline"), tr, va, settings, None, COMPLETE)
    assert tie.best_epoch == 5


def test_selection_keys():
    assert selection_key("loss", 0.5, 0.9) > selection_key("loss", 0.6, 0.99)
    assert selection_key("headline", 0.6, 0.9) > selection_key("headline", 0.1, 0.8)
    assert selection_key("headline", 0.5, 0.9) > selection_key("headline", 0.6, 0.9)
    assert selection_key("loss", 0.5, 0.0) > selection_key("loss", float("nan"), 0.0)


def test_updates_are_counted_and_no_batch_of_one_reaches_a_model():
    sizes: list[int] = []
    tr, va = _positive_split(9, 0), _positive_split(5, 1)  # 9 = 2 x 4 + 1, 5 = 4 + 1
    settings = TrainSettings(epochs=3, patience=5, batch_size=4, eval_batch_size=4)
    res = train(_Constant("loss", sizes), tr, va, settings, None, COMPLETE)
    assert min(sizes) >= 2 and set(sizes) == {4, 5}
    assert res.updates == 3 * 2 and res.history[-1]["updates"] == 6


@pytest.mark.parametrize("name", ["lf_dnn", "dlf"])
def test_real_models_never_see_a_batch_of_one(name, monkeypatch):
    """lf_dnn's BatchNorm crashed on a trailing batch of one; DLF's micro-batches merge too."""
    hp = {"d_model": 8, "num_heads": 2, "layers": 1, "micro_batch": 2} if name == "dlf" else {}
    model = build_model(name, SPEC, "binary", **hp)
    sizes: list[int] = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, b: (sizes.append(len(b)), forward(self, b))[1])
    tr, va = random_split(11, 0), random_split(5, 1)
    train(model, tr, va, TrainSettings(epochs=1, batch_size=5, eval_batch_size=4), None, COMPLETE)
    assert sizes and min(sizes) >= 2


def test_plateau_schedules_step_on_the_validation_loss():
    class Flat(_Constant):
        """Its only parameter never changes the output: the validation loss is flat."""

        def forward(self, batch) -> ModelOutput:
            return ModelOutput(scores=self.bias.expand(len(batch)) * 0.0 + 0.1)

        def configure_scheduler(self, optimizer):
            return plateau(optimizer, 0.5, 0)

    model = Flat()
    tr, va = _positive_split(8, 0), _positive_split(6, 1)
    res = train(model, tr, va, TrainSettings(epochs=4, patience=10, batch_size=4), None, COMPLETE)
    lrs = [h["lr"] for h in res.history]
    assert lrs == pytest.approx([0.05, 0.05, 0.025, 0.0125])


@pytest.mark.parametrize(
    "name, factor, patience",
    [("mult", 0.1, 5), ("dlf", 0.5, 5), ("mplmm", 0.1, 10), ("dmd", 0.5, 5)],
)
def test_official_plateau_schedules(name, factor, patience):
    model = build_model(name, SPEC, "binary", d_model=8, num_heads=2, layers=1)
    sched = model.configure_scheduler(model.configure_optimizer())
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (sched.factor, sched.patience, sched.mode) == (factor, patience, "min")
    assert model.selection == "loss"


def test_cider_selects_on_its_headline_metric():
    from cider.model import CIDer

    assert CIDer.selection == "headline" and BenchModel.selection == "loss"


@pytest.mark.parametrize("compat, alive", [("", True), ("official", False)])
def test_mplmm_type_prompts_train_unless_official_compat(compat, alive):
    """Officially the type prompt and its multipliers are both zero: their product and both
    gradients stay zero forever. The default random init of the prompt revives both."""
    from mer_bench.data.batch import make_batch
    from mer_bench.training.runner import RunConfig, resolve

    hp = dict(resolve(RunConfig(model="mplmm", scenario="rmfm-iid", compat=compat or None),
                      1111).hparams)
    torch.manual_seed(0)
    model = build_model("mplmm", SPEC, "binary", d_model=8, num_heads=2, layers=1,
                        mem_layers=1, prompt_length=3, **hp)
    opt = model.configure_optimizer()
    batch = make_batch(random_split(6, 0), np.arange(6))
    for _ in range(2):  # the first step moves the signal prompts off zero
        model.train_step(batch, batch, opt)
    grads = [model.type_prompt.grad, *(p.grad for p in model.type_proj.values())]
    moved = any(g is not None and bool(g.abs().sum() > 0) for g in grads[1:])
    assert moved is alive and bool(model.type_prompt.abs().sum() > 0) is alive
    assert hp.get("compat", "") == ("zero_type_prompts" if compat else "")


def test_run_record_carries_selection_and_updates(tmp_path):
    from mer_bench.training.runner import RunConfig, run_cell

    cfg = RunConfig(model="lf_dnn", scenario="rmfm-iid", dataset="synth-mosi", scale=0.05,
                    epochs=2, rates=(0.0, 1.0))
    rec = run_cell(cfg, 1111, str(tmp_path))
    assert rec["selection"]["criterion"] == "loss" and rec["selection"]["split"] == "valid"
    n_train = rec["data"]["counts"]["train"]
    per_epoch = -(-n_train // rec["batch_size"]) - (n_train % rec["batch_size"] == 1)
    assert rec["updates"] == rec["training"]["epochs_run"] * per_epoch > 0
    hist = rec["training"]["history"]
    assert all({"valid_loss", "valid_Non0_acc_2", "lr", "updates"} <= set(h) for h in hist)


class _Staged(_Constant):
    """A two-stage model: three warm-up epochs, then the selected stage. Its scores carry
    noise drawn from torch's RNG, so a warm-up loaded from a store must restore that too; its
    validation loss is scripted so that the warm-up's best epoch is its first."""

    SCRIPT = {0: 0.5, 1: 0.9, 2: 0.7}

    def __init__(self) -> None:
        super().__init__("loss")
        self.calls: list[tuple[str, int]] = []
        self.at_start: dict[int, float] = {}

    def selection_start(self, epochs: int) -> int:
        return 3

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        self.at_start[epoch] = float(self.bias.detach())

    def forward(self, batch) -> ModelOutput:
        noise = 0.01 * torch.rand(()) if self.training else 0.0
        return ModelOutput(scores=self.bias.expand(len(batch)) + noise + 0.0 * batch.y_reg)

    def selection_loss(self, out, batch):
        real = super().selection_loss(out, batch)
        return torch.tensor(self.SCRIPT[self.epoch]) if self.epoch in self.SCRIPT else real

    def configure_optimizer(self):
        self.calls.append(("optimizer", getattr(self, "epoch", -1)))
        return super().configure_optimizer()

    def configure_scheduler(self, optimizer):
        self.calls.append(("scheduler", self.epoch))
        return None


def _staged_run(store=None):
    from mer_bench.training.trainer import seed_torch

    seed_torch(7)
    model = _Staged()
    tr, va = _positive_split(24, 0), _positive_split(12, 1)
    res = train(model, tr, va, TrainSettings(epochs=7, patience=1, batch_size=8), None,
                COMPLETE, warmup=store)
    return model, res


def test_a_warm_up_ends_on_its_best_epoch_and_is_not_selected_or_counted_for_patience():
    model, res = _staged_run()
    warm = res.history[:3]
    assert [h.get("stage") for h in warm] == ["warm-up"] * 3
    assert [h["valid_loss"] for h in warm] == pytest.approx([0.5, 0.9, 0.7])
    # the stage starts from the warm-up's best epoch (0), not its last one (2)
    assert model.at_start[3] == model.at_start[1] != model.at_start[2]
    assert res.best_epoch >= 3 and res.epochs_run >= 5  # patience 1 counts from epoch 3
    # a fresh optimiser and schedule at the stage boundary, as from pretrained weights
    assert model.calls == [("optimizer", -1), ("optimizer", 2), ("scheduler", 3)]
    lrs = [h["lr"] for h in res.history]
    assert lrs == pytest.approx([0.05] * len(lrs))


def test_a_stored_warm_up_continues_exactly_as_an_uninterrupted_run():
    from mer_bench.training.trainer import WarmupStore

    kept: dict = {}
    store = WarmupStore(load=lambda: kept.get("s"), save=lambda s: kept.update(s=s))
    plain, res_plain = _staged_run()
    first, res_first = _staged_run(store)  # trains the warm-up and keeps it
    again, res_again = _staged_run(store)  # loads it: no warm-up epoch is run
    assert "s" in kept and again.calls == [("optimizer", -1), ("scheduler", 3)]
    assert sorted(again.at_start) == [3, 4, 5, 6][: len(again.at_start)]  # no warm-up epoch ran
    for res, model in ((res_first, first), (res_again, again)):
        assert repr(res.history) == repr(res_plain.history)  # NaN-safe: warm-up never validates
        assert res.best_epoch == res_plain.best_epoch
        assert torch.equal(model.bias, plain.bias) and res.updates == res_plain.updates


def test_wrappers_answer_for_their_base_stages():
    from mer_bench.data.schema import DataSpec as Spec

    spec = Spec(dims=(12, 5, 6), lens=(6, 6, 6), aligned=True, has_text_ids=True)
    tiny = {"d_model": 8, "num_heads": 2, "layers": 1, "mem_layers": 1, "n_flow": 2,
            "flow_hidden": 8, "rcan_blocks": 1, "rcan_reduction": 4,
            "kernel_text": 3, "kernel_audio": 3, "kernel_vision": 3}
    assert build_model("dicmor", spec, "binary", **tiny).selection_start(30) == 15
    assert build_model("mult", SPEC, "binary", d_model=8, num_heads=2,
                       layers=1).selection_start(30) == 0


def test_one_to_one_rates_share_one_warm_up(tmp_path):
    """DiCMoR's complete-data stage is trained once per seed: every missing rate's run starts
    from it, as every official run starts from one pretrained download."""
    from mer_bench.data.safe_pickle import safe_torch_load
    from mer_bench.training.runner import RunConfig, run_cell

    tiny = (("d_model", 8), ("num_heads", 2), ("layers", 1), ("mem_layers", 1), ("n_flow", 2),
            ("flow_hidden", 8), ("rcan_blocks", 1), ("rcan_reduction", 4))
    cfg = RunConfig(model="dicmor", scenario="rmfm-iid", dataset="synth-mosi", scale=0.05,
                    variant="aligned", epochs=2, rates=(0.0, 0.5), hparams=tiny, device="cpu")
    run_cell(cfg, 1111, str(tmp_path))
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    warm = [p for p in ckpts if p.name.split(".")[0].endswith("__warmup")]
    runs = [safe_torch_load(p) for p in ckpts if p not in warm and p.suffix == ".pt"]
    assert len(warm) == 1 and len(runs) == 2
    heads = [s["info"]["history"][0] for s in runs]
    assert heads[0]["stage"] == "warm-up" and repr(heads[0]) == repr(heads[1])
    assert all(s["info"]["best_epoch"] == 1 for s in runs)  # selected in the missing stage
    assert all(np.isfinite(s["info"]["history"][0]["valid_loss"]) for s in runs)
