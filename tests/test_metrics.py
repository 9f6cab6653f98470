"""Tests for tools.metrics, with scikit-learn as the independent reference."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from tools.metrics import (
    SegmentationMeter,
    binary_metrics,
    classification_metrics,
    expected_calibration_error,
    most_confused_pairs,
    overlap_scores,
    sensitivity_at_specificity,
    threshold_at_specificity,
)

CLASS_NAMES = [
    "superficial", "intermediate", "columnar",
    "mild_dysplastic", "moderate_dysplastic", "severe_dysplastic",
]


# ---------------------------------------------------------------------------
# Segmentation scores
# ---------------------------------------------------------------------------

def test_scores_on_hand_computed_masks():
    pred = np.array([[1, 1, 0],
                     [1, 0, 0],
                     [0, 0, 0]])
    target = np.array([[1, 0, 0],
                       [1, 1, 0],
                       [0, 0, 1]])
    # intersection 2, |pred| 3, |target| 4, union 5, agreeing pixels 6 of 9
    scores = overlap_scores(pred, target)
    assert scores["dice"] == pytest.approx(4 / 7)
    assert scores["iou"] == pytest.approx(2 / 5)
    assert scores["pixel_acc"] == pytest.approx(6 / 9)


def test_empty_mask_conventions():
    empty = np.zeros((4, 5), dtype=bool)
    full = np.ones((4, 5), dtype=bool)
    assert overlap_scores(empty, empty)["dice"] == 1.0
    assert overlap_scores(empty, empty)["iou"] == 1.0
    assert overlap_scores(empty, empty)["pixel_acc"] == 1.0
    assert overlap_scores(empty, full)["dice"] == 0.0
    assert overlap_scores(full, empty)["iou"] == 0.0
    assert overlap_scores(empty, full)["pixel_acc"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        overlap_scores(np.zeros((3, 3)), np.zeros((3, 4)))


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_sklearn_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((32, 48)) < 0.3
    target = rng.random((32, 48)) < 0.4
    scores = overlap_scores(pred, target)
    assert scores["dice"] == pytest.approx(f1_score(target.ravel(), pred.ravel()))
    assert scores["iou"] == pytest.approx(jaccard_score(target.ravel(), pred.ravel()))
    assert scores["pixel_acc"] == pytest.approx(accuracy_score(target.ravel(), pred.ravel()))


def test_scores_accept_torch_tensors():
    rng = np.random.default_rng(0)
    pred = rng.random((16, 16)) < 0.5
    target = rng.random((16, 16)) < 0.5
    assert overlap_scores(torch.from_numpy(pred), torch.from_numpy(target).float()) == pytest.approx(
        overlap_scores(pred, target)
    )


# ---------------------------------------------------------------------------
# SegmentationMeter
# ---------------------------------------------------------------------------

def _random_pairs(rng, sizes):
    return [(rng.random(size) < 0.4, rng.random(size) < 0.5) for size in sizes]


def test_meter_averages_per_image_over_different_sizes():
    rng = np.random.default_rng(1)
    cyt_pairs = _random_pairs(rng, [(20, 30), (64, 64), (7, 5)])
    nuc_pairs = _random_pairs(rng, [(20, 30), (64, 64), (7, 5)])

    meter = SegmentationMeter()
    # A list of differently sized masks in one call, then a single [H,W] image.
    meter.update("cyt", [p for p, _ in cyt_pairs[:2]], [t for _, t in cyt_pairs[:2]])
    meter.update("cyt", *cyt_pairs[2])
    meter.update("nuc", [p for p, _ in nuc_pairs], [t for _, t in nuc_pairs])
    results = meter.compute()

    for head, pairs in (("cyt", cyt_pairs), ("nuc", nuc_pairs)):
        assert results[f"dice_{head}"] == pytest.approx(np.mean([overlap_scores(p, t)["dice"] for p, t in pairs]))
        assert results[f"iou_{head}"] == pytest.approx(np.mean([overlap_scores(p, t)["iou"] for p, t in pairs]))
        assert results[f"pixel_acc_{head}"] == pytest.approx(
            np.mean([overlap_scores(p, t)["pixel_acc"] for p, t in pairs])
        )
    assert results["dice_mean"] == pytest.approx((results["dice_cyt"] + results["dice_nuc"]) / 2)
    # Per-image mean, not pixel-pooled: the tiny 7x5 image weighs as much as the 64x64 one.
    pooled = overlap_scores(
        np.concatenate([p.ravel() for p, _ in cyt_pairs]),
        np.concatenate([t.ravel() for _, t in cyt_pairs]),
    )["dice"]
    assert results["dice_cyt"] != pytest.approx(pooled)


def test_meter_accepts_batched_torch_tensors_and_skips_unused_heads():
    rng = np.random.default_rng(2)
    preds = rng.random((3, 16, 24)) < 0.5
    targets = rng.random((3, 16, 24)) < 0.5

    meter = SegmentationMeter()
    meter.update("nuc", torch.from_numpy(preds), torch.from_numpy(targets.astype(np.float32)))
    results = meter.compute()

    assert set(results) == {"dice_nuc", "iou_nuc", "pixel_acc_nuc", "dice_mean"}
    expected = np.mean([overlap_scores(p, t)["dice"] for p, t in zip(preds, targets)])
    assert results["dice_nuc"] == pytest.approx(expected)
    assert results["dice_mean"] == pytest.approx(expected)


def test_meter_rejects_unknown_head_and_count_mismatch():
    meter = SegmentationMeter()
    with pytest.raises(ValueError):
        meter.update("membrane", np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError):
        meter.update("cyt", np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    assert meter.compute() == {}


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

def _random_problem(seed, n=200, k=6, absent_class=None, never_predicted=None, tie_levels=None):
    """Random labels/probabilities, optionally with an absent class, an unpredicted class or ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    if absent_class is not None:
        labels[labels == absent_class] = (absent_class + 1) % k
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    if never_predicted is not None:
        logits[:, never_predicted] -= 100.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if tie_levels is not None:
        # Round to a coarse grid so many scores tie; argmax ties resolve to the first column.
        probs = np.round(probs * tie_levels) / tie_levels
    return labels, probs


