"""Evaluation metrics: mask overlap per head, classification (scikit-learn), grading, calibration.

Classification metrics are scikit-learn's. Macro averages run over the classes present among the
evaluated cells: a class with no cell in the split has nothing to score, and averaging its F1 of 0 in
would understate every macro number (it is listed with support 0 and left out). Ordinal metrics number
the grades by their rank among the classifier's classes, in the order that --class-order gives.
"""
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

from tools.layouts.points import BETHESDA_CLASSES, BETHESDA_GRADES, GRADE_NAMES, NORMAL_CLASS, is_bethesda

# ---------------------------------------------------------------- segmentation


def _to_numpy(array) -> np.ndarray:
    """`array` as a numpy array, moving torch tensors to the CPU first."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def overlap_scores(pred, target) -> Dict[str, float]:
    """Dice, IoU and pixel accuracy of two binary masks of one image.

    Computed from the four pixel counts: the same numbers as sklearn's f1_score and jaccard_score on the
    flattened masks (tests/test_metrics.py checks), at a small fraction of their per-call cost, which
    matters at one call per cell and head. Both masks empty: Dice and IoU 1 (nothing to find, nothing found).
    """
    pred_mask, true_mask = _to_numpy(pred).astype(bool), _to_numpy(target).astype(bool)
    if pred_mask.shape != true_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} vs {true_mask.shape}")
    both = np.count_nonzero(pred_mask & true_mask)
    either = np.count_nonzero(pred_mask | true_mask)
    total = np.count_nonzero(pred_mask) + np.count_nonzero(true_mask)
    return {"dice": 2 * both / total if total else 1.0, "iou": both / either if either else 1.0,
            "pixel_acc": 1.0 - (either - both) / pred_mask.size}


def _split_images(masks) -> List[np.ndarray]:
    """[H,W], [B,H,W] or a list of [H,W] masks as a list of 2-D arrays."""
    if isinstance(masks, (list, tuple)):
        images = [_to_numpy(mask) for mask in masks]
    else:
        array = _to_numpy(masks)
        images = [array] if array.ndim == 2 else list(array)
    for image in images:
        if image.ndim != 2:
            raise ValueError(f"expected [H,W] masks, got shape {image.shape}")
    return images


class SegmentationMeter:
    """Per-image Dice, IoU and pixel accuracy for the heads ('cyt', 'nuc'); images may differ in size.

    Scores are averaged per image (not pooled over pixels), so a small image counts as much as a large one.
    """

    def __init__(self, heads=("cyt", "nuc")):
        self.heads = tuple(heads)
        self._scores = {head: {"dice": [], "iou": [], "pixel_acc": []} for head in self.heads}

    def update(self, head: str, pred_masks, true_masks) -> None:
        """Score a batch for one head: bool/0-1 [H,W] or [B,H,W] arrays or tensors, or lists of [H,W] arrays."""
        if head not in self._scores:
            raise ValueError(f"unknown head {head!r}; expected one of {self.heads}")
        preds, targets = _split_images(pred_masks), _split_images(true_masks)
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predicted masks but {len(targets)} ground-truth masks")
        for pred, target in zip(preds, targets):
            for name, value in overlap_scores(pred, target).items():
                self._scores[head][name].append(value)

    def merge(self, other: "SegmentationMeter") -> None:
        """Add the scores another meter accumulated (another process's share of the images)."""
        for head in self.heads:
            for name, scores in self._scores[head].items():
                scores.extend(other._scores[head][name])

    def compute(self) -> Dict[str, float]:
        """{metric_head: mean} for every head that received an image, plus dice_mean over those heads ({} if none)."""
        results = {f"{name}_{head}": float(np.mean(values))
                   for head, scores in self._scores.items() if scores["dice"] for name, values in scores.items()}
        head_dice = [results[f"dice_{head}"] for head in self.heads if f"dice_{head}" in results]
        if head_dice:
            results["dice_mean"] = float(np.mean(head_dice))
        return results


# ---------------------------------------------------------------- classification

def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray, k: int) -> Optional[float]:
    """ROC-AUC of class k against the rest, None when the cells are all, or none, of class k."""
    is_class = labels == k
    return float(skm.roc_auc_score(is_class, probs[:, k])) if 0 < is_class.sum() < len(labels) else None


