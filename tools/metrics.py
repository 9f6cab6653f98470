"""Evaluation metrics for segmentation and classification of Pap-smear cells.

Written in plain numpy (no scikit-learn) so that the tests can check every
number against scikit-learn as an independent reference. The conventions follow
scikit-learn's defaults with ``zero_division=0`` unless a docstring says otherwise.
"""

from typing import Dict, List, Sequence

import numpy as np


# ---------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------

def _to_numpy(array):
    """Return ``array`` as a numpy array, moving torch tensors to the CPU first."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _mask_pair(pred, target):
    pred_mask = _to_numpy(pred).astype(bool)
    true_mask = _to_numpy(target).astype(bool)
    if pred_mask.shape != true_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} vs {true_mask.shape}")
    return pred_mask, true_mask


def dice_score(pred, target):
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks.

    Args:
        pred: predicted mask, bool or 0/1 array (or torch tensor) of any shape.
        target: ground-truth mask of the same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty (nothing to find, nothing found).
    """
    pred_mask, true_mask = _mask_pair(pred, target)
    total = pred_mask.sum() + true_mask.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred_mask, true_mask).sum() / total)


def iou_score(pred, target):
    """Intersection over union |A∩B| / |A∪B| of two binary masks.

    Args:
        pred: predicted mask, bool or 0/1 array (or torch tensor) of any shape.
        target: ground-truth mask of the same shape.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty.
    """
    pred_mask, true_mask = _mask_pair(pred, target)
    union = np.logical_or(pred_mask, true_mask).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred_mask, true_mask).sum() / union)


def pixel_accuracy(pred, target):
    """Fraction of pixels where the two binary masks agree.

    Args:
        pred: predicted mask, bool or 0/1 array (or torch tensor) of any shape.
        target: ground-truth mask of the same shape.

    Returns:
        Accuracy in [0, 1].
    """
    pred_mask, true_mask = _mask_pair(pred, target)
    return float((pred_mask == true_mask).mean())


def _split_images(masks):
    """Turn [H,W], [B,H,W] or a list of [H,W] masks into a list of 2-D arrays."""
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
    """Accumulates per-image scores for the heads ('cyt', 'nuc'); images may differ in size.

    Scores are averaged per image (not pooled over pixels), so a small image
    counts as much as a large one.
    """

    def __init__(self, heads=("cyt", "nuc")):
        """Args:
            heads: names of the segmentation heads that may be updated.
        """
        self.heads = tuple(heads)
        self.reset()

    def reset(self):
        """Forget all accumulated scores."""
        self._scores = {head: {"dice": [], "iou": [], "pixel_acc": []} for head in self.heads}

    def update(self, head, pred_masks, true_masks):
        """Score a batch of images for one head.

        Args:
            head: one of ``self.heads``.
            pred_masks: bool/0-1 array [H,W] or [B,H,W], a torch tensor of those,
                or a list of [H,W] arrays (sizes may differ between images).
            true_masks: ground truth in the same layout as ``pred_masks``.
        """
        if head not in self._scores:
            raise ValueError(f"unknown head {head!r}; expected one of {self.heads}")
        preds, targets = _split_images(pred_masks), _split_images(true_masks)
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predicted masks but {len(targets)} ground-truth masks")
        scores = self._scores[head]
        for pred, target in zip(preds, targets):
            scores["dice"].append(dice_score(pred, target))
            scores["iou"].append(iou_score(pred, target))
            scores["pixel_acc"].append(pixel_accuracy(pred, target))

    def merge(self, other):
        """Add the scores another meter accumulated (another process's share of the images)."""
        for head in self.heads:
            for name, scores in self._scores[head].items():
                scores.extend(other._scores[head][name])

    def compute(self):
        """Mean of each per-image score.

        Returns:
            Dict with ``dice_<head>``, ``iou_<head>``, ``pixel_acc_<head>`` for every
            head that received at least one image, and ``dice_mean`` (mean of those
            heads' dice). Empty if nothing was updated.
        """
        results = {}
        head_dice = []
        for head, scores in self._scores.items():
            if not scores["dice"]:
                continue
            for name, values in scores.items():
                results[f"{name}_{head}"] = float(np.mean(values))
            head_dice.append(results[f"dice_{head}"])
        if head_dice:
            results["dice_mean"] = float(np.mean(head_dice))
        return results


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

