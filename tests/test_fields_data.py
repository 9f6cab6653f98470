"""Behaviour of tools/fields/data.py (stage 1 on fields of view): nucleus linking, scale, tiles and cell windows."""
import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_fields_pseudo_masks import write_cric_root

from tools.fields.data import (
    UNKNOWN,
    CellWindows,
    FieldTiles,
    PreparedField,
    field_scale,
    is_field_layout,
    link_nuclei,
    median_nucleus_diameter,
    open_fields,
    prepare_fields,
    tiles_by_area,
)
from tools.fields.geometry import crop_padded, grid_corners
from tools.fields.layouts import read_fields
from tools.layouts.cells import read_records
from tools.run_dir import RunPaths
from tools.splits import load_split


def disc(shape, centre, radius) -> np.ndarray:
    """bool [H, W]: the pixels within `radius` of centre (row, col)."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def write_isbi_field(folder: Path, name: str, shape=(64, 80), cells=(((24, 24), 14), ((36, 44), 14)), nucleus_radius=4,
                     with_cells=True) -> Path:
    """<name>.png (grey) with a _cellKK.png disc per cell (unless with_cells is False) and uint16 _nuclei.png labels."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full(shape, 220, np.uint8)
    nuclei = np.zeros(shape, np.uint16)
    for number, (centre, radius) in enumerate(cells, start=1):
        cell = disc(shape, centre, radius)
        image[cell] -= 50
        nuclei[disc(shape, centre, nucleus_radius)] = number
        image[nuclei == number] = 60
        if with_cells:
            cv2.imwrite(str(folder / f"{name}_cell{number:02d}.png"), cell.astype(np.uint8) * 255)
    cv2.imwrite(str(folder / f"{name}.png"), image)
    cv2.imwrite(str(folder / f"{name}_nuclei.png"), nuclei)
    return folder


# ---------------------------------------------------------------- linking nuclei to cells

def test_link_nuclei_resolves_a_nucleus_that_lies_in_two_overlapping_cells():
    shape = (60, 80)
    cell_a, cell_b = disc(shape, (30, 28), 16), disc(shape, (30, 48), 16)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disc(shape, (30, 36), 3)] = 1  # A's nucleus, in the overlap: inside B as well
    nuclei[disc(shape, (30, 58), 3)] = 2  # B's, in B only
    assert (cell_b & (nuclei == 1)).sum() == (nuclei == 1).sum()  # containment alone cannot tell whose it is
    assert link_nuclei([cell_b, cell_a], nuclei) == [2, 1]
    assert link_nuclei([cell_a, cell_b], nuclei) == [1, 2]


def test_link_nuclei_leaves_a_cell_without_its_own_nucleus_unlinked():
    shape = (60, 80)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disc(shape, (30, 20), 3)] = 7
    far_cell = disc(shape, (30, 62), 10)  # holds no nucleus
    near_cell = disc(shape, (30, 20), 10)
    assert link_nuclei([far_cell, near_cell], nuclei) == [None, 7]
    assert link_nuclei([far_cell], np.zeros(shape, np.int32)) == [None]
    # a nucleus only a third inside a cell is not its nucleus
    edge_cell = np.zeros(shape, bool)
    edge_cell[:, :19] = True
    assert link_nuclei([edge_cell], nuclei) == [None]


# ---------------------------------------------------------------- scale

def test_field_scale_brings_nuclei_to_about_22_px_and_never_enlarges(tmp_path):
    isbi_sized = write_isbi_field(tmp_path / "small", "synth01", shape=(96, 96), cells=(((30, 30), 20), ((60, 60), 20)),
                                  nucleus_radius=8)  # ~16 px across: smaller than the target, kept at its size
    diameter = median_nucleus_diameter(read_fields(isbi_sized)[0])
    assert diameter == pytest.approx(17, abs=1.5) and field_scale(diameter) == 1.0
    twice = write_isbi_field(tmp_path / "large", "synth01", shape=(160, 160), cells=(((45, 45), 40), ((112, 112), 40)),
                             nucleus_radius=22)  # ~44 px across
    assert field_scale(median_nucleus_diameter(read_fields(twice)[0])) == pytest.approx(0.5, abs=0.05)
    assert field_scale(None) == 1.0  # no labelled nucleus


