"""Tests for tools.metrics' grades: ordered classes (Herlev's, Bethesda's), QWK against scikit-learn."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from tools.layouts.points import BETHESDA_CLASSES
from tools.metrics import (
    HERLEV_GRADE_ORDER,
    bethesda_metrics,
    default_class_order,
    grade_metrics,
)

HERLEV_CLASSES = sorted(HERLEV_GRADE_ORDER)  # the classifier's order: alphabetical class folders


def test_default_class_order_knows_herlev_and_not_sipakmed():
    assert default_class_order(HERLEV_CLASSES) == list(HERLEV_GRADE_ORDER)
    six = [c for c in HERLEV_CLASSES if c != "normal_columnar"]  # a class missing from the data set is skipped
    assert default_class_order(six) == [c for c in HERLEV_GRADE_ORDER if c != "normal_columnar"]
    assert default_class_order(["im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic"]) is None


def test_grade_metrics_on_a_hand_example():
    names = ["severe", "mild", "normal"]  # class indices; grades come from the order below
    order = ["normal", "mild", "severe"]
    y_true = np.array([2, 2, 1, 0, 0, 1])  # grades 0, 0, 1, 2, 2, 1
    y_pred = np.array([2, 1, 1, 2, 0, 0])  # grades 0, 1, 1, 0, 2, 2: errors 0, 1, 0, 2, 0, 1
    result = grade_metrics(y_true, y_pred, names, order)
    assert result["grade_order"] == order
    assert result["within_one_grade_accuracy"] == pytest.approx(5 / 6)
    assert result["mean_absolute_grade_error"] == pytest.approx(4 / 6)
    expected = cohen_kappa_score([0, 0, 1, 2, 2, 1], [0, 1, 1, 0, 2, 2], weights="quadratic")
    assert result["quadratic_weighted_kappa"] == pytest.approx(expected)
    assert json.loads(json.dumps(result)) == result


def test_bethesda_metrics_in_six_classes_three_grades_and_two():
    names = sorted(BETHESDA_CLASSES)  # the classifier's order: ASC-H, ASC-US, HSIL, LSIL, NILM, SCC
    assert default_class_order(names) == list(BETHESDA_CLASSES)
    rank = {name: BETHESDA_CLASSES.index(name) for name in names}
    rng = np.random.default_rng(0)
    labels = np.r_[np.arange(6), rng.integers(0, 6, 60)]
    probs = rng.dirichlet(np.ones(6), size=labels.size)
    probs[np.arange(labels.size), labels] += rng.random(labels.size)  # better than chance
    probs /= probs.sum(axis=1, keepdims=True)
    result = bethesda_metrics(labels, probs, names)

    six = result["six_classes"]
    assert six["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)))
    true_ranks, pred_ranks = [rank[names[k]] for k in labels], [rank[names[k]] for k in probs.argmax(axis=1)]
    assert six["quadratic_weighted_kappa"] == pytest.approx(cohen_kappa_score(true_ranks, pred_ranks, weights="quadratic"))
    assert six["grade_order"] == list(BETHESDA_CLASSES)

    grade = {"NILM": 0, "ASC-US": 1, "LSIL": 1, "ASC-H": 2, "HSIL": 2, "SCC": 2}
    members = [[k for k, name in enumerate(names) if grade[name] == g] for g in range(3)]
    grade_probs = np.stack([probs[:, m].sum(axis=1) for m in members], axis=1)
    true_grades = np.array([grade[names[k]] for k in labels])
    three = result["three_grades"]
    assert three["class_names"] == ["NILM", "low", "high"]
    assert three["accuracy"] == pytest.approx(accuracy_score(true_grades, grade_probs.argmax(axis=1)))
    assert three["macro_f1"] == pytest.approx(f1_score(true_grades, grade_probs.argmax(axis=1), average="macro"))
    assert three["quadratic_weighted_kappa"] == pytest.approx(
        cohen_kappa_score(true_grades, grade_probs.argmax(axis=1), weights="quadratic"))

    two = result["nilm_vs_abnormal"]
    is_abnormal = labels != names.index("NILM")
    assert two["roc_auc"] == pytest.approx(roc_auc_score(is_abnormal, 1 - probs[:, names.index("NILM")]))
    assert 0 <= two["sensitivity_at_95_specificity"] <= two["sensitivity_at_90_specificity"] <= 1
    assert json.loads(json.dumps(result)) == result


def test_bethesda_metrics_refuse_other_classes():
    with pytest.raises(ValueError, match="not Bethesda"):
        bethesda_metrics([0, 1], np.eye(2), ["normal_a", "LSIL"])


@pytest.mark.parametrize("seed", range(3))
def test_quadratic_weighted_kappa_matches_sklearn_on_ranks(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(HERLEV_CLASSES), 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, len(HERLEV_CLASSES), 300))
    rank = np.array([HERLEV_GRADE_ORDER.index(name) for name in HERLEV_CLASSES])
    result = grade_metrics(y_true, y_pred, HERLEV_CLASSES, HERLEV_GRADE_ORDER)
    expected = cohen_kappa_score(rank[y_true], rank[y_pred], weights="quadratic")
    assert result["quadratic_weighted_kappa"] == pytest.approx(expected)
    assert result["within_one_grade_accuracy"] == pytest.approx(np.mean(np.abs(rank[y_true] - rank[y_pred]) <= 1))
    assert result["mean_absolute_grade_error"] == pytest.approx(np.mean(np.abs(rank[y_true] - rank[y_pred])))
