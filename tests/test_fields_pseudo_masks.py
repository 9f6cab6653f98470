"""Behaviour of tools/fields/pseudo_masks.py and the point-marked (CRIC) field layout on tiny drawn fields."""
import csv
from pathlib import Path

import cv2
import numpy as np

from tools.fields.data import CellWindows, FieldTiles, prepare_field
from tools.fields.layouts import detect_field_layout, read_fields
from tools.fields.pseudo_masks import (
    FALLBACK_RADIUS_PX,
    UNKNOWN,
    point_nuclei,
    point_nucleus,
    point_targets,
)

SHAPE = (160, 220)  # height, width
GLASS, CYTOPLASM, NUCLEUS = (235, 240, 238), (150, 190, 200), (60, 40, 90)
SQUAMOUS = (((60, 70), 14), ((150, 80), 10))  # (x, y) of a marked nucleus, its radius; each in a cytoplasm of radius 45
NEUTROPHIL = (190, 20)  # a small dark blob alone on the glass, not marked


def drawn_field() -> np.ndarray:
    """Glass, two squamous cells (a pale disc with a dark nucleus) and an unmarked dark blob."""
    image = np.zeros((*SHAPE, 3), np.uint8)
    image[:] = GLASS
    for (x, y), radius in SQUAMOUS:
        cv2.circle(image, (x, y), 45, CYTOPLASM, -1)
    for (x, y), radius in SQUAMOUS:
        cv2.circle(image, (x, y), radius, NUCLEUS, -1)
    cv2.circle(image, NEUTROPHIL, 5, NUCLEUS, -1)
    return image


def disc(centre, radius) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def placed(mask: np.ndarray, corner) -> np.ndarray:
    full = np.zeros(SHAPE, bool)
    x0, y0 = corner
    full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
    return full


def test_a_nucleus_grows_from_its_point_over_the_dark_blob_it_marks():
    grey = cv2.cvtColor(drawn_field(), cv2.COLOR_RGB2GRAY)
    for (x, y), radius in SQUAMOUS:
        mask, corner = point_nucleus(grey, x, y)
        assert iou(placed(mask, corner), disc((x, y), radius)) > 0.85


def test_a_point_placed_beside_its_nucleus_snaps_to_it():
    grey = cv2.cvtColor(drawn_field(), cv2.COLOR_RGB2GRAY)
    (x, y), radius = SQUAMOUS[0]
    mask, corner = point_nucleus(grey, x + radius + 3, y)  # 3 px outside the drawn nucleus
    assert iou(placed(mask, corner), disc((x, y), radius)) > 0.85


def test_a_point_on_no_dark_blob_gets_a_disc_of_the_fallback_radius():
    grey = cv2.cvtColor(drawn_field(), cv2.COLOR_RGB2GRAY)
    mask, corner = point_nucleus(grey, 100, 140)  # glass
    assert iou(placed(mask, corner), disc((100, 140), FALLBACK_RADIUS_PX)) > 0.9


def test_point_nuclei_label_each_point_and_mark_their_borders_unsure():
    points = np.array([centre for centre, _ in SQUAMOUS], np.float32)
    labels, unsure = point_nuclei(drawn_field(), points)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    for label, ((x, y), radius) in enumerate(SQUAMOUS, start=1):
        assert labels[y, x] == label
        assert unsure[y, x + radius] and not unsure[y, x]  # the border, not the core
    assert labels[NEUTROPHIL[1], NEUTROPHIL[0]] == 0


def test_point_targets_leave_unmarked_tissue_unknown_and_glass_background():
    points = np.array([centre for centre, _ in SQUAMOUS], np.float32)
    nuclei, _, cells, foreground = point_targets(drawn_field(), points)
    assert len(cells) == 2
    for label, (cell, ((x, y), _)) in enumerate(zip(cells, SQUAMOUS), start=1):
        assert cell[nuclei == label].all()  # a cell holds its nucleus
        assert iou(cell, disc((x, y), 45)) > 0.6  # and mostly its cytoplasm
        assert foreground[y, x] == 1
    assert not (cells[0] & cells[1]).any()
    assert foreground[NEUTROPHIL[1], NEUTROPHIL[0]] == UNKNOWN  # tissue no point marks
    assert foreground[150, 200] == 0  # glass


def write_cric_root(root: Path, classes=("Negative for intraepithelial lesion", "HSIL")) -> Path:
    """A CRIC-style folder: one drawn field per class with its two squamous cells marked in classifications.csv."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "classifications.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "image_filename", "image_doi", "cell_id", "bethesda_system", "nucleus_x", "nucleus_y"])
        for image_id, name in enumerate(classes):
            filename = f"field{image_id}.png"
            cv2.imwrite(str(root / filename), cv2.cvtColor(drawn_field(), cv2.COLOR_RGB2BGR))
            for number, ((x, y), _) in enumerate(SQUAMOUS):
                writer.writerow([image_id, filename, "doi", 10 * image_id + number, name, x, y])
    return root


def test_a_cric_folder_is_read_as_point_marked_fields(tmp_path):
    root = write_cric_root(tmp_path / "cric")
    assert detect_field_layout(root) == "cric"
    records, layout = read_fields(root)
    assert layout == "cric" and [r.field_id for r in records] == ["field0", "field1"]
    assert all(r.has_nuclei and r.has_cells for r in records)
    np.testing.assert_array_equal(records[0].points, [centre for centre, _ in SQUAMOUS])


def test_a_prepared_point_field_links_cell_k_to_nucleus_k_and_trains_tiles_and_windows(tmp_path):
    records, _ = read_fields(write_cric_root(tmp_path / "cric"))
    prepared = prepare_field(records[0], 0.5)
    assert prepared.cell_nucleus == [1, 2]
    assert prepared.image.shape[:2] == prepared.nuc_unsure.shape == (80, 110)
    _, target = FieldTiles([prepared], 128, train=False)[0]
    assert (target[1] == -1).any() and (target[1] == 1).any()  # unsure nucleus borders, and nuclei
    assert (target[0] == -1).any() and (target[0] == 0).any()  # unmarked tissue, and glass
    windows = CellWindows([prepared], 64, 32, train=True, max_cells=1)
    assert len(windows) == 1 and windows[(0, 3)][1].shape == (2, 32, 32)
