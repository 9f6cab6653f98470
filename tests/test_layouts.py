"""Behaviour of tools/layouts.py: .dat polygons, the three layouts, groups, crops and their errors."""
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from cric_data import FIELDS, make_cric_root
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tools.data_loader import load_sample
from tools.demo_data import SIPAKMED_CLASSES
from tools.layouts import (
    CLUSTER_CROP_MARGIN,
    LAYOUTS,
    CellRecord,
    detect_layout,
    normal_class_names,
    read_dat_polygon,
    read_records,
)
from tools.inputs import mark_output_dir
from tools.points import BETHESDA_CLASSES, centred_box
from tools.splits import assign_splits
from utils.errors import UserError

# ---------------------------------------------------------------- .dat polygons

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_dat_plain_scientific_spaces_and_blank_lines(tmp_path):
    text = "\n  1.5,2.25\n3.0E+01, 4.5e-01\n\n  5 ,  6  \n7.25e0,\t8\n\n\n"
    points = read_dat_polygon(write(tmp_path / "001_cyt01.dat", text))
    assert points.dtype == np.float32 and points.shape == (4, 2)
    assert np.allclose(points, [[1.5, 2.25], [30.0, 0.45], [5, 6], [7.25, 8]])


def test_dat_windows_line_endings_and_negative_values(tmp_path):
    points = read_dat_polygon(write(tmp_path / "a.dat", "-1.5,2\r\n3,-4.0\r\n5,6\r\n"))
    assert np.allclose(points, [[-1.5, 2], [3, -4], [5, 6]])


@pytest.mark.parametrize("text,line", [
    ("1,2\n3,4\nhello\n5,6\n", 3),
    ("1,2\n\n3;4\n5,6\n", 3),  # blank lines still count in the line number
    ("1,2\n3,4,5\n5,6\n", 2),
    ("1,2\n3\n5,6\n", 2),
])
def test_dat_garbage_line_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path / "007_nuc02.dat", text)
    with pytest.raises(UserError, match=rf"007_nuc02\.dat:{line}:"):
        read_dat_polygon(path)


@pytest.mark.parametrize("bad", ["nan,1", "1,inf", "-inf,2", "NaN, NaN"])
def test_dat_non_finite_point_names_file_and_line(tmp_path, bad):
    path = write(tmp_path / "x.dat", f"1,2\n{bad}\n5,6\n7,8\n")
    with pytest.raises(UserError, match=r"x\.dat:2: .*finite"):
        read_dat_polygon(path)


@pytest.mark.parametrize("text", ["", "\n\n", "1,2\n", "1,2\n3,4\n\n"])
def test_dat_fewer_than_three_points(tmp_path, text):
    path = write(tmp_path / "short.dat", text)
    with pytest.raises(UserError, match=r"short\.dat.*at least 3 points"):
        read_dat_polygon(path)


def test_dat_point_beyond_any_image(tmp_path):
    """1e39 overflowed float32 to inf (with a RuntimeWarning), 1e20 a crop box's integers."""
    for value in ("1e39", "1e20"):
        path = write(tmp_path / "far.dat", f"1,2\n{value},3\n4,5\n")
        with pytest.raises(UserError, match=r"far\.dat:2: point .* lies beyond any image; fix or remove the file"):
            read_dat_polygon(path)


@pytest.mark.parametrize("text", ["1,1\n1,1\n1,1\n", "0,0\n5,5\n10,10\n", "0,0\n0.4,0\n0,0.4\n"])
def test_dat_polygon_enclosing_less_than_a_pixel(tmp_path, text):
    """These were read as cells of one pixel or a line of pixels."""
    with pytest.raises(UserError, match=r"flat\.dat: the polygon encloses less than a pixel"):
        read_dat_polygon(write(tmp_path / "flat.dat", text))


# ---------------------------------------------------------------- the sipakmed layout

def copy_demo(demo_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_root, tmp_path / "sipakmed"))


