"""Tests for utils.overlays: outlines land on mask boundaries, ground truth in other colours, heat maps blend."""
import cv2
import numpy as np

from utils.overlays import blend_heatmap, overlay_masks

GREEN, RED = (0, 255, 0), (255, 0, 0)


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


def test_blend_heatmap_colours_hot_red_and_keeps_the_image_at_zero_alpha():
    image = np.full((4, 6, 3), 100, np.uint8)
    heat = np.zeros((4, 6), np.float32)
    heat[:, 3:] = 1.0
    blended = blend_heatmap(image, heat, alpha=1.0)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    red, green, blue = blended[0, 5].astype(int)
    assert red > 100 and red > blue and blended[0, 0, 2] > blended[0, 0, 0]  # hot: red; cold: blue (jet)
    assert np.array_equal(blend_heatmap(image, heat, alpha=0.0), image)
