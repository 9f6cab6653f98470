"""tools/review/cells.py: the grid index finds exactly the cells a full scan finds, what a view sends is bounded
(outlines, dots, density), rows and outlines are read back as written."""
import csv
import json

import numpy as np
import pytest

from tools.review.cells import MAX_OUTLINES, CellIndex
from tools.review.synthetic import write_generated_cells

CLASSES = ["abnormal_cells", "normal_cells"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells")
    stem = write_generated_cells(folder, "many", 3000, 12000, folder / "slide.tiff", CLASSES, seed=3)
    return CellIndex(f"{stem}_cells.csv", f"{stem}.geojson", CLASSES)


def everything(index):
    final = index.model_class.astype(np.int64)
    return final, np.zeros(len(index), np.int8), np.ones(len(CLASSES) + 1, bool)


@pytest.mark.parametrize("box", [(0, 0, 12000, 12000), (1000, 2000, 1600, 2300), (5000, 5000, 5001, 5001),
                                 (-500, -500, 300, 300), (11900, 100, 30000, 900)])
def test_the_grid_finds_what_a_full_scan_finds(index, box):
    x0, y0, x1, y1 = box
    reach = index.reach
    scan = np.nonzero((index.x >= x0 - reach) & (index.x < x1 + reach) & (index.y >= y0 - reach) & (index.y < y1 + reach))[0]
    assert np.array_equal(index.in_view(*box), scan)


def test_a_view_sends_outlines_dots_or_a_density_grid_never_more(index, monkeypatch):
    from tools.review import cells

    monkeypatch.setattr(cells, "MAX_DOTS", 1000)  # 3000 cells stand for 100,000
    final, codes, visible = everything(index)
    close = index.view((1000, 1000, 2000, 2000), 1.0, final, codes, visible, 0.0)
    assert close["mode"] == "outlines" and 0 < close["total"] <= MAX_OUTLINES
    assert all(cell["ring"][0] == cell["ring"][-1] for cell in close["cells"])
    far = index.view((0, 0, 12000, 12000), 0.05, final, codes, visible, 0.0)
    assert far["mode"] == "density" and far["total"] == 3000 and np.sum(far["counts"]) == 3000
    middle = index.view((0, 0, 4000, 4000), 0.05, final, codes, visible, 0.0)
    assert middle["mode"] == "dots" and len(middle["id"]) == middle["total"] <= 1000
    hidden = index.view((0, 0, 12000, 12000), 0.05, final, codes, np.array([True, False, False]), 0.1)
    expected = np.sum((final == 0) & (index.abnormal_probability >= 0.1))
    assert hidden["total"] == expected and np.sum(hidden["counts"]) == expected


def test_rows_and_outlines_are_read_back_as_written(index):
    with open(index.cells_csv, newline="") as table:
        rows = list(csv.DictReader(table))
    features = json.loads(index.geojson.read_text())["features"]
    for cell_id in (1, 777, 3000):
        assert index.row(cell_id) == rows[cell_id - 1]
        ring = features[cell_id - 1]["geometry"]["coordinates"][0]
        assert index.outline(cell_id - 1) == [[round(x, 1), round(y, 1)] for x, y in ring]
    with pytest.raises(KeyError):
        index.row(3001)


def test_generated_features_are_what_predict_writes():
    from tools.fields.outputs import CellRecord, class_colours, feature_json
    from tools.review.synthetic import feature_text, octagon

    record = CellRecord((90, 190, 111, 211), (100.0, 200.0), octagon(100, 200, 10), octagon(100, 200, 4),
                        {"cell_area_px": 300, "prob_abnormal_cells": 0.25, "prob_normal_cells": 0.75}, [0.25, 0.75])
    colours = class_colours(CLASSES)
    assert feature_text(record, "s", 7, CLASSES, colours) == feature_json(record, "s", 7, CLASSES, colours)
