"""Behaviour of tools/layouts/sipakmed.py: cropped cells and cluster images, groups, crops and their errors."""
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_layouts_files import write

from tools.data_loader import load_sample
from tools.demo_data import SIPAKMED_CLASSES
from tools.layouts.cells import detect_layout, read_records
from tools.layouts.sipakmed import CLUSTER_CROP_MARGIN
from utils.errors import UserError

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
