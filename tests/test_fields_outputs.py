"""Behaviour of tools/fields/outputs.py: what predict.py --fields writes for every cell, from hand-drawn cells."""
import json

import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from tools.fields.outputs import (
    CellRecord,
    cell_record,
    class_colours,
    csv_row,
    feature_id,
    feature_json,
    label_images,
    overlay,
    paint_labels,
)
from tools.fields.segment import FieldCell

SHAPE = (60, 100)
CLASSES = ["im_Dyskeratotic", "im_Koilocytotic", "im_Parabasal"]  # Parabasal is a normal SIPaKMeD class


def disc(centre, radius, shape=SHAPE) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def field_cell(cell: np.ndarray, nucleus: np.ndarray, probs=None, score=0.9) -> FieldCell:
    """A FieldCell cut to its box from full-field masks."""
    rows, cols = np.nonzero(cell)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return FieldCell((int(x0), int(y0), int(x1), int(y1)), cell[y0:y1, x0:x1], nucleus[y0:y1, x0:x1], score,
                     None if probs is None else np.asarray(probs, np.float32))


def two_overlapping_cells(classified=True):
    """A big cell (radius 15) and a smaller one (radius 10) over its right side."""
    big = field_cell(disc((30, 30), 15), disc((30, 30), 5), [0.1, 0.2, 0.7] if classified else None)
    small = field_cell(disc((30, 52), 10), disc((30, 54), 4), [0.6, 0.3, 0.1] if classified else None)
    return [big, small]


def full_mask(cell: FieldCell, part: np.ndarray) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    x0, y0, x1, y1 = cell.box
    mask[y0:y1, x0:x1] = part
    return mask


def rasterised(ring) -> np.ndarray:
    centres = np.array(ring) - 0.5  # pixel-edge -> pixel-centre coordinates
    mask = np.zeros(SHAPE, bool)
    mask[fill_polygon(centres[:, 1], centres[:, 0], SHAPE)] = True
    return mask


def iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


# ---------------------------------------------------------------- records and GeoJSON features

def records(cells, class_names=CLASSES):
    return [(number, cell_record(cell, class_names, with_masks=True)) for number, cell in enumerate(cells, start=1)]


def test_a_cell_becomes_one_qupath_cell_feature():
    colours = class_colours(CLASSES)
    for number, (cell, record) in enumerate(zip(two_overlapping_cells(), [r for _, r in records(two_overlapping_cells())]), 1):
        feature = json.loads(feature_json(record, "slides/field01", number, CLASSES, colours))
        assert feature["type"] == "Feature" and feature["properties"]["objectType"] == "cell"
        assert feature["id"] == feature_id("slides/field01", number) != feature_id("slides/field02", number)
        assert iou(rasterised(feature["geometry"]["coordinates"][0]), full_mask(cell, cell.cell_mask)) > 0.9
        assert feature["properties"]["nucleusGeometry"] == feature["nucleusGeometry"]
        assert iou(rasterised(feature["nucleusGeometry"]["coordinates"][0]), full_mask(cell, cell.nuc_mask)) > 0.9
        name = CLASSES[int(np.argmax(cell.probs))]
        assert feature["properties"]["classification"] == {"name": name, "color": list(colours[name])}
        measurements = feature["properties"]["measurements"]
        cell_area, nucleus_area = int(cell.cell_mask.sum()), int(cell.nuc_mask.sum())
        assert measurements["cell_area_px"] == cell_area and measurements["nucleus_area_px"] == nucleus_area
        assert measurements["cytoplasm_area_px"] == cell_area - nucleus_area
        assert measurements["nc_ratio"] == pytest.approx(nucleus_area / (cell_area - nucleus_area))
        assert measurements["cell_score"] == pytest.approx(0.9)
        assert [measurements[f"prob_{c}"] for c in CLASSES] == pytest.approx(list(cell.probs))
    assert len({colour for colour in map(tuple, class_colours(CLASSES).values())}) == len(CLASSES)


def test_an_unclassified_cell_has_no_class_and_no_probabilities():
    record = cell_record(two_overlapping_cells(classified=False)[0], None)
    feature = json.loads(feature_json(record, "field", 1, None, {}))
    assert "classification" not in feature["properties"] and record.masks is None
    assert not any(key.startswith("prob_") for key in feature["properties"]["measurements"])
    assert csv_row(record, "field", 1, None)["class"] == ""