def _assert_matches_sklearn(labels, probs):
    k = probs.shape[1]
    all_labels = list(range(k))
    present_labels = sorted(set(labels.tolist()))
    preds = probs.argmax(axis=1)
    result = classification_metrics(labels, probs, CLASS_NAMES[:k])

    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    # Macro and weighted averages run over the classes present in y_true, i.e. sklearn with labels=sorted(set(y_true)).
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, preds, labels=present_labels, average=average, zero_division=0
        )
        if average == "macro":
            assert result["macro_precision"] == pytest.approx(p)
            assert result["macro_recall"] == pytest.approx(r)
            assert result["macro_f1"] == pytest.approx(f)
        else:
            assert result["weighted_f1"] == pytest.approx(f)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=all_labels, zero_division=0)
    for c, name in enumerate(CLASS_NAMES[:k]):
        assert result["per_class"][name] == pytest.approx(
            {"precision": p[c], "recall": r[c], "f1": f[c], "support": s[c]}
        )
    assert result["confusion_matrix"] == confusion_matrix(labels, preds, labels=all_labels).tolist()

    expected_aucs = []
    for c, name in enumerate(CLASS_NAMES[:k]):
        is_class = labels == c
        if is_class.all() or not is_class.any():
            assert result["roc_auc_per_class"][name] is None
        else:
            expected = roc_auc_score(is_class, probs[:, c])
            assert result["roc_auc_per_class"][name] == pytest.approx(expected, abs=1e-12)
            expected_aucs.append(expected)
    assert result["roc_auc_macro"] == pytest.approx(np.mean(expected_aucs))

    assert result["num_samples"] == len(labels)
    assert result["class_names"] == CLASS_NAMES[:k]
    # Plain Python types only: json must round-trip it unchanged.
    assert json.loads(json.dumps(result)) == result
    return result