def test_sipakmed_cropped_records(demo_root):
    records, layout = read_records(demo_root)
    assert layout == "sipakmed" == detect_layout(demo_root)
    assert {r.label for r in records} == set(SIPAKMED_CLASSES)
    crops = sorted(demo_root.glob("im_*/im_*/CROPPED/*.bmp"))
    assert len(records) == len(crops)
    assert [r.sample_id for r in records] == sorted(r.sample_id for r in records)
    assert len({r.sample_id for r in records}) == len(records)
    for record in records:
        assert record.image_path.parent.name == "CROPPED" and record.crop_box is None
        assert record.has_masks and len(record.cyt_polygons) == 1 and len(record.nuc_polygons) == 1
        cluster = record.image_path.stem.split("_")[0]
        assert record.group == f"{record.label}/{cluster}"
        assert record.sample_id == record.image_path.relative_to(demo_root).with_suffix("").as_posix()


def test_sipakmed_clusters_records(demo_root):
    records, layout = read_records(demo_root, sipakmed_source="clusters")
    assert layout == "sipakmed"
    cyt_files = sorted(demo_root.glob("im_*/im_*/*_cyt*.dat"))
    assert len(records) == len(cyt_files)
    for record in records:
        assert record.image_path.parent.parent.name == record.label  # the cluster image itself
        assert record.crop_box is not None
        x0, y0, x1, y1 = record.crop_box
        assert 0 <= x0 < x1 and 0 <= y0 < y1
        # polygons are moved into the crop; the margin is kept where the image border allows
        points = record.cyt_polygons[0]
        assert points.min() >= 0
        assert points[:, 0].min() >= min(CLUSTER_CROP_MARGIN - 1, x0 + points[:, 0].min())
        assert record.group == f"{record.label}/{record.image_path.stem}"
        assert len(record.nuc_polygons) == 1  # each demo cell has one nucleus, found by its centroid


def test_sipakmed_groups_are_class_and_cluster(demo_root):
    cropped, _ = read_records(demo_root)
    clusters, _ = read_records(demo_root, sipakmed_source="clusters")
    count_cropped = Counter(r.group for r in cropped)
    assert count_cropped == Counter(r.group for r in clusters)
    # one group per cluster image, several cells in some of them, and the same cluster number in two
    # classes is two groups
    assert len(count_cropped) == len(list(demo_root.glob("im_*/im_*/*.bmp")))
    assert max(count_cropped.values()) > 1
    assert {f"{c}/001" for c in SIPAKMED_CLASSES} <= set(count_cropped)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_cropped_and_cluster_masks_agree_for_the_same_cell(demo_root):
    """The demo crops are the cluster bounding box + margin, so both sources describe the same pixels."""
    cropped = {r.sample_id.replace("CROPPED/", ""): r for r in read_records(demo_root)[0]}
    clusters = {r.sample_id: r for r in read_records(demo_root, sipakmed_source="clusters")[0]}
    assert set(cropped) == set(clusters)
    for sample_id in sorted(cropped)[::3]:
        a, b = load_sample(cropped[sample_id]), load_sample(clusters[sample_id])
        assert a.image.shape == b.image.shape, sample_id
        assert np.array_equal(a.image, b.image), sample_id
        assert iou(a.cell_mask, b.cell_mask) > 0.95, sample_id
        assert iou(a.nuc_mask, b.nuc_mask) > 0.9, sample_id
        assert abs(int(a.cell_mask.sum()) - int(b.cell_mask.sum())) <= 0.02 * a.cell_mask.sum()


def test_sipakmed_masks_are_whole_cells_containing_the_nucleus(demo_root):
    records, _ = read_records(demo_root)
    for record in records[:6]:
        sample = load_sample(record)
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        assert sample.cell_mask.shape == sample.nuc_mask.shape == sample.image.shape[:2]
        assert sample.cell_mask.dtype == bool and sample.nuc_mask.dtype == bool
        assert sample.nuc_mask.any() and (sample.nuc_mask <= sample.cell_mask).all()
        assert sample.nuc_mask.sum() < sample.cell_mask.sum() < sample.cell_mask.size
        # the drawn nucleus is darker than the rest of the cell
        gray = sample.image.mean(axis=2)
        assert gray[sample.nuc_mask].mean() < gray[sample.cell_mask & ~sample.nuc_mask].mean()