def classification_metrics(y_true, y_prob, class_names: Sequence[str]) -> Dict:
    """Metrics of the predictions argmax(y_prob) against y_true (int labels [N] in [0, K); y_prob [N, K]).

    Returns a JSON-ready dict: accuracy, balanced_accuracy, macro_precision/recall/f1 and weighted_f1 (over the
    classes present in y_true), roc_auc_macro and roc_auc_per_class (one-vs-rest; None for a class absent or
    alone), per_class {precision, recall, f1, support}, confusion_matrix (rows true), most_confused,
    class_names, num_samples.
    """
    class_names = [str(name) for name in class_names]
    labels, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(y_prob, dtype=float)
    if probs.ndim != 2 or probs.shape != (labels.size, len(class_names)) or labels.size == 0:
        raise ValueError(f"y_prob must be [N, {len(class_names)}] with N = {labels.size} > 0, got {probs.shape}")
    predictions = probs.argmax(axis=1)
    every, present = list(range(len(class_names))), sorted(set(labels.tolist()))
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predictions, labels=every, zero_division=0)
    macro = skm.precision_recall_fscore_support(labels, predictions, labels=present, average="macro", zero_division=0)
    confusion = skm.confusion_matrix(labels, predictions, labels=every)
    aucs = [one_vs_rest_auc(labels, probs, k) for k in every]
    valid_aucs = [auc for auc in aucs if auc is not None]
    return {
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
        "macro_precision": float(macro[0]), "macro_recall": float(macro[1]), "macro_f1": float(macro[2]),
        "weighted_f1": float(skm.f1_score(labels, predictions, labels=present, average="weighted", zero_division=0)),
        "roc_auc_macro": float(np.mean(valid_aucs)) if valid_aucs else None,
        "roc_auc_per_class": dict(zip(class_names, aucs)),
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "support": int(support[k])} for k, name in enumerate(class_names)},
        "confusion_matrix": confusion.tolist(),
        "most_confused": most_confused_pairs(confusion, class_names),
        "class_names": class_names,
        "num_samples": int(labels.size),
    }


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean recall over the classes present; predictions of an absent class are errors, not a reason to warn."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(skm.balanced_accuracy_score(labels, predictions))


def most_confused_pairs(confusion: np.ndarray, class_names: Sequence[str], top: int = 5) -> List[Dict]:
    """The largest off-diagonal cells of a confusion matrix (rows true), most frequent first.

    Returns up to `top` dicts {true, predicted, count, share}, share being the fraction of the true
    class's cells that went to the predicted class; pairs that never occur are left out.
    """
    support = confusion.sum(axis=1)
    pairs = [(int(confusion[t, p]), t, p) for t in range(len(class_names)) for p in range(len(class_names))
             if t != p and confusion[t, p] > 0]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [{"true": class_names[t], "predicted": class_names[p], "count": count, "share": count / int(support[t])}
            for count, t, p in pairs[:top]]


# Herlev's seven classes from least to most severe (Jantzen et al. 2005)
HERLEV_GRADE_ORDER = ("normal_superficiel", "normal_intermediate", "normal_columnar", "light_dysplastic",
                      "moderate_dysplastic", "severe_dysplastic", "carcinoma_in_situ")
KNOWN_GRADE_ORDERS = (HERLEV_GRADE_ORDER, BETHESDA_CLASSES)  # Bethesda's: NILM < ASC-US < LSIL < ASC-H < HSIL < SCC


def default_class_order(class_names: Sequence[str]) -> Optional[List[str]]:
    """A known grade order covering every class (Herlev's, Bethesda's), else None: SIPaKMeD's classes are kinds, not grades."""
    for order in KNOWN_GRADE_ORDERS:
        if set(class_names) <= set(order):
            return [name for name in order if name in class_names]
    return None


