"""Behaviour of tools/layouts/cells.py (and record.py): any cell data root, its layout detected or named, each cell
once, and generated hostile masks and polygons read into a plausible cell or refused in one line."""
import shutil
import tempfile
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_layouts_sipakmed import copy_demo

from tools.data_loader import load_sample
from tools.inputs import mark_output_dir
from tools.layouts.cells import LAYOUTS, detect_layout, read_records
from tools.layouts.record import CellRecord
from utils.errors import UserError

# ---------------------------------------------------------------- layout detection

def test_unrecognised_folder_lists_the_layouts(tmp_path):
    root = tmp_path / "texts"
    (root / "class_a").mkdir(parents=True)
    (root / "class_a" / "readme.txt").write_text("hello")
    (root / "summary.txt").write_text("hello")
    with pytest.raises(UserError) as error:
        detect_layout(root)
    message = str(error.value)
    assert str(root) in message
    assert all(layout in message for layout in LAYOUTS)
    with pytest.raises(UserError, match="no known data layout"):
        read_records(root)


def test_missing_root_and_unknown_layout(tmp_path, make_paired):
    with pytest.raises(UserError, match="does not exist"):
        read_records(tmp_path / "nowhere")
    root = make_paired(tmp_path / "herlev")
    with pytest.raises(UserError, match="unknown layout 'coco'"):
        read_records(root, layout="coco")


def test_forced_labels_layout_reads_a_paired_root_without_its_masks(tmp_path, make_paired):
    """The masks are masks still, never cells of their class (they were, 3 "cells" per cell, before)."""
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    records, layout = read_records(root, layout="labels")
    assert layout == "labels" and not any(r.has_masks for r in records)
    assert sorted(r.sample_id for r in records) == ["abnormal/1", "abnormal/2", "normal/1", "normal/2"]


@pytest.mark.parametrize("layout,flags,flag,wrong", [
    ("auto", dict(nuc_suffix="_nuc.png"), "--nuc-suffix", "_nuc.png"),  # auto would have read it labels-only
    ("paired", dict(cyt_suffix="_C.png"), "--cyt-suffix", "_C.png"),  # every mask "missing"
], ids=["auto", "paired"])
def test_a_mask_suffix_no_file_has_names_the_ones_found(tmp_path, make_paired, layout, flags, flag, wrong):
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    with pytest.raises(UserError, match=rf"{flag}: unknown mask suffix '{wrong}'; did you mean [CN].png\? "
                                        rf"\(known: C.png, N.png\); pass the ending of the mask files"):
        read_records(root, layout, **flags)
    assert len(read_records(root, layout, nuc_suffix="n.PNG")[0]) == 4  # any case


def test_a_link_beside_counts_once_and_a_link_into_another_class_is_refused(tmp_path, make_paired):
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    (root / "normal" / "9.BMP").symlink_to(root / "normal" / "1.BMP")  # the same cell under a second name
    assert len(read_records(root, "labels")[0]) == 4
    (root / "normal" / "9.BMP").unlink()
    (root / "normal" / "linked").symlink_to(root / "abnormal")  # not a class: its files lie in a class already
    (root / "others").symlink_to(root / "abnormal")
    with pytest.raises(UserError, match=r"others/1.BMP: the same file as .*abnormal/1.BMP .*two cells of classes "
                                        r"abnormal and others; remove the link"):
        read_records(root, "labels")


def test_output_folders_in_the_data_root_are_not_classes(tmp_path, make_paired):
    """predict.py (marked) and an earlier version's predict.py (its predictions.csv) were run into the data root."""
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    for output, marked in (("predictions", True), ("old_predictions", False)):
        (root / output).mkdir()
        cv2.imwrite(str(root / output / "1_overlay.png"), np.zeros((8, 8, 3), np.uint8))
        (root / output / "predictions.csv").write_text("file,name\n")
        if marked:
            mark_output_dir(root / output)
    with pytest.raises(UserError, match=r"class folder\(s\) old_predictions hold no usable images"):
        read_records(root)  # the marked folder is no class at all; the unmarked one has no cell left
    shutil.rmtree(root / "old_predictions")
    assert sorted({r.label for r in read_records(root)[0]}) == ["abnormal", "normal"]
    with pytest.raises(UserError, match="predictions: this folder holds outputs of this project"):
        read_records(root / "predictions")  # named as the data root itself


def test_file_names_match_whatever_their_case(tmp_path, make_paired, demo_root):
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    (root / "normal" / "1N.png").rename(root / "normal" / "1n.PNG")
    (root / "normal" / "1C.png").rename(root / "normal" / "1c.png")
    records, layout = read_records(root)
    record = next(r for r in records if r.sample_id == "normal/1")
    assert layout == "paired" and len(records) == 4  # the renamed masks are masks, not cells
    assert (record.nuc_mask_path.name, record.cyt_mask_path.name) == ("1n.PNG", "1c.png")
    assert load_sample(record).nuc_mask.any()

    sipakmed = copy_demo(demo_root, tmp_path)
    crops = sipakmed / "im_Parabasal" / "im_Parabasal" / "CROPPED"
    (crops / "001_01_cyt.dat").rename(crops / "001_01_CYT.DAT")
    record = next(r for r in read_records(sipakmed)[0] if r.sample_id == "im_Parabasal/im_Parabasal/CROPPED/001_01")
    assert record.polygon_files[0].name == "001_01_CYT.DAT" and load_sample(record).cell_mask.any()


