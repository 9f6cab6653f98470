"""tools/layouts/points.py: reading CRIC's classifications.csv and its fields, refusing every bad row before any work;
the cric cells layout (one window per point, grouped by field)."""
import os
import shutil

import cv2
import numpy as np
import pytest
from cric_data import FIELDS, csv_rows, make_cric_root, write_csv

from tools.layouts.cells import detect_layout, normal_class_names, read_records
from tools.layouts.points import (
    BETHESDA_CLASSES,
    BETHESDA_GRADES,
    CELL_WINDOW_PX,
    centred_box,
    classifier_window,
    is_points_root,
    read_field_points,
)
from tools.splits import assign_splits
from utils.errors import UserError


@pytest.fixture(scope="module")
def cric_root(tmp_path_factory):
    return make_cric_root(tmp_path_factory.mktemp("cric") / "cric")


@pytest.fixture
def editable_root(cric_root, tmp_path):
    return shutil.copytree(cric_root, tmp_path / "cric")


def test_reads_every_field_once_sorted_with_short_names(cric_root):
    fields = read_field_points(cric_root)
    assert [f.field_id for f in fields] == ["a", "b", "c", "d"]
    a = fields[0]
    assert a.image_path == cric_root / "a.png" and a.cell_ids == ("1", "2", "3") and a.size == (160, 120)
    assert a.labels == ("NILM", "LSIL", "NILM")  # "Negative for intraepithelial lesion" becomes NILM
    assert a.points.dtype == np.float32 and a.points.tolist() == [[40, 40], [110, 60], [5, 115]]
    assert fields[2].size == (200, 150) and fields[2].labels == ("HSIL", "SCC", "ASC-US")  # a JPEG of another size
    assert sum(len(f.points) for f in fields) == sum(len(cells) for _, cells in FIELDS.values())


def test_is_points_root(cric_root, tmp_path):
    assert is_points_root(cric_root) and not is_points_root(tmp_path)


def test_grades_cover_the_classes():
    assert set(BETHESDA_GRADES) == set(BETHESDA_CLASSES)
    assert [BETHESDA_GRADES[c] for c in BETHESDA_CLASSES] == ["NILM", "low", "low", "high", "high", "high"]


def test_short_names_and_any_case_are_accepted(editable_root):
    rows = csv_rows()
    rows[0][4], rows[1][4] = "NILM", "lsil"
    write_csv(editable_root / "classifications.csv", rows)
    assert read_field_points(editable_root)[0].labels[:2] == ("NILM", "LSIL")


def test_extra_columns_and_a_bom_are_fine(editable_root):
    path = editable_root / "classifications.csv"
    text = path.read_text().splitlines()
    lines = [text[0] + ",note"] + [line + ",x" for line in text[1:]]
    path.write_text("\ufeff" + "\n".join(lines) + "\n")
    assert len(read_field_points(editable_root)) == 4


def edited(root, change):
    rows = csv_rows()
    change(rows)
    write_csv(root / "classifications.csv", rows)
    return root


@pytest.mark.parametrize("change, expected", [
    (lambda rows: rows[1].__setitem__(4, "LSIL-ish"), r"classifications.csv:3 \(image a.png, cell 2\): unknown Bethesda "
                                                      r"class 'LSIL-ish'; did you mean LSIL\?"),
    (lambda rows: rows[2].__setitem__(1, "missing.png"), r"classifications.csv:4 .*image 'missing.png' does not exist.*"
                                                         r"add the image or remove its rows"),
    (lambda rows: rows[0].__setitem__(1, "../a.png"), r"classifications.csv:2 .*image '../a.png' lies outside"),
    (lambda rows: rows[0].__setitem__(5, "12,5"), r"classifications.csv:2 .*nucleus_x '12,5' is not a number"),
    (lambda rows: rows[0].__setitem__(6, "nan"), r"nucleus_y 'nan' is not a number"),
    (lambda rows: rows[0].__setitem__(6, ""), r"nucleus_y '' is not a number"),
    (lambda rows: rows[0].__setitem__(5, "161"), r"classifications.csv:2 .*point \(161, 40\) lies outside its 160x120 image"),
    (lambda rows: rows[0].__setitem__(6, "-1"), r"point \(40, -1\) lies outside"),
    (lambda rows: rows.append(list(rows[0][:3]) + ["99"] + list(rows[0][4:])),
     r"classifications.csv:\d+ .*point \(40, 40\) of a.png already given on line 2; one cell per row"),
    (lambda rows: rows[4].__setitem__(3, "1"), r"classifications.csv:6 .*cell_id 1 already given on line 2"),
    (lambda rows: rows[0].__setitem__(3, ""), r"classifications.csv:2 .*no cell_id"),
])
def test_bad_rows_are_refused_in_one_line(editable_root, change, expected):
    with pytest.raises(UserError, match=expected) as error:
        read_field_points(edited(editable_root, change))
    assert "\n" not in str(error.value)


def test_missing_columns_are_named(editable_root):
    csv_text = "image_id,image_filename,cell_id,bethesda_system,x,y\n1,a.png,1,LSIL,4,4\n"
    (editable_root / "classifications.csv").write_text(csv_text)
    with pytest.raises(UserError, match=r"missing column\(s\) image_doi, nucleus_x, nucleus_y"):
        read_field_points(editable_root)


def test_a_csv_without_rows_or_at_all(editable_root, tmp_path):
    write_csv(editable_root / "classifications.csv", [])
    with pytest.raises(UserError, match="no annotated cell"):
        read_field_points(editable_root)
    with pytest.raises(UserError, match="no classifications.csv in this folder"):
        read_field_points(tmp_path)


def test_an_unreadable_image_is_named(editable_root):
    (editable_root / "b.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"b.png: cannot read this image"):
        read_field_points(editable_root)


def test_an_image_in_a_sub_folder_keeps_its_path_as_field_id(editable_root):
    (editable_root / "sub").mkdir()
    (editable_root / "a.png").rename(editable_root / "sub" / "a.png")
    rows = csv_rows()
    for row in rows:
        row[1] = "sub/a.png" if row[1] == "a.png" else row[1]
    write_csv(editable_root / "classifications.csv", rows)
    fields = read_field_points(editable_root)
    assert [f.field_id for f in fields] == ["b", "c", "d", "sub/a"]
    assert fields[-1].image_path == editable_root / "sub" / "a.png"


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


def test_a_classifier_in_bethesdas_classes_sees_cells_in_point_windows():
    assert classifier_window(sorted(BETHESDA_CLASSES)) == CELL_WINDOW_PX
    assert classifier_window(["NILM", "HSIL"]) == CELL_WINDOW_PX
    assert classifier_window(["normal_superficiel", "severe_dysplastic"]) == 0  # Herlev's: cut by the outline
    assert classifier_window(["NILM", "im_Parabasal"]) == 0 and classifier_window(None) == 0