def test_most_confused_pairs_lists_off_diagonal_counts_largest_first():
    confusion = np.array([[5, 3, 0],
                          [1, 7, 2],
                          [0, 3, 9]])
    pairs = most_confused_pairs(confusion, ["a", "b", "c"], top=3)
    assert pairs == [{"true": "a", "predicted": "b", "count": 3, "share": 3 / 8},
                     {"true": "c", "predicted": "b", "count": 3, "share": 3 / 12},
                     {"true": "b", "predicted": "c", "count": 2, "share": 2 / 10}]
    assert most_confused_pairs(np.eye(3, dtype=int), ["a", "b", "c"]) == []  # no error, nothing listed


@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_match_sklearn(seed):
    _assert_matches_sklearn(*_random_problem(seed))


@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_with_tied_probabilities(seed):
    labels, probs = _random_problem(seed, tie_levels=4)
    assert len(np.unique(probs[:, 0])) < 6  # ties really are present
    _assert_matches_sklearn(labels, probs)


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_with_class_never_predicted(seed):
    labels, probs = _random_problem(seed, never_predicted=2)
    result = _assert_matches_sklearn(labels, probs)
    assert result["per_class"]["columnar"]["precision"] == 0.0
    assert result["per_class"]["columnar"]["support"] > 0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_with_class_absent_from_labels(seed):
    labels, probs = _random_problem(seed, absent_class=4)
    result = _assert_matches_sklearn(labels, probs)
    assert result["roc_auc_per_class"]["moderate_dysplastic"] is None
    assert result["per_class"]["moderate_dysplastic"]["support"] == 0


def test_classification_metrics_absent_class_is_listed_but_left_out_of_macro():
    # Class 2 is neither a label nor a prediction: it has nothing to score, so it is listed
    # with support 0 and the macro average runs over the classes present in y_true.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    result = classification_metrics(labels, probs, ["a", "b", "c"])
    assert result["macro_recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["roc_auc_per_class"]["c"] is None
    assert result["per_class"]["c"]["support"] == 0


def test_roc_auc_none_when_no_class_qualifies():
    result = classification_metrics(np.array([1, 1, 1]), np.full((3, 2), 0.5), ["a", "b"])
    assert result["roc_auc_macro"] is None
    assert result["roc_auc_per_class"] == {"a": None, "b": None}


# ---------------------------------------------------------------------------
# Binary (normal vs abnormal)
# ---------------------------------------------------------------------------

def test_binary_metrics_hand_built():
    names = ["normal_a", "normal_b", "abnormal_a", "abnormal_b"]
    labels = np.array([0, 1, 2, 3, 2, 0])
    probs = np.array([
        [0.7, 0.1, 0.1, 0.1],   # normal   -> normal     TN, abnormal score 0.2
        [0.1, 0.3, 0.4, 0.2],   # normal   -> abnormal   FP, 0.6
        [0.1, 0.1, 0.5, 0.3],   # abnormal -> abnormal   TP, 0.8
        [0.1, 0.1, 0.35, 0.45], # abnormal -> abnormal   TP (other abnormal class), 0.8
        [0.3, 0.4, 0.2, 0.1],   # abnormal -> normal     FN, 0.3
        [0.5, 0.4, 0.05, 0.05], # normal   -> normal     TN, 0.1
    ])
    for positives in ([2, 3], ["abnormal_a", "abnormal_b"]):
        result = binary_metrics(labels, probs, positives, names)
        assert result["confusion_matrix"] == [[2, 1], [1, 2]]
        assert result["accuracy"] == pytest.approx(4 / 6)
        assert result["sensitivity"] == pytest.approx(2 / 3)
        assert result["specificity"] == pytest.approx(2 / 3)
        assert result["f1"] == pytest.approx(2 / 3)
        # Abnormal scores 0.8, 0.8, 0.3 vs normal 0.2, 0.6, 0.1: 8 of 9 pairs ordered.
        assert result["roc_auc"] == pytest.approx(8 / 9)
        # No normal cell may score abnormal at 90 % specificity of 3: above 0.6, 2 of the 3 abnormal cells
        assert result["sensitivity_at_90_specificity"] == result["sensitivity_at_95_specificity"] == pytest.approx(2 / 3)
        assert json.loads(json.dumps(result)) == result


def test_sensitivity_at_specificity_on_a_hand_example():
    negatives, positives = np.arange(1, 21, dtype=float), np.array([25, 19.5, 18.5, 5])
    is_positive = np.r_[np.zeros(20, bool), np.ones(4, bool)]
    scores = np.r_[negatives, positives]
    # >= 19.5 calls one negative (20) of 20: specificity 0.95, sensitivity 2/4; >= 18.5 calls 19 and 20: 0.90, 3/4
    assert sensitivity_at_specificity(is_positive, scores, 0.95) == pytest.approx(0.5)
    assert sensitivity_at_specificity(is_positive, scores, 0.90) == pytest.approx(0.75)
    assert sensitivity_at_specificity(is_positive, scores, 1.0) == pytest.approx(0.25)  # only 25 is above every negative
    assert threshold_at_specificity(is_positive, scores, 0.95) == pytest.approx(19.5)
    assert threshold_at_specificity(is_positive, scores, 0.90) == pytest.approx(18.5)


@pytest.mark.parametrize("seed", range(3))
def test_sensitivity_at_specificity_matches_every_threshold_tried(seed):
    rng = np.random.default_rng(seed)
    is_positive = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.4 * is_positive, 2)  # ties on purpose
    for level in (0.9, 0.95):
        best = max((np.mean(scores[is_positive] >= t) for t in np.unique(scores)
                    if np.mean(scores[~is_positive] < t) >= level), default=0.0)
        assert sensitivity_at_specificity(is_positive, scores, level) == pytest.approx(best)


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------