def test_cluster_crop_is_clipped_at_the_image_border(tmp_path):
    root = tmp_path / "data"
    folder = root / "im_A" / "im_A"
    folder.mkdir(parents=True)
    image = np.full((50, 60, 3), 200, np.uint8)
    cv2.imwrite(str(folder / "001.bmp"), image)
    write(folder / "001_cyt01.dat", "0,0\n20,0\n20,15\n0,15\n")  # touches the top-left corner
    write(folder / "001_cyt02.dat", "45,35\n59,35\n59,49\n45,49\n")  # touches the bottom-right corner
    write(folder / "001_nuc01.dat", "5,5\n8,5\n8,8\n5,8\n")
    assert detect_layout(root) == "sipakmed"  # cluster .dat files alone, no CROPPED/
    records, _ = read_records(root, sipakmed_source="clusters")
    assert [r.sample_id for r in records] == ["im_A/im_A/001_01", "im_A/im_A/001_02"]
    first, second = (load_sample(r) for r in records)
    assert first.image.shape[:2] == (15 + CLUSTER_CROP_MARGIN + 1, 20 + CLUSTER_CROP_MARGIN + 1)
    assert first.cell_mask[:16, :21].all() and first.nuc_mask[5:9, 5:9].all()
    assert second.image.shape[:2] == (50 - 25, 60 - 35)  # clipped at the far edges
    assert second.cell_mask.shape == second.image.shape[:2] and second.cell_mask[-1, -1]
    assert not second.nuc_mask.any()  # no nucleus file whose centroid lies in cell 02


def test_cropped_dat_in_cluster_coordinates_suggests_clusters_source(tmp_path, demo_root):
    root = copy_demo(demo_root, tmp_path)
    folder = root / "im_Parabasal" / "im_Parabasal"
    # replace a crop's boundary by its cluster-image boundary, as a distribution with absolute coordinates would
    shutil.copy(folder / "002_cyt01.dat", folder / "CROPPED" / "002_01_cyt.dat")
    records, _ = read_records(root)  # reading succeeds; the problem shows when the masks are drawn
    record = next(r for r in records if r.sample_id == "im_Parabasal/im_Parabasal/CROPPED/002_01")
    with pytest.raises(UserError, match=r"002_01_cyt\.dat.*outside.*--sipakmed-source clusters"):
        load_sample(record)
    # the other cells are untouched
    assert load_sample(next(r for r in records if r.sample_id == "im_Parabasal/im_Parabasal/CROPPED/001_01")).cell_mask.any()


def test_cropped_image_without_its_cyt_dat(tmp_path, demo_root):
    root = copy_demo(demo_root, tmp_path)
    (root / "im_Metaplastic" / "im_Metaplastic" / "CROPPED" / "001_01_cyt.dat").unlink()
    with pytest.raises(UserError, match=r"001_01\.bmp.*001_01_cyt\.dat"):
        read_records(root)


def test_bad_dat_in_dataset_names_the_file(tmp_path, demo_root):
    root = copy_demo(demo_root, tmp_path)
    write(root / "im_Koilocytotic" / "im_Koilocytotic" / "CROPPED" / "001_01_nuc.dat", "1,2\n3,x\n5,6\n")
    with pytest.raises(UserError, match=r"001_01_nuc\.dat:2:"):
        read_records(root)


def test_crop_without_nucleus_file_has_an_empty_nucleus(tmp_path, demo_root):
    root = copy_demo(demo_root, tmp_path)
    (root / "im_Dyskeratotic" / "im_Dyskeratotic" / "CROPPED" / "001_01_nuc.dat").unlink()
    records, _ = read_records(root)
    record = next(r for r in records if r.sample_id == "im_Dyskeratotic/im_Dyskeratotic/CROPPED/001_01")
    sample = load_sample(record)
    assert record.nuc_polygons == [] and sample.cell_mask.any() and not sample.nuc_mask.any()


