"""The scorer against hand-computed fixtures: Has0/Non0 rules, rounding, weighted F1, AUILC, tau."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mer_bench.errors import UserError
from mer_bench.metrics import (
    HEADLINE,
    HIGHER_IS_BETTER,
    TAU_GRID,
    auilc,
    classification_metrics,
    debias,
    oracle_tau_metrics,
    regression_metrics,
    score_classification,
    select_tau,
    weighted_f1,
)

# rows: [neg, neu, pos] scores; truths 0 neg, 2 pos, 2 pos, 1 neu, 0 neg
LOGITS = np.array(
    [
        [2.0, 0.0, 1.0],  # 3-way: neg (right)      [neg, pos]: neg
        [0.0, 3.0, 1.0],  # 3-way: NEUTRAL (wrong)  [neg, pos]: pos
        [0.0, 0.0, 1.0],  # 3-way: pos (right)      [neg, pos]: pos
        [3.0, 0.0, 4.0],  # neutral truth           [neg, pos]: pos (right for Has0)
        [1.0, 0.0, 2.0],  # 3-way: pos (wrong)      [neg, pos]: pos (wrong)
    ]
)
LABELS3 = np.array([0, 2, 2, 1, 0])


def test_binary_task_metrics_by_hand():
    m = classification_metrics(LOGITS, LABELS3)
    assert set(m) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Acc_3",
                      "F1_score_3"}
    # Non0: drop the neutral truth; truths [0,2,2,0] vs preds [0,1,2,2]: the neutral is an error
    assert m["Non0_acc_2"] == pytest.approx(2 / 4)
    # F1: class 0 = 2/3 (support 2), class 2 = 2*1/(2+2) = 1/2 (support 2), class 1 weight 0
    assert m["Non0_F1_score"] == pytest.approx((2 / 3 * 2 + 1 / 2 * 2) / 4)
    # Has0: neutral counts with positive; truths [0,1,1,1,0] vs [neg,pos] argmax [0,1,1,1,1]
    assert m["Has0_acc_2"] == pytest.approx(4 / 5)
    assert m["Has0_F1_score"] == pytest.approx((2 / 3 * 2 + 6 / 7 * 3) / 5)
    assert m["Acc_3"] == pytest.approx(2 / 5)
    assert m["F1_score_3"] == pytest.approx((2 / 3 * 2 + 0 + 2 / 5 * 2) / 5)


def test_matches_sklearn_weighted_f1_on_the_fixture():
    sk = pytest.importorskip("sklearn.metrics")
    keep = LABELS3 != 1
    pred = LOGITS.argmax(1)
    assert weighted_f1(LABELS3[keep], pred[keep]) == pytest.approx(
        sk.f1_score(LABELS3[keep], pred[keep], average="weighted")
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=30))
def test_weighted_f1_matches_sklearn(pairs):
    sk = pytest.importorskip("sklearn.metrics")
    y, p = np.array(pairs).T
    assert weighted_f1(y, p) == pytest.approx(
        sk.f1_score(y, p, average="weighted", zero_division=0)
    )


def test_seven_head_only():
    logits7 = np.eye(7)[[0, 3, 6, 6]]
    m = classification_metrics(None, None, logits7=logits7, labels7=np.array([0, 3, 5, 6]))
    assert m == {"Mult_acc_7": 0.75, "F1_score_7": pytest.approx((1 + 1 + 0 + 2 / 3) / 4)}
    both = classification_metrics(LOGITS[:4], LABELS3[:4], logits7=logits7,
                                  labels7=np.array([0, 3, 5, 6]))
    assert "Mult_acc_7" in both and "Non0_acc_2" in both


def test_score_classification_dispatches_and_derives_labels():
    y = np.array([-1.0, 2.0, 0.5, 0.0, -0.2])
    assert score_classification("binary", LOGITS, y_reg=y) == classification_metrics(
        LOGITS, np.array([0, 2, 2, 1, 0])
    )
    logits7 = np.eye(7)[[2, 5, 3, 3, 3]]  # 0.5 rounds half to even: class 3
    assert score_classification("seven", logits7, y_reg=y)["Mult_acc_7"] == 1.0
    with pytest.raises(UserError, match="unknown task"):
        score_classification("five", LOGITS, LABELS3)


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError, match=r"\(N, 3\)"):
        classification_metrics(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(UserError, match="entries"):
        classification_metrics(LOGITS, LABELS3[:3])
    with pytest.raises(UserError, match="differ in length"):
        regression_metrics(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- regression
def test_regression_non0_drops_zero_labels_and_has0_is_neg_vs_nonneg():
    y = np.array([0.0, 1.0, -1.0, 0.0])
    p = np.array([-5.0, 0.5, 0.2, 5.0])
    m = regression_metrics(p, y)
    assert m["Non0_acc_2"] == 0.5  # only y=1 (right) and y=-1 (p=0.2 -> wrong)
    assert m["Has0_acc_2"] == 0.5  # y>=0 [T,T,F,T] vs p>=0 [F,T,T,T]
    assert m["Non0_F1_score"] == pytest.approx((0 + 2 / 3) / 2)  # class F: 0; class T: 2/3
    assert regression_metrics(np.array([0.0]), np.array([0.0]))["Has0_acc_2"] == 1.0


def test_mult_acc_rounds_half_to_even_after_clipping():
    y = np.array([2.5, -0.5, 3.5, 1.5])  # 7-class: 2, -0, 3 (clipped), 2
    assert regression_metrics(np.array([2.0, 0.0, 3.0, 2.0]), y)["Mult_acc_7"] == 1.0
    assert regression_metrics(np.array([3.0, -1.0, 3.0, 1.0]), y)["Mult_acc_7"] == 0.25
    # 5-class clips to [-2, 2]: 3.5 -> 2 matches 2.4 -> 2; 2.5 -> 2 matches 1.6 -> 2
    m5 = regression_metrics(np.array([1.6, -0.4, 2.4, 2.6]), y)["Mult_acc_5"]
    assert m5 == 1.0


def test_mae_and_corr_are_unclipped():
    m = regression_metrics(np.array([5.0, -1.0, 0.0]), np.array([2.0, -1.0, 0.5]))
    assert m["MAE"] == pytest.approx((3.0 + 0.0 + 0.5) / 3)
    assert m["Corr"] == pytest.approx(np.corrcoef([5.0, -1.0, 0.0], [2.0, -1.0, 0.5])[0, 1])
    assert regression_metrics(np.zeros(4), np.array([1.0, 2.0, -1.0, 0.5]))["Corr"] == 0.0


def test_headline_and_direction():
    assert HEADLINE == {"binary": "Non0_acc_2", "seven": "Mult_acc_7"}
    assert HIGHER_IS_BETTER["MAE"] is False and HIGHER_IS_BETTER["Non0_acc_2"] is True
    m = {**regression_metrics(np.ones(3), np.ones(3)), **classification_metrics(LOGITS, LABELS3)}
    assert set(m) <= set(HIGHER_IS_BETTER)


# ----------------------------------------------------------------------------- AUILC
def test_auilc_constant_and_linear():
    grid = [round(0.1 * i, 1) for i in range(11)]
    assert auilc(grid, [0.8] * 11) == pytest.approx(0.8)
    assert auilc(grid, [1 - r for r in grid]) == pytest.approx(0.5)
    # an uneven grid is integrated as given (no hard-coded 0.1 spacing)
    assert auilc([0.0, 0.5, 0.6, 1.0], [0.0, 0.5, 0.6, 1.0]) == pytest.approx(0.5)
    assert auilc([0.0, 0.9], [0.8, 0.8]) == pytest.approx(0.72)
    assert auilc([0.0, 0.9], [0.8, 0.8], normalized=True) == pytest.approx(0.8)


def test_auilc_validates_its_grid():
    with pytest.raises(UserError, match="increasing"):
        auilc([0.0, 0.5, 0.3], [1, 1, 1])
    with pytest.raises(UserError, match="one value per rate"):
        auilc([0.0, 1.0], [1.0])
    with pytest.raises(UserError, match="at least 2"):
        auilc([0.0], [1.0])


# ----------------------------------------------------------------------------- tau
# Non0 fixture: debias adds tau to the neg column (cf = -1 there); neutral never wins.
# s0 (neg) becomes right for tau >= 0.6; s1 (pos) becomes wrong for tau >= 0.4;
# s2, s3 (pos) stay right up to 2.5.
TAU_LOGP = np.array([[-1.05, -100, -0.5], [-0.85, -100, -0.5], [-3.0, -100, -0.5],
                     [-3.0, -100, -0.5]])
TAU_CF = np.tile([-1.0, 0.0, 0.0], (4, 1))
TAU_Y = np.array([0, 2, 2, 2])


def test_tau_grid_and_debias():
    assert len(TAU_GRID) == 31 and TAU_GRID[0] == 0.0 and TAU_GRID[-1] == 3.0
    assert TAU_GRID[3] == 0.3
    assert np.allclose(debias(TAU_LOGP, TAU_CF, 0.5), TAU_LOGP + 0.5 * np.array([1, 0, 0]))


def test_oracle_picks_a_different_tau_per_metric():
    m, taus = oracle_tau_metrics(TAU_LOGP, TAU_CF, TAU_Y, "binary")
    # accuracy: 3/4 at tau 0 (everything positive); F1 peaks once s0 flips (s1 already wrong)
    assert m["Non0_acc_2"] == pytest.approx(0.75) and taus["Non0_acc_2"] == 0.0
    assert m["Non0_F1_score"] == pytest.approx((2 / 3 * 1 + 4 / 5 * 3) / 4)
    assert taus["Non0_F1_score"] == 0.6
    # never below the plain prediction, metric by metric
    plain = classification_metrics(TAU_LOGP, TAU_Y)
    assert all(m[k] >= plain[k] for k in plain)


def test_select_tau_uses_one_tau_maximising_the_mean_over_validation_conditions():
    tau, table = select_tau([TAU_LOGP], [TAU_CF], [TAU_Y], "binary")
    assert tau == 0.0 and list(table) == list(TAU_GRID)
    # a second condition holding only s0 (right only from tau 0.6): the mean
    # is 0.375 up to 0.3, 0.25 at 0.4-0.5 and 0.875 from 0.6 to 2.4: the smallest tied tau wins
    tau, table = select_tau([TAU_LOGP, TAU_LOGP[:1]], [TAU_CF, TAU_CF[:1]],
                            [TAU_Y, TAU_Y[:1]], "binary")
    assert tau == 0.6
    assert table[0.0] == pytest.approx(0.375) and table[0.4] == pytest.approx(0.25)
    assert table[0.6] == pytest.approx(0.875) and table[2.4] == pytest.approx(0.875)
    tau_f1, _ = select_tau([TAU_LOGP], [TAU_CF], [TAU_Y], "binary", metric="Non0_F1_score")
    assert tau_f1 == 0.6
    with pytest.raises(UserError, match="does not apply"):
        select_tau([TAU_LOGP], [TAU_CF], [TAU_Y], "binary", metric="Mult_acc_7")


def test_select_tau_never_reads_test_labels():
    # validation prefers tau 0.6; a test set that would prefer 0.0 does not change the choice
    tau, _ = select_tau([TAU_LOGP[:1]], [TAU_CF[:1]], [TAU_Y[:1]], "binary")
    assert tau == 0.6
    test_logp, test_cf, test_y = TAU_LOGP[1:], TAU_CF[1:], TAU_Y[1:]  # positives only
    fair = classification_metrics(debias(test_logp, test_cf, tau), test_y)
    oracle, taus = oracle_tau_metrics(test_logp, test_cf, test_y, "binary")
    assert fair["Non0_acc_2"] == pytest.approx(2 / 3)
    assert oracle["Non0_acc_2"] == 1.0 and taus["Non0_acc_2"] == 0.0


def test_seven_task_tau():
    logp = np.log(np.full((2, 7), 1 / 7))
    logp[0, 3] += 0.15  # factual leans to class 3; its cf leans there too
    cf = np.zeros((2, 7))
    cf[:, 3] = 1.0  # debias subtracts tau from class 3
    y7 = np.array([0, 0])
    tau, _ = select_tau([logp], [cf], [y7], "seven")
    assert tau == 0.2  # the smallest tau that pushes class 3 below the others
