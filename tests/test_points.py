"""tools/points.py: reading CRIC's classifications.csv and its fields, and refusing every bad row before any work."""
import shutil

import numpy as np
import pytest

from cric_data import FIELDS, csv_rows, make_cric_root, write_csv
from tools.points import BETHESDA_CLASSES, BETHESDA_GRADES, is_points_root, read_field_points
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
    (editable_root / "classifications.csv").write_text("image_id,image_filename,cell_id,bethesda_system,x,y\n1,a.png,1,LSIL,4,4\n")
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