def test_prepare_fields_resizes_image_masks_and_keeps_nucleus_links(tmp_path):
    root = write_isbi_field(tmp_path / "isbi", "synth01", shape=(64, 80))
    (prepared,) = prepare_fields(read_fields(root)[0], 0.5)
    assert prepared.image.shape == (32, 40, 3) and prepared.nuclei.shape == (32, 40)
    assert len(prepared.cells) == 2 and all(cell.shape == (32, 40) and cell.dtype == bool for cell in prepared.cells)
    assert prepared.cell_nucleus == [1, 2]
    assert set(np.unique(prepared.foreground)) == {0, 1}


# ---------------------------------------------------------------- tiles

def test_field_tiles_mark_unknown_foreground_where_cells_are_not_outlined(tmp_path):
    root = write_isbi_field(tmp_path / "edf", "edf00", shape=(48, 72), with_cells=False)
    (prepared,) = prepare_fields(read_fields(root)[0], 1.0)
    assert (prepared.foreground == UNKNOWN).all() and prepared.cells == []
    tiles = FieldTiles([prepared], 32, train=False)
    assert len(tiles) == len(grid_corners((48, 72), 32))
    image, targets = tiles[(0, 0)]
    assert image.shape == (3, 32, 32) and targets.shape == (2, 32, 32)
    assert (targets[0] == -1).all()  # the loss skips these pixels
    assert np.array_equal(targets[1].numpy(), (prepared.nuclei[:32, :32] > 0).astype(np.float32))  # validation: no augmentation
    for item in range(4):  # training tiles: random corners, augmented, still unknown foreground everywhere
        image, targets = FieldTiles([prepared], 32, train=True)[(item, 3)]
        assert image.shape == (3, 32, 32) and (targets[0] == -1).all() and set(np.unique(targets[1])) <= {0.0, 1.0}
        assert not image.isnan().any()


def test_training_tiles_are_shared_out_by_field_area():
    assert tiles_by_area([(512, 512)] * 3 + [(1024, 1024)], 4) == [2, 2, 2, 9]  # 16 tiles, 4:1 per pixel area
    assert tiles_by_area([(8, 8), (1000, 1000)], 2) == [1, 4]  # every field keeps at least one tile
    assert tiles_by_area([(64, 80)] * 5, 3) == [3] * 5


def test_field_tiles_of_outlined_cells_target_foreground_and_nuclei(tmp_path):
    root = write_isbi_field(tmp_path / "isbi", "synth01", shape=(64, 80))
    (prepared,) = prepare_fields(read_fields(root)[0], 1.0)
    train = FieldTiles([prepared], 32, train=True, tiles_per_field=3)
    assert len(train) == 3
    first, again = train[(1, 5)], train[(1, 5)]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, again))  # a function of the seed alone
    _, targets = FieldTiles([prepared], 32, train=False)[(0, 0)]
    assert np.array_equal(targets[0].numpy(), prepared.foreground[:32, :32].astype(np.float32))
    assert set(np.unique(targets[0])) == {0.0, 1.0}


# ---------------------------------------------------------------- cell windows

def overlapping_field() -> PreparedField:
    """Two overlapping disc cells; the first cell listed is the right one, so cell k does not hold nucleus k + 1."""
    shape = (64, 96)
    left_cell, right_cell = disc(shape, (32, 36), 14), disc(shape, (32, 56), 14)
    nuclei = np.zeros(shape, np.int32)
    nuclei[disc(shape, (32, 36), 4)] = 1
    nuclei[disc(shape, (32, 56), 4)] = 2
    image = np.full((*shape, 3), 220, np.uint8)
    image[left_cell | right_cell] = 150
    image[nuclei > 0] = 50
    cells = [right_cell, left_cell]
    return PreparedField("synth", image, (left_cell | right_cell).astype(np.uint8), nuclei, cells, link_nuclei(cells, nuclei))