def test_ece_zero_for_perfectly_calibrated_data():
    # Within each confidence level, the fraction of correct predictions equals the confidence.
    labels, probs = [], []
    for confidence, n_correct in ((0.6, 6), (0.8, 8), (0.9, 9)):
        for i in range(10):
            probs.append([confidence, 1 - confidence])
            labels.append(0 if i < n_correct else 1)
    assert expected_calibration_error(np.array(labels), np.array(probs)) == pytest.approx(0.0, abs=1e-12)


def test_ece_large_for_overconfident_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    # 99 % confident in a random class: right about a third of the time.
    probs = np.full((300, 3), 0.005)
    probs[np.arange(300), rng.integers(0, 3, size=300)] = 0.99
    assert expected_calibration_error(labels, probs) > 0.3


def test_ece_bins_are_closed_on_the_right():
    # Two bins (0, 0.5] and (0.5, 1]: a confidence of exactly 0.5 belongs to the first.
    # Apart: 0.5 * |1 - 0.5| + 0.5 * |0 - 1| = 0.75; pooled in one bin it would be 0.25.
    labels = np.array([0, 1])
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.75)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_direct_computation(n_bins):
    labels, probs = _random_problem(3, n=500)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    expected = 0.0
    for low, high in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            expected += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    assert expected_calibration_error(labels, probs, n_bins) == pytest.approx(expected)


def test_bootstrap_accuracy_ci_brackets_the_accuracy_and_narrows_with_more_cells():
    from tools.metrics import bootstrap_accuracy_ci

    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        y_true = rng.integers(0, 3, n)
        y_pred = np.where(rng.random(n) < 0.8, y_true, (y_true + 1) % 3)
        low, high = bootstrap_accuracy_ci(y_true, y_pred)
        assert low <= (y_true == y_pred).mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # the interval shrinks roughly as 1/sqrt(n)
