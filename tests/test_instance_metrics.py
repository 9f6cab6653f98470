"""Behaviour of tools/instance_metrics.py: matching, detection, ISBI cell scores and AJI on hand-made instances."""
import time

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from tools.instance_metrics import (
    aggregated_jaccard_index,
    detection_scores,
    instance_masks,
    isbi_cell_scores,
    match_by_iou,
    overlaps,
    pool_detection_scores,
    pool_isbi_cell_scores,
)

SHAPE = (100, 100)


def box(r0, c0, r1, c1, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return mask


def disc(cy, cx, radius, shape=SHAPE) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2


def three_cells():
    return [disc(25, 25, 12), disc(25, 70, 15), disc(72, 50, 18)]


def test_perfect_prediction_scores_one_everywhere():
    cells = three_cells()
    detection = detection_scores(cells, cells)
    assert detection["f1"] == 1.0 and detection["dice_matched"] == 1.0 and (detection["fp"], detection["fn"]) == (0, 0)
    isbi = isbi_cell_scores(cells, cells)
    assert isbi["dice"] == 1.0 and isbi["fno"] == 0.0 and isbi["tpp"] == 1.0 and isbi["fpp"] == 0.0 and isbi["fdo"] == 0.0
    assert aggregated_jaccard_index(cells, cells) == 1.0


def test_missing_cell_raises_fno_by_one_over_n():
    cells = three_cells() + [disc(80, 10, 6)]
    pred = cells[:3]
    assert isbi_cell_scores(cells, pred)["fno"] == pytest.approx(1 / 4)
    detection = detection_scores(cells, pred)
    assert (detection["tp"], detection["fp"], detection["fn"]) == (3, 0, 1)
    assert detection["precision"] == 1.0 and detection["recall"] == 0.75
    areas = [c.sum() for c in cells]
    assert aggregated_jaccard_index(cells, pred) == pytest.approx(sum(areas[:3]) / sum(areas))


def test_shifted_square_gives_hand_computed_dice_iou_and_pixel_rates():
    gt, pred = box(40, 40, 60, 60), box(40, 42, 60, 62)  # 20x20, shifted 2 px right
    # |G n S| = 20 * 18 = 360, |G| = |S| = 400, |G u S| = 440
    assert detection_scores([gt], [pred])["dice_matched"] == pytest.approx(720 / 800)
    assert match_by_iou([gt], [pred]) == [(0, 0, pytest.approx(360 / 440))]
    isbi = isbi_cell_scores([gt], [pred])
    assert isbi["dice"] == pytest.approx(0.9)
    assert isbi["tpp"] == pytest.approx(360 / 400)
    assert isbi["fpp"] == pytest.approx(40 / (100 * 100 - 400))  # wrong pixels over the pixels outside the cell
    assert aggregated_jaccard_index([gt], [pred]) == pytest.approx(360 / 440)


def test_shifted_disc_dice_and_iou_match_sklearn():
    gt, pred = disc(50, 50, 20), disc(53, 58, 20)
    table = overlaps([gt], [pred])
    assert table.dice[0, 0] == pytest.approx(f1_score(gt.ravel(), pred.ravel()))
    assert table.iou[0, 0] == pytest.approx(jaccard_score(gt.ravel(), pred.ravel()))


def test_split_prediction_lowers_aji_and_fails_the_isbi_threshold():
    gt = box(0, 0, 10, 10)  # 100 px
    halves = [box(0, 0, 10, 5), box(0, 5, 10, 10)]  # 50 px each
    # The GT cell takes one half (I = 50, U = 100); the unused half adds its 50 px to U
    assert aggregated_jaccard_index([gt], halves) == pytest.approx(50 / 150)
    isbi = isbi_cell_scores([gt], halves)  # best Dice 2 * 50 / 150 = 0.67 <= 0.7
    assert isbi["fno"] == 1.0 and isbi["dice"] == 0.0 and isbi["fdo"] == 1.0
    detection = detection_scores([gt], halves)  # IoU 0.5 with each half: one match, one false positive
    assert (detection["tp"], detection["fp"], detection["fn"]) == (1, 1, 0)


def test_merged_prediction_lowers_aji():
    cells = [box(0, 0, 10, 10), box(0, 12, 10, 22)]
    merged = box(0, 0, 10, 22)  # 220 px covering both
    # Both GT cells take the merged prediction: I = 100 + 100, U = 220 + 220 (the original AJI counts it twice)
    assert aggregated_jaccard_index(cells, [merged]) == pytest.approx(200 / 440)


def test_overlapping_gt_cells_predicted_exactly_still_score_one():
    cells = [disc(50, 40, 20), disc(50, 60, 20)]  # half of each lies under the other
    assert (cells[0] & cells[1]).sum() > 300
    assert aggregated_jaccard_index(cells, cells) == 1.0
    isbi = isbi_cell_scores(cells, cells)
    assert isbi["dice"] == 1.0 and isbi["fno"] == 0.0
    assert detection_scores(cells, cells)["f1"] == 1.0
    assert match_by_iou(cells, cells[::-1]) == [(0, 1, 1.0), (1, 0, 1.0)]


def test_empty_predictions_and_empty_fields():
    cells = three_cells()
    detection = detection_scores(cells, [])
    assert detection["f1"] == 0.0 and detection["precision"] == 0.0 and detection["fn"] == 3
    assert isbi_cell_scores(cells, [])["fno"] == 1.0
    assert aggregated_jaccard_index(cells, []) == 0.0
    assert aggregated_jaccard_index([], cells) == 0.0
    assert detection_scores([], cells)["fp"] == 3
    # Nothing to find and nothing found is perfect; an empty mask is no instance at all
    assert detection_scores([], [np.zeros(SHAPE, bool)])["f1"] == 1.0
    assert aggregated_jaccard_index([], []) == 1.0
    assert isbi_cell_scores([], [])["dice"] == 1.0


def test_iou_exactly_at_the_threshold_counts_as_a_match():
    gt, pred = box(0, 0, 10, 10), box(0, 0, 10, 5)  # IoU = 50 / 100 = 0.5 exactly
    assert detection_scores([gt], [pred], iou_threshold=0.5)["tp"] == 1
    assert detection_scores([gt], [pred], iou_threshold=0.51)["tp"] == 0


def test_matching_prefers_more_matches_to_one_large_iou():
    shape = (1, 20)
    cell_a, cell_b = box(0, 0, 1, 10, shape), box(0, 10, 1, 20, shape)
    wide = box(0, 3, 1, 13, shape)  # IoU 7/13 with A, 3/17 with B
    sliver = box(0, 0, 1, 2, shape)  # IoU 2/10 with A
    # Taking the best pair first (A-wide) would leave B unmatched; A-sliver plus B-wide matches both
    assert [(g, p) for g, p, _ in match_by_iou([cell_a, cell_b], [wide, sliver], iou_threshold=0.15)] == [(0, 1), (1, 0)]


def test_label_image_gives_the_same_scores_as_its_masks():
    labels = np.zeros(SHAPE, np.int32)
    for value, cell in zip((3, 7, 9), three_cells()):
        labels[cell] = value
    masks = instance_masks(labels)
    assert len(masks) == 3 and all(m.dtype == bool for m in masks)
    assert [int(labels[m][0]) for m in masks] == [3, 7, 9]
    pred = [np.roll(m, 2, axis=1) for m in masks]
    assert detection_scores(labels, pred) == detection_scores(masks, pred)
    assert aggregated_jaccard_index(labels, pred) == aggregated_jaccard_index(masks, pred)


def test_pooling_weights_fields_by_their_cells():
    field_a = dict(dice=0.9, tpp=0.9, fpp=0.01, fno=0.0, fdo=0.0, n_gt=2, n_pred=2, n_good=2)
    field_b = dict(dice=0.75, tpp=0.8, fpp=0.03, fno=0.5, fdo=0.5, n_gt=2, n_pred=2, n_good=1)
    pooled = pool_isbi_cell_scores([field_a, field_b])
    assert pooled["dice"] == pytest.approx((0.9 * 2 + 0.75) / 3)
    assert pooled["fno"] == pytest.approx(1 / 4) and pooled["fdo"] == pytest.approx(1 / 4)
    detection = pool_detection_scores([dict(tp=3, fp=1, fn=0, dice_matched=0.8), dict(tp=1, fp=0, fn=3, dice_matched=0.6)])
    assert detection["precision"] == pytest.approx(4 / 5) and detection["recall"] == pytest.approx(4 / 7)
    assert detection["dice_matched"] == pytest.approx((3 * 0.8 + 0.6) / 4)


def test_a_large_field_scores_quickly():
    rng = np.random.default_rng(0)
    shape = (1024, 1024)
    centres = rng.integers(40, 984, size=(40, 2))
    gt = [disc(cy, cx, 15, shape) for cy, cx in centres]
    pred = [np.roll(m, 3, axis=0) for m in gt]
    start = time.perf_counter()
    detection_scores(gt, pred), isbi_cell_scores(gt, pred), aggregated_jaccard_index(gt, pred)
    assert time.perf_counter() - start < 3.0  # about 0.1 s; bounding boxes keep it from growing with G x P x H x W