def test_cell_windows_target_the_marked_nucleus_own_cell():
    prepared = overlapping_field()
    assert prepared.cell_nucleus == [2, 1]
    window = 40
    windows = CellWindows([prepared], window, window, train=False)
    assert len(windows) == 2
    for item, (cell, label) in enumerate(zip(prepared.cells, prepared.cell_nucleus)):
        inputs, targets = windows[(item, 0)]
        assert inputs.shape == (4, window, window) and targets.shape == (2, window, window)
        centre = np.argwhere(prepared.nuclei == label).mean(axis=0).round().astype(int)
        top, left = centre - window // 2
        expected_cell = crop_padded(cell.astype(np.uint8), top, left, window, 0)
        expected_nucleus = crop_padded((prepared.nuclei == label).astype(np.uint8), top, left, window, 0)
        assert np.array_equal(targets[0].numpy(), expected_cell)  # the whole cell, overlap included
        assert np.array_equal(targets[1].numpy(), expected_nucleus)
        assert np.array_equal(inputs[3].numpy(), expected_nucleus)  # the marker is that nucleus ...
        assert np.allclose(np.argwhere(inputs[3].numpy() > 0).mean(axis=0), window // 2, atol=0.5)  # ... at the centre
        other = prepared.cells[1 - item]
        assert not np.array_equal(expected_cell, crop_padded(other.astype(np.uint8), top, left, window, 0))


def test_cell_windows_resize_and_jitter_in_training_as_functions_of_the_seed():
    prepared = overlapping_field()
    windows = CellWindows([prepared], 40, 32, train=True)
    inputs, targets = windows[(0, 11)]
    assert inputs.shape == (4, 32, 32) and targets.shape == (2, 32, 32) and not inputs.isnan().any()
    assert targets[0].sum() > targets[1].sum() > 0 and inputs[3].sum() > 0
    assert ((targets[1] > 0) <= (targets[0] > 0)).all()  # the nucleus lies in its cell
    again = windows[(0, 11)]
    assert np.array_equal(inputs.numpy(), again[0].numpy()) and np.array_equal(targets.numpy(), again[1].numpy())


# ---------------------------------------------------------------- which data are fields

def test_is_field_layout_for_isbi_folders_and_sipakmed_roots(tmp_path, demo_root):
    isbi = write_isbi_field(tmp_path / "isbi", "synth01")
    assert is_field_layout("auto", isbi)
    assert is_field_layout("isbi2014", isbi)
    assert not is_field_layout("auto", demo_root)  # a SIPaKMeD root is read as cells unless asked for its fields
    assert is_field_layout("sipakmed-fields", demo_root)
    assert not is_field_layout("sipakmed", demo_root)
    assert not is_field_layout("auto", tmp_path / "missing")


def test_open_fields_splits_sipakmed_fields_in_their_own_manifest(tmp_path, demo_root):
    args = argparse.Namespace(data_root=demo_root, layout="sipakmed-fields", split_file=None, split_seed=0)
    paths = RunPaths(tmp_path / "run")
    split = open_fields(args, paths)
    assert split.layout == "sipakmed" and len(split.records) == 10
    assert split.manifest_path == paths.manifest(demo_root, "fields") != paths.manifest(demo_root)
    assert split.manifest_path.exists()
    ids = [[r.field_id for r in split.by_split[name]] for name in ("train", "val", "test")]
    assert sorted(sum(ids, [])) == sorted(r.field_id for r in split.records)  # every field in exactly one split
    assert ids[0] and ids[1]


def test_a_cric_roots_fields_are_split_as_its_cells_are(tmp_path):
    classes = ["Negative for intraepithelial lesion"] * 6 + ["LSIL"] * 3 + ["HSIL"] * 3
    root = write_cric_root(tmp_path / "cric", classes)
    args = argparse.Namespace(data_root=root, layout="cric-fields", split_file=None, split_seed=0)
    paths = RunPaths(tmp_path / "run")
    fields = open_fields(args, paths)
    cells, _ = read_records(root, "cric")
    cell_split = load_split(cells, paths.manifest(root), root, "cric")
    field_of_split = {r.field_id: name for name, records in fields.by_split.items() for r in records}
    cell_of_split = {r.group: name for name, records in cell_split.items() for r in records}
    # each field alone would be split by its own label; following its cells, it lands where they do
    assert field_of_split == cell_of_split