def test_sipakmed_without_inner_folder(tmp_path):
    root = tmp_path / "flat"
    (root / "im_A" / "CROPPED").mkdir(parents=True)
    cv2.imwrite(str(root / "im_A" / "CROPPED" / "004_01.bmp"), np.full((20, 20, 3), 128, np.uint8))
    write(root / "im_A" / "CROPPED" / "004_01_cyt.dat", "2,2\n17,2\n17,17\n2,17\n")
    records, layout = read_records(root)
    assert layout == "sipakmed" and [r.group for r in records] == ["im_A/004"]


# ---------------------------------------------------------------- the paired (Herlev) layout

def test_paired_records_and_whole_cell_masks(tmp_path, make_paired):
    root = make_paired(tmp_path / "herlev", classes=("carcinoma", "normal"), cells_per_class=3)
    assert detect_layout(root) == "paired"
    records, layout = read_records(root)
    assert layout == "paired" and len(records) == 6
    assert [r.sample_id for r in records] == [f"{c}/{n}" for c in ("carcinoma", "normal") for n in (1, 2, 3)]
    for record in records:
        assert record.image_path.suffix == ".BMP"
        assert record.nuc_mask_path.name == f"{record.image_path.stem}N.png"
        assert record.cyt_mask_path.name == f"{record.image_path.stem}C.png"
        assert record.group == record.sample_id  # every cell is its own group
        sample = load_sample(record)
        assert sample.cell_mask.shape == sample.nuc_mask.shape == sample.image.shape[:2] == (40, 56)
        stored_cyt = cv2.imread(str(record.cyt_mask_path), cv2.IMREAD_GRAYSCALE) > 0
        stored_nuc = cv2.imread(str(record.nuc_mask_path), cv2.IMREAD_GRAYSCALE) > 0
        assert not (stored_cyt & stored_nuc).any()  # Herlev stores the cytoplasm without the nucleus
        # the project's cytoplasm target is the whole cell: C | N
        assert np.array_equal(sample.cell_mask, stored_cyt | stored_nuc)
        assert np.array_equal(sample.nuc_mask, stored_nuc)
        assert tuple(sample.image[20, 28]) == (60, 40, 90)  # nucleus colour, RGB order


def test_paired_custom_suffixes(tmp_path, make_paired):
    root = make_paired(tmp_path / "data", cells_per_class=2)
    for path in list(root.rglob("*N.png")):
        path.rename(path.with_name(path.name.replace("N.png", "_nuc.png")))
    for path in list(root.rglob("*C.png")):
        path.rename(path.with_name(path.name.replace("C.png", "_cyt.png")))
    records, layout = read_records(root, nuc_suffix="_nuc.png", cyt_suffix="_cyt.png")
    assert layout == "paired" and len(records) == 4
    assert load_sample(records[0]).nuc_mask.any()


def test_paired_missing_mask_is_a_user_error(tmp_path, make_paired):
    root = make_paired(tmp_path / "herlev")
    (root / "normal" / "2C.png").unlink()
    with pytest.raises(UserError, match=r"2\.BMP.*missing mask 2C\.png"):
        read_records(root)


def test_paired_mask_of_another_size_is_a_user_error(tmp_path, make_paired):
    root = make_paired(tmp_path / "herlev")
    cv2.imwrite(str(root / "abnormal" / "1N.png"), np.zeros((10, 10), np.uint8))
    records, _ = read_records(root)
    with pytest.raises(UserError, match=r"1N\.png.*10x10.*56x40"):
        load_sample(records[0])


