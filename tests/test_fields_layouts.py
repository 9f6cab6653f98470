"""Behaviour of tools/fields/layouts.py on tiny ISBI 2014- and SIPaKMeD-like fields written into tmp_path."""
import shutil
import tempfile
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
import tifffile
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tools.fields.layouts import (
    detect_field_layout,
    load_field,
    read_fields,
    read_isbi2014,
    read_sipakmed_fields,
)
from utils.errors import UserError

SIZE = (48, 64)  # height, width


def disc_mask(centre, radius, shape=SIZE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 255, -1)
    return mask


def write_isbi_field(folder: Path, name: str, cell_centres=((20, 24), (36, 24)), with_cells=True) -> Path:
    """A grey field with overlapping disc cells (<name>_cellKK.png, 0/255) and uint16 nuclei (<name>_nuclei.png)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full(SIZE, 220, np.uint8)
    nuclei = np.zeros(SIZE, np.uint16)
    for number, centre in enumerate(cell_centres, start=1):
        cell = disc_mask(centre, 14)
        image[cell > 0] -= 40
        nuclei[disc_mask(centre, 4) > 0] = number
        if with_cells:
            cv2.imwrite(str(folder / f"{name}_cell{number:02d}.png"), cell)
    cv2.imwrite(str(folder / f"{name}.png"), image)
    cv2.imwrite(str(folder / f"{name}_nuclei.png"), nuclei)
    return folder / f"{name}.png"


def write_isbi_root(root: Path) -> Path:
    write_isbi_field(root / "synthetic", "synth01")
    write_isbi_field(root / "synthetic", "synth02", cell_centres=((16, 20), (30, 26), (44, 22)))
    write_isbi_field(root / "edf", "edf00", with_cells=False)
    return root


def write_dat(path: Path, points) -> None:
    path.write_text("".join(f"{x:.2f},{y:.2f}\n" for x, y in points))


def circle_points(cx, cy, radius, n=24):
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def write_sipakmed_root(root: Path) -> Path:
    """One cluster image with two cells; the single nucleus file (nuc01) lies in cell 02, as cluster files allow."""
    folder = root / "im_Parabasal" / "im_Parabasal"
    (folder / "CROPPED").mkdir(parents=True)
    cv2.imwrite(str(folder / "001.bmp"), np.full((*SIZE, 3), (200, 180, 230), np.uint8))
    write_dat(folder / "001_cyt01.dat", circle_points(16, 20, 10))
    write_dat(folder / "001_cyt02.dat", circle_points(44, 24, 12))
    write_dat(folder / "001_nuc01.dat", circle_points(46, 24, 4))
    # A crop and its boundary are single-cell data, not a field
    cv2.imwrite(str(folder / "CROPPED" / "001_01.bmp"), np.zeros((20, 20, 3), np.uint8))
    write_dat(folder / "CROPPED" / "001_01_cyt.dat", circle_points(10, 10, 8))
    return root


# ---------------------------------------------------------------- ISBI 2014

def test_isbi_fields_are_found_with_their_cells_and_nuclei(tmp_path):
    records, layout = read_fields(write_isbi_root(tmp_path / "isbi"))
    assert layout == "isbi2014"
    assert [r.field_id for r in records] == ["edf/edf00", "synthetic/synth01", "synthetic/synth02"]
    assert [r.group for r in records] == [r.field_id for r in records]
    assert [len(r.cell_mask_paths) for r in records] == [0, 2, 3]
    assert [r.has_cells for r in records] == [False, True, True]
    assert all(r.has_nuclei for r in records)
    assert [r.label for r in records] == ["edf", "synthetic", "synthetic"]  # the subset folder stratifies splits


def test_isbi_sample_keeps_overlapping_cells_and_nucleus_instances(tmp_path):
    records, _ = read_fields(write_isbi_root(tmp_path / "isbi"))
    sample = load_field(records[1])
    assert sample.image.shape == (*SIZE, 3) and sample.image.dtype == np.uint8  # grey becomes RGB
    assert len(sample.cell_masks) == 2 and all(m.dtype == bool and m.shape == SIZE for m in sample.cell_masks)
    assert (sample.cell_masks[0] & sample.cell_masks[1]).any()  # the two cells overlap, and both keep the overlap
    assert np.array_equal(sample.cell_masks[0], disc_mask((20, 24), 14) > 0)
    assert sample.nuc_labels.dtype == np.int32 and set(np.unique(sample.nuc_labels)) == {0, 1, 2}
    edf = load_field(records[0])
    assert edf.cell_masks is None and edf.nuc_labels.max() == 2


def test_isbi_root_may_point_at_a_subfolder_or_lie_deeper(tmp_path):
    root = write_isbi_root(tmp_path / "a" / "b" / "isbi")
    records, _ = read_fields(root / "synthetic")
    assert [r.field_id for r in records] == ["synth01", "synth02"]
    records, _ = read_fields(tmp_path)
    assert records[0].field_id == "a/b/isbi/edf/edf00"


def test_hidden_and_macos_files_are_skipped(tmp_path):
    root = write_isbi_root(tmp_path / "isbi")
    shutil.copytree(root / "synthetic", root / "__MACOSX" / "synthetic")
    shutil.copytree(root / "synthetic", root / ".trash")
    (root / "synthetic" / "._synth01_cell01.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    records, _ = read_fields(root)
    assert len(records) == 3


def test_cell_numbers_sort_numerically_and_names_ignore_case(tmp_path):
    folder = tmp_path / "isbi"
    write_isbi_field(folder, "synth01")
    (folder / "synth01_cell01.png").rename(folder / "synth01_CELL9.png")
    (folder / "synth01_cell02.png").rename(folder / "synth01_cell10.png")
    records, _ = read_fields(folder)
    assert [p.name for p in records[0].cell_mask_paths] == ["synth01_CELL9.png", "synth01_cell10.png"]


def test_binary_nucleus_mask_becomes_one_instance_per_blob(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    binary = np.zeros(SIZE, np.uint8)
    binary[disc_mask((10, 10), 3) > 0] = 255
    binary[disc_mask((40, 30), 3) > 0] = 255
    cv2.imwrite(str(image_path.with_name("synth01_nuclei.png")), binary)
    records, _ = read_fields(tmp_path / "isbi")
    assert load_field(records[0]).nuc_labels.max() == 2


# ---------------------------------------------------------------- ISBI errors

def message_of(root: Path, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        read_fields(root, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_no_fields_names_the_expected_layouts(tmp_path):
    (tmp_path / "plain").mkdir()
    cv2.imwrite(str(tmp_path / "plain" / "cell.png"), np.zeros((8, 8), np.uint8))  # an image without annotations
    message = message_of(tmp_path)
    assert "no fields found" in message and "isbi2014" in message and "sipakmed" in message
    assert detect_field_layout(tmp_path) is None


def test_cell_mask_of_another_size_is_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    cv2.imwrite(str(image_path.with_name("synth01_cell02.png")), np.zeros((10, 10), np.uint8))
    message = message_of(tmp_path / "isbi")
    assert "synth01_cell02.png" in message and "10x10" in message and "64x48" in message
    read_fields(tmp_path / "isbi", check=False)  # listing alone does not decode


def test_unreadable_file_is_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    image_path.write_bytes(b"not a png")
    message = message_of(tmp_path / "isbi")
    assert "synth01.png" in message and "cannot read" in message


def test_float_nucleus_labels_are_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    image_path.with_name("synth01_nuclei.png").unlink()
    tifffile.imwrite(image_path.with_name("synth01_nuclei.tif"), np.zeros(SIZE, np.float32))
    message = message_of(tmp_path / "isbi")
    assert "synth01_nuclei.tif" in message and "not integers" in message


def test_colour_nucleus_labels_are_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    cv2.imwrite(str(image_path.with_name("synth01_nuclei.png")), np.zeros((*SIZE, 3), np.uint8))
    assert "channels" in message_of(tmp_path / "isbi")


def test_annotation_without_its_image_is_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    image_path.unlink()
    message = message_of(tmp_path / "isbi")
    assert "synth01_cell01.png" in message and "no image synth01" in message


def test_empty_cell_mask_is_an_error(tmp_path):
    image_path = write_isbi_field(tmp_path / "isbi", "synth01")
    cv2.imwrite(str(image_path.with_name("synth01_cell01.png")), np.zeros(SIZE, np.uint8))
    assert "empty" in message_of(tmp_path / "isbi")


def test_unknown_layout_is_an_error(tmp_path):
    assert "unknown field layout" in message_of(write_isbi_root(tmp_path / "isbi"), layout="herlev")


# ---------------------------------------------------------------- SIPaKMeD

def test_sipakmed_cluster_images_are_fields(tmp_path):
    root = write_sipakmed_root(tmp_path / "sipakmed")
    assert detect_field_layout(root) == "sipakmed"
    records, layout = read_fields(root)
    assert layout == "sipakmed" and len(records) == 1
    record = records[0]
    assert record.field_id == "im_Parabasal/im_Parabasal/001"
    assert record.group == "im_Parabasal/001" and record.label == "im_Parabasal"
    assert len(record.cell_polygons) == 2 and len(record.nuc_polygons) == 1 and record.has_cells
    assert [p.name for p in record.polygon_files] == ["001_cyt01.dat", "001_cyt02.dat", "001_nuc01.dat"]


def test_sipakmed_sample_gives_whole_cells_and_nucleus_owners(tmp_path):
    records, _ = read_fields(write_sipakmed_root(tmp_path / "sipakmed"))
    sample = load_field(records[0])
    assert sample.image.shape == (*SIZE, 3)
    assert len(sample.cell_masks) == 2 and sample.nuc_labels.max() == 1
    assert sample.nuc_owner == {1: 1}  # nucleus file 01 lies in cell file 02
    nucleus = sample.nuc_labels == 1
    assert (sample.cell_masks[1] & nucleus).sum() == nucleus.sum()  # the cell mask is the whole cell
    assert not (sample.cell_masks[0] & nucleus).any()


def test_sipakmed_root_may_be_the_class_folder(tmp_path):
    root = write_sipakmed_root(tmp_path / "sipakmed")
    records, _ = read_fields(root / "im_Parabasal")
    assert records[0].field_id == "im_Parabasal/001" and records[0].group == "im_Parabasal/001"


def test_sipakmed_polygon_outside_its_image_is_an_error(tmp_path):
    root = write_sipakmed_root(tmp_path / "sipakmed")
    write_dat(root / "im_Parabasal" / "im_Parabasal" / "001_cyt02.dat", circle_points(200, 24, 12))
    message = message_of(root)
    assert "001_cyt02.dat" in message and "outside" in message


def test_sipakmed_reader_ignores_isbi_files_and_the_other_way_round(tmp_path):
    sipakmed = write_sipakmed_root(tmp_path / "sipakmed")
    isbi = write_isbi_root(tmp_path / "isbi")
    assert read_isbi2014(sipakmed) == [] and read_sipakmed_fields(isbi) == []


# ---------------------------------------------------------------- generated hostile annotations (tests/hostile.py)

NUCLEUS_LABEL_FAULTS = ("labels", "binary", "empty", "colour", "float", "wrong_size", "negative", "one_bit", "missing")


def nucleus_labels(shape, fault: str):
    """A nucleus label image of `shape` with one of NUCLEUS_LABEL_FAULTS, and the suffix to store it with."""
    disc = hostile.draw_mask(shape, "none", radius_share=0.2) > 0
    labels = {"labels": disc.astype(np.uint16) * 3, "binary": disc.astype(np.uint8) * 255,
              "empty": np.zeros(shape, np.uint16), "colour": np.dstack([disc.astype(np.uint8) * 255] * 3),
              "float": disc.astype(np.float32), "wrong_size": np.zeros((shape[0] + 1, shape[1]), np.uint16),
              "negative": disc.astype(np.int16) - 1, "one_bit": disc, "missing": None}[fault]
    return labels, ".png" if fault in ("labels", "binary", "empty", "colour", "wrong_size") else ".tif"


@settings(max_examples=hostile.examples(30))
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(NUCLEUS_LABEL_FAULTS),
       st.lists(st.sampled_from(hostile.MASK_FAULTS), max_size=3))
def test_generated_isbi_annotations_give_fields_or_one_line(height, width, nucleus_fault, cell_faults):
    """ISBI fields whose nucleus labels and cell masks are empty, full, colour, float, 1-bit, of another size..."""
    with tempfile.TemporaryDirectory() as folder:
        field = Path(folder) / "isbi" / "edf"
        field.mkdir(parents=True)
        cv2.imwrite(str(field / "f.png"), np.full((height, width), 200, np.uint8))
        labels, suffix = nucleus_labels((height, width), nucleus_fault)
        if labels is not None:
            tifffile.imwrite(field / f"f_nuclei{suffix}", labels) if suffix == ".tif" else \
                cv2.imwrite(str(field / f"f_nuclei{suffix}"), labels)
        for number, fault in enumerate(cell_faults, start=1):
            cv2.imwrite(str(field / f"f_cell{number:02d}.png"), hostile.draw_mask((height, width), fault, number))
        try:
            records, _ = read_fields(field.parent)
        except UserError as error:
            assert str(error).startswith(str(field.parent)), error  # a file of the field, or the root (nothing found)
            return
        for sample in map(load_field, records):
            assert sample.image.shape == (height, width, 3)
            assert sample.nuc_labels is None or (sample.nuc_labels.shape == (height, width) and sample.nuc_labels.min() >= 0)
            assert all(mask.shape == (height, width) and mask.any() for mask in sample.cell_masks or [])


@settings(max_examples=hostile.examples(30))
@given(hostile.polygon_text, hostile.polygon_text, st.integers(1, 40), st.integers(1, 40))
@example("1,1\n1,1\n1,1\n", "", 20, 20)  # a cell of one pixel
def test_generated_polygon_files_give_fields_or_one_line(cyt_text, nuc_text, height, width):
    with tempfile.TemporaryDirectory() as folder:
        inner = Path(folder) / "sipakmed" / "im_Bad" / "im_Bad"
        inner.mkdir(parents=True)
        cv2.imwrite(str(inner / "001.bmp"), np.full((height, width, 3), 200, np.uint8))
        (inner / "001_cyt01.dat").write_text(cyt_text, encoding="utf-8")
        (inner / "001_nuc01.dat").write_text(nuc_text, encoding="utf-8")
        try:
            records, _ = read_fields(inner.parent.parent)
        except UserError as error:
            assert str(error).startswith(str(inner)), error
            return
        sample = load_field(records[0])
        assert all(mask.shape == (height, width) and mask.any() for mask in sample.cell_masks)
