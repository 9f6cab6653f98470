"""Behaviour of tools/layouts/files.py: .dat polygons, read as SIPaKMeD writes them, and their errors."""
from pathlib import Path

import numpy as np
import pytest

from tools.layouts.files import read_dat_polygon
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