@pytest.mark.parametrize("layout_maker", ["paired", "sipakmed"])
def test_empty_class_folder_is_a_user_error(tmp_path, demo_root, make_paired, layout_maker):
    if layout_maker == "paired":
        root = make_paired(tmp_path / "herlev")
        (root / "im_Empty").mkdir()
    else:
        root = copy_demo(demo_root, tmp_path)
        (root / "im_Empty" / "im_Empty").mkdir(parents=True)
    with pytest.raises(UserError, match=r"class folder\(s\) im_Empty hold no usable images"):
        read_records(root)


# ---------------------------------------------------------------- labels only

def test_labels_only_layout(tmp_path):
    root = tmp_path / "labels"
    for name, count in (("a", 2), ("b", 3)):
        (root / name).mkdir(parents=True)
        for index in range(count):
            cv2.imwrite(str(root / name / f"cell{index}.jpg"), np.full((12, 18, 3), 50 * index, np.uint8))
    (root / "a" / "notes.txt").write_text("not an image")
    assert detect_layout(root) == "labels"
    records, layout = read_records(root)
    assert layout == "labels" and len(records) == 5
    assert Counter(r.label for r in records) == {"a": 2, "b": 3}
    assert all(not r.has_masks and r.group == r.sample_id for r in records)
    sample = load_sample(records[0], mask_provider=None)
    assert sample.image.shape == (12, 18, 3) and sample.cell_mask is None and sample.nuc_mask is None
    with pytest.raises(UserError, match="no ground-truth masks.*--mask-source predicted"):
        load_sample(records[0])


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


# ---------------------------------------------------------------- cric

def test_cric_cells_one_window_per_point_grouped_by_field(tmp_path):
    root = make_cric_root(tmp_path / "cric")
    assert detect_layout(root) == "cric"
    records, layout = read_records(root)
    assert layout == "cric" and len(records) == sum(len(cells) for _, cells in FIELDS.values())
    by_id = {r.sample_id: r for r in records}
    cell = by_id["a/1"]  # NILM at (40, 40) of a 160 x 120 field, window 128: shifted right and down to stay inside
    assert (cell.label, cell.group, cell.crop_box, cell.image_path) == ("NILM", "a", (0, 0, 128, 120), root / "a.png")
    assert by_id["c/6"].crop_box == (0, 6, 128, 134)  # HSIL at (60, 70) of 200 x 150: inside on y, shifted on x
    assert by_id["c/7"].crop_box == (72, 0, 200, 128)  # at the right border: ends at the image's edge
    assert by_id["c/7"].load_image().shape == (128, 128, 3)
    assert by_id["a/1"].load_image().shape == (120, 128, 3)  # a field lower than the window: its whole height
    assert not cell.has_masks and {r.group for r in records} == {"a", "b", "c", "d"}


def test_cric_window_centred_where_the_image_allows():
    assert centred_box((500, 400), (1376, 1020), 128) == (436, 336, 564, 464)
    assert centred_box((1370, 1015), (1376, 1020), 128) == (1248, 892, 1376, 1020)
    assert centred_box((3, 500), (1376, 1020), 90) == (0, 455, 90, 545)


def test_cric_split_keeps_each_field_in_one_split(tmp_path):
    records, _ = read_records(make_cric_root(tmp_path / "cric"))
    split_of_group = assign_splits(records, (0.5, 0.25, 0.25), seed=0)
    assert set(split_of_group) == {"a", "b", "c", "d"}


def test_nilm_is_the_normal_bethesda_class():
    assert normal_class_names(sorted(BETHESDA_CLASSES)) == ["NILM"]


def test_cells_of_one_field_share_its_decoding_but_see_a_changed_file(tmp_path):
    root = make_cric_root(tmp_path / "cric")
    records = [r for r in read_records(root)[0] if r.group == "a"]
    first = records[0].load_image()
    first[:] = 0  # a crop is the caller's own copy: the field kept for the next cells is untouched
    assert records[0].load_image().any()
    cv2.imwrite(str(root / "a.png"), np.zeros((120, 160, 3), np.uint8))
    os.utime(root / "a.png", ns=(1, 1))  # another stamp, even where the clock is coarse
    assert not records[1].load_image().any()