def test_a_cell_without_pixels_gives_no_record():
    empty = FieldCell((0, 0, 4, 4), np.zeros((4, 4), bool), np.zeros((4, 4), bool), 0.5)
    assert cell_record(empty, None) is None


def test_the_csv_row_holds_centroid_box_class_and_measurements():
    (_, big), (_, small) = records(two_overlapping_cells())
    rows = [csv_row(big, "field01", 1, CLASSES), csv_row(small, "field01", 2, CLASSES)]
    assert [row["id"] for row in rows] == [1, 2] and {row["field"] for row in rows} == {"field01"}
    # pixel-edge coordinates, as in the GeoJSON: the disc around pixel (30, 30) is centred on (30.5, 30.5)
    assert (rows[0]["centroid_x"], rows[0]["centroid_y"]) == (30.5, 30.5)
    assert (rows[1]["centroid_x"], rows[1]["centroid_y"]) == (52.5, 30.5)
    assert [rows[0][key] for key in ("x0", "y0", "x1", "y1")] == [15, 15, 46, 46]
    assert [row["class"] for row in rows] == ["im_Parabasal", "im_Dyskeratotic"]
    assert rows[0]["cell_area_px"] == big.measurements["cell_area_px"] and rows[0]["prob_im_Parabasal"] == pytest.approx(0.7)


def test_a_record_survives_pickling_with_its_masks():
    import pickle

    (_, record), _ = records(two_overlapping_cells())
    copy = pickle.loads(pickle.dumps(record))
    cell, nucleus = copy.unpacked_masks()
    big = two_overlapping_cells()[0]
    assert np.array_equal(cell, big.cell_mask) and np.array_equal(nucleus, big.nuc_mask)
    assert isinstance(copy, CellRecord) and copy.outline == record.outline


# ---------------------------------------------------------------- label images and overlays

def test_label_images_are_uint16_and_an_overlap_goes_to_the_smaller_cell():
    big, small = two_overlapping_cells()
    big_mask, small_mask = full_mask(big, big.cell_mask), full_mask(small, small.cell_mask)
    assert (big_mask & small_mask).any()
    for cells in ([big, small], [small, big]):  # whatever the order of the cells
        cell_labels, nuc_labels = label_images(records(cells), SHAPE)
        assert cell_labels.dtype == nuc_labels.dtype == np.uint16 and cell_labels.shape == SHAPE
        big_label, small_label = cells.index(big) + 1, cells.index(small) + 1
        assert (cell_labels[~(big_mask | small_mask)] == 0).all()
        assert (cell_labels[small_mask] == small_label).all()  # the overlap included
        assert (cell_labels[big_mask & ~small_mask] == big_label).all()
        assert np.array_equal(nuc_labels == big_label, full_mask(big, big.nuc_mask))
        assert np.array_equal(nuc_labels == small_label, full_mask(small, small.nuc_mask))
        assert set(np.unique(nuc_labels)) == {0, 1, 2}


def test_label_images_of_a_field_without_cells_are_background():
    cell_labels, nuc_labels = label_images([], SHAPE)
    assert cell_labels.dtype == np.uint16 and not cell_labels.any() and not nuc_labels.any()


def test_a_window_of_the_labels_is_that_window_of_the_whole():
    whole_cells, whole_nuclei = paint_labels(records(two_overlapping_cells()), 0, 0, *SHAPE)
    part_cells, part_nuclei = paint_labels(records(two_overlapping_cells()), 20, 40, 30, 50)
    assert whole_cells.dtype == np.uint32
    assert np.array_equal(part_cells, whole_cells[20:50, 40:90]) and np.array_equal(part_nuclei, whole_nuclei[20:50, 40:90])


def test_the_overlay_outlines_every_cell_in_its_class_colour():
    image = np.full((*SHAPE, 3), 220, np.uint8)
    colours = class_colours(CLASSES)
    drawn = overlay(image, [r for _, r in records(two_overlapping_cells())], CLASSES, colours)
    assert drawn.shape == image.shape and (image == 220).all()  # drawn on a copy
    for name in ("im_Parabasal", "im_Dyskeratotic"):
        assert (drawn == np.array(colours[name], np.uint8)).all(axis=2).any()
