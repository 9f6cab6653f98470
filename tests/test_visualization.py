"""Tests for utils.visualization: PNGs are written and overlays land on mask boundaries."""

import cv2
import numpy as np
import pytest

from tools.metrics import expected_calibration_error, reliability_bins
from utils.visualization import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    save_overlay_grid,
)

CLASS_NAMES = [
    "superficial", "intermediate", "columnar",
    "mild_dysplastic", "moderate_dysplastic", "severe_dysplastic",
]


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=300)
    labels[labels == 5] = 4  # one class absent from y_true: its ROC curve is skipped
    logits = rng.normal(size=(300, 6)) + 2.0 * np.eye(6)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def _read_png(path, min_side=200):
    """Read the PNG back with OpenCV and check it is a plausibly sized colour image."""
    assert path.suffix == ".png" and path.stat().st_size > 0
    image = cv2.imread(str(path))
    assert image is not None, f"cv2 could not read {path}"
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side and max(image.shape[:2]) <= 5000
    assert image.std() > 0  # not a blank canvas
    return image


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_matrix(tmp_path, predictions, normalize):
    labels, probs = predictions
    confusion = np.zeros((6, 6), dtype=int)
    np.add.at(confusion, (labels, probs.argmax(axis=1)), 1)
    path = plot_confusion_matrix(confusion, CLASS_NAMES, tmp_path / "sub" / "cm.png", normalize=normalize)
    _read_png(path, min_side=400)


def test_plot_roc_curves(tmp_path, predictions):
    path = plot_roc_curves(*predictions, CLASS_NAMES, tmp_path / "roc.png")
    _read_png(path, min_side=400)


def test_plot_reliability_diagram(tmp_path, predictions):
    bins = reliability_bins(*predictions, n_bins=10)
    path = plot_reliability_diagram(bins, expected_calibration_error(*predictions, n_bins=10), tmp_path / "reliability.png")
    _read_png(path, min_side=400)


def test_save_overlay_grid(tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"cell {i}", rng.integers(0, 256, size=(40 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(5)]
    path = save_overlay_grid(items, tmp_path / "grid.png", ncols=3)
    image = _read_png(path)
    assert image.shape[1] > image.shape[0]  # 3 columns by 2 rows is wider than tall
