"""Behaviour of tools/masks.py: ground-truth masks and their plausibility, exported masks and masks.json."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools.layouts.cells import read_records
from tools.layouts.record import CellRecord
from tools.masks import (
    MASKS_MANIFEST,
    PredictedMaskFiles,
    export_masks,
    ground_truth_masks,
    mask_paths,
    write_mask_pairs,
)
from utils.errors import UserError


@pytest.fixture
def paired_copy(paired_root, tmp_path) -> Path:
    return Path(shutil.copytree(paired_root, tmp_path / "herlev"))


def image_shape(record: CellRecord):
    return record.load_image().shape[:2]


# ---------------------------------------------------------------- ground truth

def test_ground_truth_masks_union_for_polygons():
    cyt = np.array([(2, 2), (9, 2), (9, 9), (2, 9)], np.float32)
    nuc = np.array([(8, 8), (11, 8), (11, 11), (8, 11)], np.float32)  # sticks out of the cell polygon
    record = CellRecord("x", Path("x.bmp"), "a", "g", cyt_polygons=[cyt], nuc_polygons=[nuc],
                        polygon_files=(Path("x_cyt.dat"), Path("x_nuc.dat")))
    cell, nucleus = ground_truth_masks(record, (14, 14))
    assert (nucleus <= cell).all() and cell[10, 10] and cell.sum() == 64 + 16 - 4


def square_record(cyt_corners, nuc_corners) -> CellRecord:
    square = lambda x0, y0, x1, y1: np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32)  # noqa: E731
    return CellRecord("x", Path("x.bmp"), "a", "g", cyt_polygons=[square(*cyt_corners)],
                      nuc_polygons=[square(*nuc_corners)] if nuc_corners else [],
                      polygon_files=(Path("x_cyt.dat"), Path("x_nuc.dat")))


def test_a_cell_mask_covering_the_whole_image_is_refused():
    with pytest.raises(UserError, match=r"x_cyt\.dat: the cell mask covers 100% of its image.*inverted"):
        ground_truth_masks(square_record((0, 0, 19, 19), (8, 8, 11, 11)), (20, 20))
    cell, _ = ground_truth_masks(square_record((1, 1, 18, 18), (8, 8, 11, 11)), (20, 20))  # 81 % is a cell
    assert cell.mean() == pytest.approx(18 * 18 / 400)


def test_a_nucleus_apart_from_its_cell_is_refused():
    with pytest.raises(UserError, match=r"x_cyt\.dat: the nucleus lies outside its cell.*different cells"):
        ground_truth_masks(square_record((0, 0, 8, 8), (20, 20, 25, 25)), (30, 30))
    cell, nucleus = ground_truth_masks(square_record((0, 0, 12, 12), (4, 4, 7, 7)), (30, 30))  # inside: fine
    assert nucleus.any() and (nucleus <= cell).all()


def test_an_empty_nucleus_is_data_and_an_empty_cell_is_not(paired_copy):
    records = {r.sample_id: r for r in read_records(paired_copy)[0]}
    record = records["abnormal/1"]
    assert cv2.imwrite(str(record.nuc_mask_path), np.zeros(image_shape(record), np.uint8))
    cell, nucleus = ground_truth_masks(record, image_shape(record))
    assert cell.any() and not nucleus.any()
    assert cv2.imwrite(str(record.cyt_mask_path), np.zeros(image_shape(record), np.uint8))
    with pytest.raises(UserError, match=r"1C\.png: the cell mask is empty"):
        ground_truth_masks(record, image_shape(record))


def test_labels_only_cells_have_no_ground_truth():
    with pytest.raises(UserError, match=r"x\.bmp: this cell has no ground-truth masks; use --mask-source predicted"):
        ground_truth_masks(CellRecord("x", Path("x.bmp"), "a", "g"), (4, 4))


# ---------------------------------------------------------------- exported masks

def export_ground_truth(records, masks_dir: Path) -> PredictedMaskFiles:
    write_mask_pairs(masks_dir, [(r, *ground_truth_masks(r, image_shape(r))) for r in records])
    return PredictedMaskFiles(masks_dir)


def test_exported_masks_read_back_as_written(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    provider = export_ground_truth(records, tmp_path / "masks")
    assert provider.missing(records) == []
    for record in records:
        cyt_path, nuc_path = mask_paths(tmp_path / "masks", record)
        stored = cv2.imread(str(cyt_path), cv2.IMREAD_UNCHANGED)
        assert stored.shape == image_shape(record) and set(np.unique(stored)) <= {0, 255}
        for read, truth in zip(provider(record, image_shape(record)), ground_truth_masks(record, image_shape(record))):
            assert np.array_equal(read, truth)
    manifest = json.loads((tmp_path / "masks" / MASKS_MANIFEST).read_text())
    assert set(manifest["image_sha1"]) == {r.sample_id for r in records}


def test_masks_without_a_manifest_entry_count_as_missing(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    masks_dir = tmp_path / "masks"
    export_ground_truth(records, masks_dir)
    assert PredictedMaskFiles(tmp_path / "elsewhere").missing(records[:2]) == records[:2]  # no files at all
    mask_paths(masks_dir, records[0])[1].unlink()
    assert PredictedMaskFiles(masks_dir).missing(records) == records[:1]
    (masks_dir / MASKS_MANIFEST).unlink()  # masks exported before masks.json: their source is unknown
    assert PredictedMaskFiles(masks_dir).missing(records) == records
    export_ground_truth(records[1:3], masks_dir)  # a later export adds entries, keeping the earlier ones
    export_ground_truth(records[3:], masks_dir)
    assert PredictedMaskFiles(masks_dir).missing(records) == records[:1]


def test_an_image_rewritten_after_export_is_refused(paired_copy, tmp_path):
    records, _ = read_records(paired_copy)
    provider = export_ground_truth(records, tmp_path / "masks")
    record = records[0]
    stamp = record.image_path.stat().st_mtime_ns
    assert cv2.imwrite(str(record.image_path), 255 - cv2.imread(str(record.image_path)))
    os.utime(record.image_path, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(UserError) as error:
        provider(record, image_shape(record))
    message = str(error.value)
    assert message.startswith(str(record.image_path)) and "changed after its masks" in message
    assert "run main_segment.py again" in message
    provider(records[1], image_shape(records[1]))  # the other cells still read


class DiscMasks:
    """A stand-in for CellPipeline.masks: a centred disc as the cell, its middle as the nucleus."""

    def __init__(self):
        self.batches = []

    def masks(self, images):
        self.batches.append(len(images))
        out = []
        for image in images:
            cell = np.zeros(image.shape[:2], np.uint8)
            centre = (image.shape[1] // 2, image.shape[0] // 2)
            cv2.circle(cell, centre, min(centre) - 2, 1, -1)
            nucleus = np.zeros_like(cell)
            cv2.circle(nucleus, centre, 3, 1, -1)
            out.append((cell.astype(bool), nucleus.astype(bool)))
        return out


def test_export_masks_writes_every_cell_in_batches(paired_root, tmp_path):
    records, _ = read_records(paired_root)
    pipeline = DiscMasks()
    assert export_masks(pipeline, records, tmp_path / "masks", batch_size=5) == len(records)
    assert pipeline.batches == [5, 5, 2]
    provider = PredictedMaskFiles(tmp_path / "masks")
    assert provider.missing(records) == []
    cell, nucleus = provider(records[0], image_shape(records[0]))
    expected_cell, expected_nucleus = pipeline.masks([records[0].load_image()])[0]
    assert np.array_equal(cell, expected_cell) and np.array_equal(nucleus, expected_nucleus)
