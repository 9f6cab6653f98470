"""Plots for evaluation reports (drawing on the cell images themselves is utils/overlays.py).

Every plotting function writes a PNG (creating parent folders), closes its
figure and returns the path. Matplotlib is switched to the non-interactive Agg
backend so the plots also work on headless training machines.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend switch)
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" keeps long rotated class names inside the image.
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _unit_square(ax, xlabel, ylabel, title, top=1.0):
    """Axes for a curve on [0, 1] x [0, 1] with its diagonal drawn by the caller."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def plot_confusion_matrix(confusion, class_names, path, normalize=True, title=None):
    """Heat map of a confusion matrix with the counts written in the cells.

    Args:
        confusion: K x K counts, rows = true class, columns = predicted class.
        class_names: K class names.
        path: output PNG path.
        normalize: colour cells by the row-normalised fraction (recall per true
            class) instead of the raw count; the percentage is then printed under the count.
        title: figure title; defaults to "Confusion matrix".

    Returns:
        Path of the written PNG.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    num_classes = len(class_names)
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        colour_values = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
        vmax = 1.0
    else:
        colour_values = counts.astype(float)
        vmax = max(colour_values.max(), 1.0)

    side = max(4.0, 0.9 * num_classes + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(colour_values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize else "count")
    for row in range(num_classes):
        for col in range(num_classes):
            text = str(counts[row, col])
            if normalize:
                text += f"\n{100 * colour_values[row, col]:.0f}%"
            # White text on dark cells stays legible.
            text_colour = "white" if colour_values[row, col] > 0.5 * vmax else "black"
            ax.text(col, row, text, ha="center", va="center", color=text_colour, fontsize=9)
    ax.set_xticks(range(num_classes), class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(num_classes), class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or "Confusion matrix")
    return _save(fig, path)


def plot_roc_curves(y_true, y_prob, class_names, path, binary=None):
    """One-vs-rest ROC curve per class, AUC in the legend, chance diagonal.

    Args:
        y_true: int labels [N].
        y_prob: class probabilities [N, K].
        class_names: K class names.
        path: output PNG path.
        binary: optional (name, is_abnormal bool [N], abnormal score [N]): one more curve, drawn thick in black, e.g.
            normal vs abnormal.

    Returns:
        Path of the written PNG. Classes absent from ``y_true`` (or making up
        all of it) have no ROC curve and are skipped.
    """
    labels = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(y_prob, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    colours = plt.get_cmap("tab10")
    for k, name in enumerate(class_names):
        is_class = labels == k
        if is_class.all() or not is_class.any():
            continue
        auc = roc_auc_score(is_class, probs[:, k])
        fpr, tpr, _ = roc_curve(is_class, probs[:, k])
        ax.plot(fpr, tpr, color=colours(k % 10), lw=1.5, label=f"{name} (AUC {auc:.3f})")
    if binary is not None and 0 < np.sum(binary[1]) < len(binary[1]):
        name, is_positive, scores = binary
        fpr, tpr, _ = roc_curve(is_positive, scores)
        ax.plot(fpr, tpr, color="black", lw=2.5, label=f"{name} (AUC {roc_auc_score(is_positive, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    _unit_square(ax, "False positive rate", "True positive rate", "ROC curves (one-vs-rest)", top=1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability_diagram(bins, ece, path):
    """Top-label reliability diagram: accuracy per confidence bin against the diagonal.

    Args:
        bins: (mean confidence, accuracy, count) per equal-width confidence bin (tools/metrics.reliability_bins).
        ece: the expected calibration error, shown in the title.
        path: output PNG path.

    Returns:
        Path of the written PNG.
    """
    mean_confidence, accuracy, count = (np.asarray(values) for values in bins)
    n_bins = len(count)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    width = 1.0 / n_bins
    occupied = count > 0

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.bar(edges[:-1][occupied], accuracy[occupied], width=width, align="edge",
           color="tab:blue", edgecolor="black", label="accuracy")
    # Red gap bars show how far each bin's confidence is from its accuracy.
    ax.bar(edges[:-1][occupied], (mean_confidence - accuracy)[occupied], bottom=accuracy[occupied],
           width=width, align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    _unit_square(ax, "Confidence", "Accuracy", f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def save_overlay_grid(items, path, ncols=4):
    """Save RGB panels side by side in a titled grid.

    Args:
        items: list of (title, uint8 RGB array) pairs; panel sizes may differ.
        path: output PNG path.
        ncols: panels per row (fewer if there are fewer items).

    Returns:
        Path of the written PNG.
    """
    if not items:
        raise ValueError("no panels to plot")
    ncols = min(ncols, len(items))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.5 * ncols, 3.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image) in zip(axes.ravel(), items):
        ax.imshow(image)
        ax.set_title(str(title), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