def _average_ranks(values):
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.ravel()]


def binary_roc_auc(y_true, y_score):
    """Area under the ROC curve via the Mann-Whitney U statistic.

    A positive/negative pair with equal scores counts one half, which is exactly
    what the trapezoidal ROC area (scikit-learn's ``roc_auc_score``) gives.

    Args:
        y_true: bool/0-1 labels [N], positives are 1.
        y_score: scores [N], higher means more likely positive.

    Returns:
        AUC as float, or None when only one class is present (AUC undefined).
    """
    is_positive = np.asarray(y_true).astype(bool).ravel()
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(y_score, dtype=float).ravel())
    u_statistic = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def roc_curve(y_true, y_score):
    """ROC curve points, one per distinct score threshold.

    Args:
        y_true: bool/0-1 labels [N] with both classes present.
        y_score: scores [N], higher means more likely positive.

    Returns:
        (fpr, tpr) float arrays starting at (0, 0) and ending at (1, 1).
    """
    is_positive = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(y_score, dtype=float).ravel()
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_positive = scores[order], is_positive[order]
    # Only the last index of each run of equal scores is a threshold: tied samples
    # cross the threshold together.
    threshold_idx = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    true_pos = np.cumsum(sorted_positive)[threshold_idx]
    false_pos = threshold_idx + 1 - true_pos
    if true_pos[-1] == 0 or false_pos[-1] == 0:
        raise ValueError("ROC curve needs both positive and negative samples")
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    return fpr, tpr


