"""tools/fields/make_slide.py: a pyramidal JPEG slide whose manifest puts every field exactly where it lies."""
import json

import cv2
import numpy as np
import pytest

from tools.fields import make_slide as maker
from tools.fields.readers import open_slide


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields")
    rng = np.random.default_rng(1)
    paths = []
    for index, shape in enumerate([(120, 200), (150, 90)]):
        image = np.full((*shape, 3), 228, np.uint8)
        inside = rng.integers(60, 200, (shape[0] - 40, shape[1] - 40, 3)).astype(np.uint8)
        image[20:-20, 20:-20] = cv2.GaussianBlur(inside, (9, 9), 3)  # textured, as cells are: JPEG keeps it
        paths.append(folder / f"field{index}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


def test_every_field_lies_where_the_manifest_says(fields, tmp_path):
    manifest = maker.make_slide(fields, tmp_path / "slide.tiff", side=1024, count=5, mpp=0.5, quality=100, seed=3)
    assert json.loads((tmp_path / "slide.json").read_text()) == manifest
    reader = open_slide(tmp_path / "slide.tiff")
    assert reader.shape == (1024, 1024) and reader.mpp == pytest.approx(0.5) and reader.downsamples == (1.0, 4.0, 16.0)
    assert len(manifest["fields"]) == 5 and manifest["glass_rgb"] == [228, 228, 228]
    boxes = []
    for placed in manifest["fields"]:
        field = cv2.cvtColor(cv2.imread(placed["image"]), cv2.COLOR_BGR2RGB)
        assert (placed["height"], placed["width"]) == field.shape[:2] and placed["y"] % 16 == 0 == placed["x"] % 16
        region = reader.read(placed["y"], placed["x"], placed["y"] + placed["height"], placed["x"] + placed["width"])
        assert np.abs(region.astype(int) - field).mean() < 4  # JPEG, even at quality 100
        boxes.append((placed["y"], placed["x"], placed["y"] + placed["height"], placed["x"] + placed["width"]))
    for i, a in enumerate(boxes):  # no two fields overlap
        assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for b in boxes[i + 1:])


def test_coverage_sets_the_number_of_fields_and_no_mpp_writes_no_scale(fields, tmp_path):
    manifest = maker.make_slide(fields[:1], tmp_path / "slide.tiff", side=2048, coverage=0.05, mpp=0, seed=0)
    assert len(manifest["fields"]) == int(np.ceil(0.05 * 2048 ** 2 / (120 * 200)))
    assert manifest["mpp"] is None and open_slide(tmp_path / "slide.tiff").mpp is None


def test_too_many_fields_for_the_slide_is_one_line(fields, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        maker.main([str(fields[0]), "--out", str(tmp_path / "slide.tiff"), "--side", "512", "--count", "20"])
    assert stop.value.code == 2 and "do not fit" in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [(["--out", "slide.png"], "a slide is a TIFF"),
                                         (["--out", "slide.tiff", "--coverage", "2"], "argument --coverage: 2 is out of range"),
                                         (["--out", "slide.tiff", "--count", "0"], "argument --count: 0 is out of range"),
                                         (["--out", "slide.tiff", "--mpp", "-1"], "argument --mpp: -1 is out of range")])
def test_a_flag_out_of_range_stops_at_the_command_line(fields, tmp_path, capsys, flags, says):
    flags = [str(tmp_path / f) if f.startswith("slide.") else f for f in flags]
    with pytest.raises(SystemExit) as stop:
        maker.main([str(fields[0]), "--side", "512", *flags])
    assert stop.value.code == 2 and says in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_an_out_that_cannot_be_written_is_one_line(fields, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as stop:
        maker.main([str(fields[0]), "--side", "512", "--out", str(tmp_path / "afile" / "slide.tiff")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "slide.tiff: cannot be written" in err
