"""Tests for utils.visualization: PNGs are written and overlays land on mask boundaries."""

import cv2
import numpy as np
import pytest

from utils.visualization import (
    overlay_masks,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    save_overlay_grid,
)

CLASS_NAMES = [
    "superficial", "intermediate", "columnar",
    "mild_dysplastic", "moderate_dysplastic", "severe_dysplastic",
]
GREEN, RED = (0, 255, 0), (255, 0, 0)


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
    path = plot_reliability_diagram(*predictions, tmp_path / "reliability.png", n_bins=10)
    _read_png(path, min_side=400)


def test_save_overlay_grid(tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"cell {i}", rng.integers(0, 256, size=(40 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(5)]
    path = save_overlay_grid(items, tmp_path / "grid.png", ncols=3)
    image = _read_png(path)
    assert image.shape[1] > image.shape[0]  # 3 columns by 2 rows is wider than tall


def _square_cell():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    cyt = np.zeros((64, 64), dtype=bool)
    cyt[10:50, 10:50] = True
    nuc = np.zeros((64, 64), dtype=bool)
    nuc[25:35, 25:35] = True
    return image, cyt, nuc


def test_overlay_draws_contours_on_boundaries_only():
    image, cyt, nuc = _square_cell()
    original = image.copy()
    overlay = overlay_masks(image, cyt, nuc)

    assert overlay.dtype == np.uint8 and overlay.shape == (64, 64, 3)
    np.testing.assert_array_equal(image, original)  # input untouched

    # Cell boundary: rows/cols 10 and 49 of the square; nucleus boundary: 25 and 34.
    for y, x in [(10, 30), (49, 30), (30, 10), (30, 49), (10, 10)]:
        assert tuple(overlay[y, x]) == GREEN
    for y, x in [(25, 30), (34, 30), (30, 25), (30, 34)]:
        assert tuple(overlay[y, x]) == RED
    # Thin lines: one pixel off a boundary, and everywhere far from one, nothing changes.
    for y, x in [(11, 30), (9, 30), (24, 30), (26, 30), (18, 18), (30, 30), (0, 0), (60, 60)]:
        assert tuple(overlay[y, x]) == (128, 128, 128)
    changed = np.any(overlay != image, axis=-1)
    boundary = (cyt ^ cv2.erode(cyt.astype(np.uint8), np.ones((3, 3))).astype(bool)) | (
        nuc ^ cv2.erode(nuc.astype(np.uint8), np.ones((3, 3))).astype(bool)
    )
    np.testing.assert_array_equal(changed, boundary)


def test_overlay_ground_truth_in_other_colours():
    image, cyt, nuc = _square_cell()
    true_cyt = np.zeros_like(cyt)
    true_cyt[5:55, 5:55] = True
    true_nuc = np.zeros_like(nuc)
    true_nuc[20:40, 20:40] = True
    overlay = overlay_masks(image, cyt, nuc, true_cyt=true_cyt, true_nuc=true_nuc)

    gt_cell_pixels = overlay[5, 5:55]
    gt_nuc_pixels = overlay[20, 20:40]
    assert np.any(np.all(gt_cell_pixels == (0, 255, 255), axis=-1))
    assert np.any(np.all(gt_nuc_pixels == (255, 255, 0), axis=-1))
    # Dashed: part of each ground-truth edge keeps the original colour.
    assert np.any(np.all(gt_cell_pixels == 128, axis=-1))
    # Predictions are still drawn as without ground truth.
    assert tuple(overlay[10, 30]) == GREEN and tuple(overlay[25, 30]) == RED
