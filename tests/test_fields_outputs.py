"""Behaviour of tools/fields/outputs.py: what predict.py --fields writes for a field, from hand-drawn cells."""
import json

import cv2
import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from tools.fields.outputs import (
    SUSPICIOUS_LISTED,
    class_colours,
    field_summary,
    label_images,
    table_rows,
    write_field,
    write_summary,
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


# ---------------------------------------------------------------- write_field

def test_write_field_writes_one_qupath_cell_per_cell(tmp_path):
    cells = two_overlapping_cells()
    image = np.full((*SHAPE, 3), 220, np.uint8)
    write_field(tmp_path, "slides/field01", image, SHAPE, cells, CLASSES)
    folder = tmp_path / "slides"
    collection = json.loads((folder / "field01.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    colours = class_colours(CLASSES)
    for feature, cell in zip(collection["features"], cells):
        assert feature["type"] == "Feature" and feature["properties"]["objectType"] == "cell"
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
    assert [f["properties"]["classification"]["name"] for f in collection["features"]] == ["im_Parabasal", "im_Dyskeratotic"]
    assert len({colour for colour in map(tuple, colours.values())}) == len(CLASSES)
    overlay = cv2.imread(str(folder / "field01_overlay.png"))
    assert overlay.shape == (*SHAPE, 3) and (overlay != 220).any()  # the outlines are drawn


def test_unclassified_cells_have_no_class_and_no_overlay_without_the_image(tmp_path):
    write_field(tmp_path, "field", None, SHAPE, two_overlapping_cells(classified=False), None)
    features = json.loads((tmp_path / "field.geojson").read_text())["features"]
    assert len(features) == 2 and all("classification" not in f["properties"] for f in features)
    assert all(not any(key.startswith("prob_") for key in f["properties"]["measurements"]) for f in features)
    assert not (tmp_path / "field_overlay.png").exists() and (tmp_path / "field_cells.png").exists()


def test_label_images_are_uint16_and_an_overlap_goes_to_the_smaller_cell(tmp_path):
    big, small = two_overlapping_cells()
    big_mask, small_mask = full_mask(big, big.cell_mask), full_mask(small, small.cell_mask)
    assert (big_mask & small_mask).any()
    for cells in ([big, small], [small, big]):  # whatever the order of the cells
        write_field(tmp_path, "field", None, SHAPE, cells, CLASSES)
        cell_labels = cv2.imread(str(tmp_path / "field_cells.png"), cv2.IMREAD_UNCHANGED)
        nuc_labels = cv2.imread(str(tmp_path / "field_nuclei.png"), cv2.IMREAD_UNCHANGED)
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


# ---------------------------------------------------------------- tables and summaries

def test_table_rows_hold_centroid_box_class_and_measurements():
    big, small = two_overlapping_cells()
    rows = table_rows("field01", [big, small], CLASSES)
    assert [row["id"] for row in rows] == [1, 2] and {row["field"] for row in rows} == {"field01"}
    # pixel-edge coordinates, as in the GeoJSON: the disc around pixel (30, 30) is centred on (30.5, 30.5)
    assert (rows[0]["centroid_x"], rows[0]["centroid_y"]) == (30.5, 30.5)
    assert (rows[1]["centroid_x"], rows[1]["centroid_y"]) == (52.5, 30.5)
    assert [rows[0][key] for key in ("x0", "y0", "x1", "y1")] == [15, 15, 46, 46]
    assert [row["class"] for row in rows] == ["im_Parabasal", "im_Dyskeratotic"]
    assert rows[0]["cell_area_px"] == big.cell_mask.sum() and rows[0]["prob_im_Parabasal"] == pytest.approx(0.7)
    unclassified = table_rows("field01", two_overlapping_cells(classified=False), None)
    assert unclassified[0]["class"] == "" and not any(key.startswith("prob_") for key in unclassified[0])


def summary_row(field, index, probs):
    return {"field": field, "id": index, "class": CLASSES[int(np.argmax(probs))],
            **{f"prob_{name}": p for name, p in zip(CLASSES, probs)}}


def test_field_summary_counts_classes_and_lists_the_most_suspicious_first():
    rows = [summary_row("a", 1, [0.1, 0.1, 0.8]), summary_row("a", 2, [0.5, 0.45, 0.05]),
            summary_row("a", 3, [0.2, 0.5, 0.3]), summary_row("a", 4, [0.05, 0.05, 0.9])]
    summary = field_summary(rows, CLASSES)
    assert summary["cells"] == 4
    assert summary["counts"] == {"im_Dyskeratotic": 1, "im_Koilocytotic": 1, "im_Parabasal": 2}
    assert summary["abnormal_fraction"] == 0.5
    assert [cell["id"] for cell in summary["most_suspicious"]] == [2, 3, 1, 4]  # by Dyskeratotic + Koilocytotic
    assert summary["most_suspicious"][0] == {"field": "a", "id": 2, "class": "im_Dyskeratotic", "abnormal_probability": 0.95}
    many = [summary_row("b", i, [0.3, 0.3, 0.4]) for i in range(SUSPICIOUS_LISTED + 5)]
    assert len(field_summary(many, CLASSES)["most_suspicious"]) == SUSPICIOUS_LISTED
    assert field_summary(rows, None) == {"cells": 4}  # unclassified: a count only
    assert field_summary([], CLASSES) == {"cells": 0}


def test_write_summary_pools_fields_and_keeps_each(tmp_path):
    rows = {"a": [summary_row("a", 1, [0.8, 0.1, 0.1])], "b": [summary_row("b", 1, [0.1, 0.1, 0.8]),
                                                              summary_row("b", 2, [0.1, 0.1, 0.8])]}
    write_summary(tmp_path, rows, CLASSES, {"block_size": 2048})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"] == {"block_size": 2048}
    assert summary["overall"]["cells"] == 3 and summary["overall"]["abnormal_fraction"] == pytest.approx(1 / 3)
    assert summary["fields"]["a"]["abnormal_fraction"] == 1.0 and summary["fields"]["b"]["counts"]["im_Parabasal"] == 2
