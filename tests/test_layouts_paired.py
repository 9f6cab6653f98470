"""Behaviour of tools/layouts/paired.py: the paired (Herlev) and labels-only layouts and their errors."""
from collections import Counter

import cv2
import numpy as np
import pytest
from test_layouts_sipakmed import copy_demo

from tools.data_loader import load_sample
from tools.layouts.cells import detect_layout, read_records
from utils.errors import UserError

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
