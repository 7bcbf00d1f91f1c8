"""MACI on its own: the `maci` wrapper around other models, and CIDer's Table II search space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_split
from torch import nn

from cider.maci import MACI, MCM
from cider.space import RELEASED, SEARCH_SPACE, grid_size, suggest
from mer_bench.data.batch import make_batch
from mer_bench.data.schema import DataSpec
from mer_bench.errors import UserError
from mer_bench.models import BenchModel, ModelOutput, build_model
from mer_bench.scenarios.base import apply_drops

torch.set_num_threads(1)

DIMS, LENS = (12, 5, 6), (8, 14, 11)
SPEC = DataSpec(dims=DIMS, lens=LENS, aligned=False, has_text_ids=True)


class Dummy(BenchModel):
    """A tiny classification model exposing a 10-d joint representation."""

    defaults = {"joint": True}

    def __init__(self, spec, task, **hp):
        super().__init__(spec, task, **hp)
        self.enc = nn.Linear(spec.dims[0] + spec.dims[1] + spec.dims[2], 10)
        self.head = nn.Linear(10, self.n_classes)

    def forward(self, batch):
        x = torch.cat([batch.text.mean(1), batch.audio.mean(1), batch.vision.mean(1)], dim=-1)
        j = torch.relu(self.enc(x))
        return ModelOutput(torch.log_softmax(self.head(j), -1), j if self.hparams["joint"] else None)


def _train(model, split, steps=25):
    batch = make_batch(split, np.arange(len(split)))
    rng = np.random.default_rng(0)
    drops = {m: rng.random(getattr(batch, f"valid_{m}").shape) < 0.3 for m in ("audio", "vision")}
    bad = apply_drops(batch, drops)
    opt = model.configure_optimizer()
    model.train()
    return [model.train_step(batch, bad, opt) for _ in range(steps)]


def test_maci_wraps_lf_dnn_regression_base():
    split = random_split()
    torch.manual_seed(0)
    model = build_model("lf_dnn+maci", SPEC, "binary")
    assert isinstance(model, MACI) and model.output == "classification"
    assert model.base.output == "regression"
    # LF-DNN's joint is its 128-d post-fusion vector: MCM = 3 MLPs + 3 x Linear(128 + 96, 3)
    mlps = (DIMS[0] + DIMS[1] + DIMS[2]) * 32 + 3 * 32 + 3 * (32 * 32 + 32) * 2
    assert model.maci_parameters() == mlps + 3 * ((128 + 96) * 3 + 3)
    assert model.n_parameters() == model.base.n_parameters() + model.maci_parameters()
    model.prepare(split, cf_vocab=np.array([1001, 1002]))
    assert model.counterfactual
    history = _train(model, split)
    assert history[-1]["nll"] < history[0]["nll"]
    model.eval()
    batch = make_batch(split, np.arange(5))
    with torch.no_grad():
        out = model(batch)
        cf = model.counterfactual_scores(batch)
    assert out.scores.shape == (5, 3) and out.extras["base_scores"].shape == (5,)
    assert torch.allclose(out.scores.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert cf.shape == (5, 3)


def test_maci_wraps_a_dummy_and_uses_its_joint():
    split = random_split()
    torch.manual_seed(0)
    base = Dummy(SPEC, "seven")
    model = MACI(base, counterfactual=False)
    assert model.mcm.joint_dim == 10 and model.mcm.classifiers[0].in_features == 10 + 96
    model.prepare(split, cf_vocab=np.array([1001]))
    assert not model.counterfactual
    counts = np.bincount(split.labels("seven"), minlength=7)
    assert np.allclose(model.mcm.train_priors.numpy(), counts / counts.sum())
    history = _train(model, split, steps=30)
    assert history[-1]["nll"] < history[0]["nll"]
    # base_loss adds the base's own task loss on its own scores
    both = MACI(Dummy(SPEC, "seven"), base_loss=0.5)
    both.prepare(split)
    assert set(_train(both, split, steps=1)[0]) == {"nll", "base_task"}


def test_maci_needs_a_joint_representation():
    with pytest.raises(UserError, match="joint"):
        MACI(Dummy(SPEC, "binary", joint=False))


def test_mcm_uses_train_priors_in_training_and_uniform_in_eval():
    torch.manual_seed(0)
    mcm = MCM(4, (2, 1, 1), 3, hidden=4)
    mcm.set_train(np.random.default_rng(0).normal(size=(3, 4)), np.array([0.7, 0.0, 0.3]))
    joint = torch.randn(5, 4)
    mcm.train()
    trained = mcm(joint)
    mcm.eval()
    evaluated = mcm(joint)
    assert torch.isfinite(trained).all() and not torch.allclose(trained, evaluated)
    # the mixture by hand: training uses each class's own mean and the priors; eval gives
    # every class the mean of the present (prior > 0) training class means, uniform priors

    def mixture(feats, weights):
        conf = mcm.encode_confounders(feats)
        probs = torch.stack(
            [torch.softmax(c(torch.cat([joint, conf[i].expand(5, -1)], -1)), -1)
             for i, c in enumerate(mcm.classifiers)], dim=1,
        )
        return (probs * weights.view(1, 3, 1)).sum(1).log()

    one = mcm.train_feats[[0, 2]].mean(0, keepdim=True).expand(3, -1)
    torch.testing.assert_close(evaluated, mixture(one, torch.full((3,), 1 / 3)))
    torch.testing.assert_close(trained, mixture(mcm.train_feats, torch.tensor([0.7, 0.0, 0.3])))


def test_search_space_is_table_ii():
    by_name = {p.name: p for p in SEARCH_SPACE}
    assert by_name["layers"].values() == [1, 2, 3, 4]
    assert by_name["heads"].values() == [1, 2, 4, 8]
    for name in ("attn_dropout", "out_dropout", "embed_dropout"):
        assert by_name[name].values() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    for name in ("w_joint", "w_attn", "w_recon"):
        assert by_name[name].values()[-1] == 1.0 and len(by_name[name].values()) == 11
    assert grid_size() == 4 * 4 * 6**3 * 11**3
    from cider.model import CIDer

    assert set(by_name) <= set(CIDer.defaults)
    assert all(CIDer.defaults[k] == v for k, v in RELEASED.items())


def test_suggest_with_optuna():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from cider.model import CIDer

    assert CIDer.suggest is suggest  # what `mer-bench tune` calls
    hp = suggest(study.ask())
    assert set(hp) == {p.name for p in SEARCH_SPACE}
    for p in SEARCH_SPACE:
        assert hp[p.name] in p.values()
    build_model("cider", SPEC, "binary", hidden=8, **{**hp, "heads": min(hp["heads"], 8)})