def test_hidden_files_and_folders_are_never_read(tmp_path, make_paired):
    root = make_paired(tmp_path / "herlev", cells_per_class=2)
    (root / "normal" / "._1.BMP").write_bytes(b"macOS resource fork")
    (root / "__MACOSX" / "normal").mkdir(parents=True)
    (root / "__MACOSX" / "normal" / "1.BMP").write_bytes(b"macOS resource fork")
    records, _ = read_records(root)
    assert sorted(r.sample_id for r in records) == ["abnormal/1", "abnormal/2", "normal/1", "normal/2"]


def test_load_image_cuts_the_crop_box_out_of_its_image(tmp_path):
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    cv2.imwrite(str(tmp_path / "cluster.png"), image[..., ::-1])  # RGB on disk as BGR
    whole = CellRecord("c", tmp_path / "cluster.png", "a", "g")
    cut = CellRecord("c_01", tmp_path / "cluster.png", "a", "g", crop_box=(5, 2, 40, 12))  # x1 beyond the border
    assert np.array_equal(whole.load_image(), image)
    assert np.array_equal(cut.load_image(), image[2:12, 5:30])


# ---------------------------------------------------------------- generated hostile masks and polygons (tests/hostile.py)

def read_every_cell(root: Path, **flags):
    """Every cell of a data root decoded with its ground-truth masks (what check_cells does before training)."""
    records, _ = read_records(root, **flags)
    return [load_sample(record) for record in records]


def assert_a_plausible_cell(sample) -> None:
    height, width = sample.image.shape[:2]
    assert sample.cell_mask.shape == sample.nuc_mask.shape == (height, width)
    assert sample.cell_mask.any() and sample.cell_mask.mean() <= 0.98 and not (sample.nuc_mask & ~sample.cell_mask).any()


@settings(max_examples=hostile.examples(40))
@given(st.integers(1, 30), st.integers(1, 30), st.sampled_from(hostile.MASK_FAULTS), st.sampled_from(hostile.MASK_FAULTS))
def test_generated_masks_give_a_plausible_cell_or_one_line(height, width, cell_fault, nucleus_fault):
    """A Herlev cell whose cytoplasm and nucleus masks are empty, full, inverted, off by a pixel, of another size..."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "herlev"
        for name, faults, shape in (("bad", (cell_fault, nucleus_fault), (height, width)), ("good", ("none", "none"), (40, 56))):
            (root / name).mkdir(parents=True)
            cv2.imwrite(str(root / name / "1.bmp"), np.full((*shape, 3), 200, np.uint8))
            nucleus = hostile.draw_mask(shape, faults[1], radius_share=0.15)
            cell = hostile.draw_mask(shape, faults[0])
            if cell.shape == nucleus.shape and cell.ndim == nucleus.ndim == 2:
                cell = np.where(nucleus > 0, 0, cell).astype(cell.dtype)  # Herlev's cytoplasm leaves the nucleus out
            cv2.imwrite(str(root / name / "1C.png"), cell)
            cv2.imwrite(str(root / name / "1N.png"), nucleus)
        try:
            samples = read_every_cell(root)
        except UserError as error:
            assert str(error).startswith(str(root / "bad")), error
            return
        assert "wrong_size" not in (cell_fault, nucleus_fault)
        for sample in samples:
            assert_a_plausible_cell(sample)


@settings(max_examples=hostile.examples(40))
@given(hostile.polygon_text, hostile.polygon_text, st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(["cropped", "clusters"]))
@example("1e39,1\n2,2\n3,1\n", "", 20, 20, "clusters")  # float32 overflow, then a crop box of garbage integers
@example("1,1\n1,1\n1,1\n", "", 20, 20, "cropped")  # a one-pixel cell
def test_generated_polygon_files_give_a_plausible_cell_or_one_line(cyt_text, nuc_text, height, width, source):
    """SIPaKMeD boundary files holding anything: numbers, garbage, NaN, huge values, points on a line, bytes."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "sipakmed"
        good = "2,2\n{w},2\n{w},{h}\n2,{h}\n".format(w=max(width - 3, 3), h=max(height - 3, 3))
        for name, cyt, nuc in (("im_Bad", cyt_text, nuc_text), ("im_Good", good, "")):
            inner = root / name / name
            (inner / "CROPPED").mkdir(parents=True)
            for image in (inner / "001.bmp", inner / "CROPPED" / "001_01.bmp"):
                cv2.imwrite(str(image), np.full((max(height, 8), max(width, 8), 3), 200, np.uint8))
            for cyt_file, nuc_file in (("001_cyt01.dat", "001_nuc01.dat"), ("CROPPED/001_01_cyt.dat", "CROPPED/001_01_nuc.dat")):
                (inner / cyt_file).write_text(cyt, encoding="utf-8")
                if nuc:
                    (inner / nuc_file).write_text(nuc, encoding="utf-8")
        try:
            samples = read_every_cell(root, sipakmed_source=source)
        except UserError as error:
            assert str(error).startswith(str(root / "im_Bad")), error
            return
        for sample in samples:
            assert_a_plausible_cell(sample)