def _safe_divide(numerator, denominator):
    """Elementwise division that yields 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _check_inputs(y_true, y_prob, num_classes=None):
    labels = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(y_prob, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != labels.size:
        raise ValueError(f"y_prob must be [N,K] with N={labels.size}, got {probs.shape}")
    if labels.size == 0:
        raise ValueError("no samples")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"y_prob has {probs.shape[1]} columns but there are {num_classes} classes")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]})")
    return labels, probs


def classification_metrics(y_true, y_prob, class_names):
    """Multi-class metrics for predictions ``argmax(y_prob)``.

    Precision/recall/F1 of a class with no predictions/no samples are 0, and
    macro averages run over all K classes (scikit-learn with ``labels=range(K)``,
    ``zero_division=0``). Balanced accuracy follows ``balanced_accuracy_score``:
    the mean recall over the classes present in ``y_true``. ROC-AUC is one-vs-rest
    per class; a class absent from ``y_true`` (or making up all of it) gets None
    and is left out of the macro AUC.

    Args:
        y_true: int labels [N] in [0, K).
        y_prob: class probabilities [N, K].
        class_names: K class names, in column order.

    Returns:
        JSON-serialisable dict with ``accuracy``, ``balanced_accuracy``,
        ``macro_precision``, ``macro_recall``, ``macro_f1``, ``weighted_f1``,
        ``roc_auc_macro`` (None if no class qualifies), ``roc_auc_per_class``
        {name: float or None}, ``per_class`` {name: {precision, recall, f1,
        support}}, ``confusion_matrix`` (K x K, rows true, columns predicted),
        ``class_names`` and ``num_samples``.
    """
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    labels, probs = _check_inputs(y_true, y_prob, num_classes)
    predictions = probs.argmax(axis=1)

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_pos = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)

    precision = _safe_divide(true_pos, predicted)
    recall = _safe_divide(true_pos, support)
    # 2TP / (2TP + FP + FN) equals 2PR / (P + R) and stays defined when P = R = 0.
    f1 = _safe_divide(2 * true_pos, support + predicted)

    auc_per_class = [binary_roc_auc(labels == k, probs[:, k]) for k in range(num_classes)]
    valid_aucs = [auc for auc in auc_per_class if auc is not None]

    return {
        "accuracy": float(true_pos.sum() / labels.size),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "roc_auc_macro": float(np.mean(valid_aucs)) if valid_aucs else None,
        "roc_auc_per_class": dict(zip(class_names, auc_per_class)),
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "most_confused": most_confused_pairs(confusion, class_names),
        "class_names": class_names,
        "num_samples": int(labels.size),
    }


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


def binary_metrics(y_true, y_prob, positive_classes, class_names):
    """Normal-vs-abnormal metrics obtained by collapsing the K classes.

    A sample is predicted abnormal when the K-class argmax is one of the positive
    classes; its abnormal score (for ROC-AUC) is the summed probability of those
    classes.

    Args:
        y_true: int labels [N] in [0, K).
        y_prob: class probabilities [N, K].
        positive_classes: the abnormal classes, as indices or as names from ``class_names``.
        class_names: K class names, in column order.

    Returns:
        JSON-serialisable dict with ``accuracy``, ``sensitivity``, ``specificity``,
        ``f1`` (of the abnormal class), ``roc_auc`` (None if only one group is
        present) and ``confusion_matrix`` [[TN, FP], [FN, TP]] (rows true
        [normal, abnormal], columns predicted).
    """
    class_names = [str(name) for name in class_names]
    labels, probs = _check_inputs(y_true, y_prob, len(class_names))
    positive_idx = sorted(
        {class_names.index(c) if isinstance(c, str) else int(c) for c in positive_classes}
    )

    is_abnormal = np.isin(labels, positive_idx)
    predicted_abnormal = np.isin(probs.argmax(axis=1), positive_idx)
    abnormal_score = probs[:, positive_idx].sum(axis=1)

    tp = int(np.sum(is_abnormal & predicted_abnormal))
    fn = int(np.sum(is_abnormal & ~predicted_abnormal))
    fp = int(np.sum(~is_abnormal & predicted_abnormal))
    tn = int(np.sum(~is_abnormal & ~predicted_abnormal))

    return {
        "accuracy": (tp + tn) / labels.size,
        "sensitivity": float(_safe_divide(tp, tp + fn)),
        "specificity": float(_safe_divide(tn, tn + fp)),
        "f1": float(_safe_divide(2 * tp, 2 * tp + fp + fn)),
        "roc_auc": binary_roc_auc(is_abnormal, abnormal_score),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------

def reliability_bins(y_true, y_prob, n_bins=15):
    """Top-label confidence and accuracy per equal-width confidence bin.

    Bin b covers (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 goes to the
    first bin.

    Args:
        y_true: int labels [N].
        y_prob: class probabilities [N, K].
        n_bins: number of bins on [0, 1].

    Returns:
        (mean_confidence, accuracy, count) arrays of length ``n_bins``; empty bins
        have confidence and accuracy 0 and count 0.
    """
    labels, probs = _check_inputs(y_true, y_prob)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_idx, minlength=n_bins)
    mean_confidence = _safe_divide(np.bincount(bin_idx, confidence, n_bins), count)
    accuracy = _safe_divide(np.bincount(bin_idx, correct, n_bins), count)
    return mean_confidence, accuracy, count


def expected_calibration_error(y_true, y_prob, n_bins=15):
    """Top-label expected calibration error with equal-width confidence bins.

    Args:
        y_true: int labels [N].
        y_prob: class probabilities [N, K].
        n_bins: number of bins on [0, 1].

    Returns:
        sum over bins of (bin size / N) * |accuracy - mean confidence|.
    """
    mean_confidence, accuracy, count = reliability_bins(y_true, y_prob, n_bins)
    return float(np.sum(count / count.sum() * np.abs(accuracy - mean_confidence)))


# ---------------------------------------------------------------------------
# Uncertainty
# ---------------------------------------------------------------------------

def bootstrap_accuracy_ci(y_true, y_pred, n_resamples=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of the accuracy, resampling cells with replacement.

    Returns:
        [low, high] as floats.
    """
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    rng = np.random.default_rng(seed)
    resampled = correct[rng.integers(0, correct.size, size=(n_resamples, correct.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(resampled, tail)), float(np.percentile(resampled, 100 - tail))]