def grade_metrics(y_true, y_pred, class_names: Sequence[str], class_order: Sequence[str]) -> Dict:
    """Metrics that know the grades are ordered: a severe cell called carcinoma in situ is a smaller error than normal.

    Grades are the ranks of the classifier's classes in class_order (classes missing from the data set are
    skipped, so Herlev's six classes are grades 0-5).

    Returns quadratic_weighted_kappa (Cohen's, scikit-learn), within_one_grade_accuracy and
    mean_absolute_grade_error.
    """
    ranked = [name for name in class_order if name in class_names]
    grade_of = np.array([ranked.index(name) for name in class_names])
    true_grades, pred_grades = grade_of[np.asarray(y_true, int)], grade_of[np.asarray(y_pred, int)]
    error = np.abs(true_grades - pred_grades)
    kappa = skm.cohen_kappa_score(true_grades, pred_grades, weights="quadratic", labels=list(range(len(ranked))))
    return {"quadratic_weighted_kappa": float(kappa) if np.isfinite(kappa) else None,
            "within_one_grade_accuracy": float(np.mean(error <= 1)), "mean_absolute_grade_error": float(error.mean()),
            "grade_order": ranked}


def binary_metrics(y_true, y_prob, positive_classes, class_names: Sequence[str]) -> Dict:
    """Normal-vs-abnormal metrics obtained by collapsing the K classes.

    A cell is predicted abnormal when the K-class argmax is one of the positive (abnormal) classes, given as
    names or indices; its abnormal score (for ROC-AUC) is the summed probability of those classes.

    Returns accuracy, sensitivity, specificity, f1 (of the abnormal class), roc_auc and the sensitivity at 90 % and
    95 % specificity of the abnormal score (None if only one group is present), confusion_matrix [[TN, FP], [FN, TP]].
    """
    class_names = [str(name) for name in class_names]
    labels, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(y_prob, dtype=float)
    positive = sorted({class_names.index(c) if isinstance(c, str) else int(c) for c in positive_classes})
    is_abnormal = np.isin(labels, positive)
    predicted_abnormal = np.isin(probs.argmax(axis=1), positive)
    (tn, fp), (fn, tp) = skm.confusion_matrix(is_abnormal, predicted_abnormal, labels=[False, True])
    both_present = 0 < is_abnormal.sum() < labels.size
    scores = probs[:, positive].sum(axis=1)
    return {
        "accuracy": float(skm.accuracy_score(is_abnormal, predicted_abnormal)),
        "sensitivity": float(skm.recall_score(is_abnormal, predicted_abnormal, zero_division=0)),
        "specificity": float(skm.recall_score(~is_abnormal, ~predicted_abnormal, zero_division=0)),
        "f1": float(skm.f1_score(is_abnormal, predicted_abnormal, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(is_abnormal, scores)) if both_present else None,
        **{f"sensitivity_at_{round(100 * level)}_specificity": sensitivity_at_specificity(is_abnormal, scores, level)
           if both_present else None for level in SCREENING_SPECIFICITIES},
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


SCREENING_SPECIFICITIES = (0.90, 0.95)  # operating points reported for normal-vs-abnormal (screening) scores


def sensitivity_at_specificity(is_positive, scores, specificity: float) -> float:
    """The highest sensitivity of a threshold on `scores` whose specificity is at least `specificity`.

    A threshold calls `score >= t` positive; ties are called together, so a tie that straddles the point is not
    split. Computed on scikit-learn's ROC curve: the largest true-positive rate with false-positive rate
    <= 1 - specificity (0 when no threshold reaches it).
    """
    fpr, tpr, _ = skm.roc_curve(np.asarray(is_positive, bool), np.asarray(scores, float), drop_intermediate=False)
    reachable = fpr <= 1 - specificity + 1e-12
    return float(tpr[reachable].max()) if reachable.any() else 0.0


def threshold_at_specificity(is_positive, scores, specificity: float) -> float:
    """The lowest score threshold (call `score >= t` positive) whose specificity is at least `specificity`: the
    operating point that sensitivity_at_specificity reports, e.g. to choose a call's threshold on val cells."""
    fpr, _, thresholds = skm.roc_curve(np.asarray(is_positive, bool), np.asarray(scores, float), drop_intermediate=False)
    return float(thresholds[fpr <= 1 - specificity + 1e-12].min())


# ---------------------------------------------------------------- The Bethesda System

def bethesda_grade_metrics(y_true, y_prob, class_names: Sequence[str]) -> Dict:
    """Classification metrics in three grades: NILM / low (ASC-US, LSIL) / high (ASC-H, HSIL, SCC).

    A grade's probability is the sum of its classes' probabilities and the predicted grade the most probable one
    (which may differ from the grade of the most probable class when a grade's mass is spread over its classes).

    Returns classification_metrics over the grades (GRADE_NAMES order) with quadratic_weighted_kappa etc. of the
    ordered grades (grade_metrics).
    """
    labels, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(y_prob, dtype=float)
    grade_of_class = np.array([GRADE_NAMES.index(BETHESDA_GRADES[name]) for name in class_names])
    grade_probs = np.stack([probs[:, grade_of_class == g].sum(axis=1) for g in range(len(GRADE_NAMES))], axis=1)
    grade_labels = grade_of_class[labels]
    metrics = classification_metrics(grade_labels, grade_probs, GRADE_NAMES)
    metrics.update(grade_metrics(grade_labels, grade_probs.argmax(axis=1), GRADE_NAMES, GRADE_NAMES))
    return metrics


def bethesda_metrics(y_true, y_prob, class_names: Sequence[str]) -> Dict:
    """The Bethesda System's metrics of cells classified in its classes, in six classes, three grades and two.

    Args:
        y_true: int labels [N] indexing class_names.
        y_prob: [N, K] class probabilities.
        class_names: the classifier's K classes, a subset of BETHESDA_CLASSES holding NILM.

    Returns:
        {"six_classes": classification_metrics + grade_metrics (QWK in the order NILM < ASC-US < LSIL < ASC-H <
        HSIL < SCC), "three_grades": bethesda_grade_metrics, "nilm_vs_abnormal": binary_metrics (abnormal score
        1 - P(NILM); ROC-AUC, sensitivity at 90 % and 95 % specificity)}.
    """
    class_names = [str(name) for name in class_names]
    if not is_bethesda(class_names):
        raise ValueError(f"not Bethesda classes: {class_names}")
    probs = np.asarray(y_prob, dtype=float)
    six = classification_metrics(y_true, probs, class_names)
    six.update(grade_metrics(y_true, probs.argmax(axis=1), class_names, BETHESDA_CLASSES))
    abnormal = [name for name in class_names if name != NORMAL_CLASS]
    return {"six_classes": six, "three_grades": bethesda_grade_metrics(y_true, probs, class_names),
            "nilm_vs_abnormal": binary_metrics(y_true, probs, abnormal, class_names)}


# ---------------------------------------------------------------- calibration and uncertainty

def reliability_bins(y_true, y_prob, n_bins: int = 15):
    """Top-label (mean confidence, accuracy, count) per equal-width confidence bin (b/n, (b+1)/n].

    A confidence of exactly 0 goes to the first bin; empty bins have confidence and accuracy 0, count 0.
    """
    labels, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(y_prob, dtype=float)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    bin_index = np.clip(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_index, minlength=n_bins)
    occupied = np.maximum(count, 1)
    return np.bincount(bin_index, confidence, n_bins) / occupied, np.bincount(bin_index, correct, n_bins) / occupied, count


def expected_calibration_error(y_true, y_prob, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width bins of (bin size / N) * |accuracy - mean confidence|."""
    mean_confidence, accuracy, count = reliability_bins(y_true, y_prob, n_bins)
    return float(np.sum(count / count.sum() * np.abs(accuracy - mean_confidence)))


def bootstrap_accuracy_ci(y_true, y_pred, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> List[float]:
    """Percentile bootstrap interval [low, high] of the accuracy, resampling cells with replacement."""
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    rng = np.random.default_rng(seed)
    resampled = correct[rng.integers(0, correct.size, size=(n_resamples, correct.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(resampled, tail)), float(np.percentile(resampled, 100 - tail))]
