"""benchmarks/field_speed.py: the field it builds from any image, the large TIFF, and every row on a tiny run."""
import json
import math
import subprocess
import sys

import numpy as np
from tiny_checkpoints import save_untrained_field_models

from benchmarks import field_speed
from tools.fields.readers import open_field
from utils.files import write_image


def gradient_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_field_is_tiled_from_the_sources_mirrored_at_every_seam():
    first, second = gradient_image(30, 40, 0), gradient_image(35, 50, 1)  # cut to 30 x 40, the smaller
    field = field_speed.tiled_field([first, second], 70, 100)
    assert field.shape == (70, 100, 3) and field.dtype == np.uint8
    np.testing.assert_array_equal(field[:30, :40], first)
    np.testing.assert_array_equal(field[:30, 40:80], second[:30, :40][:, ::-1])  # the next source, mirrored
    np.testing.assert_array_equal(field[30:60, :40], second[:30, :40][::-1])  # the row below, upside down
    one = field_speed.tiled_field([first], 60, 80)
    np.testing.assert_array_equal(one[:, 39], one[:, 40])  # a tile meets its own mirror image: no seam
    np.testing.assert_array_equal(one[29], one[30])


def test_the_big_tiff_is_the_field_tiled_and_read_by_regions(tmp_path):
    field = gradient_image(30, 40)
    path = field_speed.write_big_tiff(tmp_path / "big.tif", field, 100)
    read, shape, whole = open_field(path)
    assert shape == (100, 100) and whole is None  # mapped, not decoded: predict.py reads it block by block
    np.testing.assert_array_equal(read(0, 0, 100, 100), field_speed.tiled_field([field], 100, 100))


def test_the_sparse_big_tiff_is_glass_with_the_field_across_block_borders(tmp_path):
    field = gradient_image(30, 40)
    path = field_speed.write_big_tiff(tmp_path / "big.tif", field, 200, sparse=True, block=50)
    image = open_field(path)[0](0, 0, 200, 200)
    glass = np.percentile(field.reshape(-1, 3), 95, axis=0).astype(np.uint8)
    np.testing.assert_array_equal(image[0, 0], glass)
    for centre in (50, 150):  # every 2 blocks, centred on a block border
        np.testing.assert_array_equal(image[centre - 15:centre + 15, centre - 20:centre + 20], field)
    assert (image[100:130, :60] == glass).all()  # off the diagonal: glass


def test_the_peak_rss_is_the_childs_own_not_the_parents(tmp_path):
    """A child forked from a large process would report the parent's size; the launcher reports the child's."""
    held = np.ones(300 * 2**20, np.uint8)  # this process: 300 MiB more, touched
    peak_file = tmp_path / "maxrss"
    child = [sys.executable, "-c", "block = bytearray(50 * 2**20)"]
    assert subprocess.call([sys.executable, "-c", field_speed.PEAK_RSS_LAUNCHER, str(peak_file), *child]) == 0
    assert 50 <= int(peak_file.read_text()) / 1024 < 250 and held[-1] == 1


def test_every_row_on_a_tiny_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    save_untrained_field_models(run_dir / "checkpoints")
    source = tmp_path / "source.png"
    write_image(source, gradient_image(50, 70))
    output = tmp_path / "speed.json"
    field_speed.main(["--run-dir", str(run_dir), "--field", str(source), "--width", "160", "--height", "120",
                      "--repeats", "1", "--backends", "onnx", "--threads", "1", "--big-side", "300",
                      "--tmp-dir", str(tmp_path / "work"), "--output-json", str(output)])

    results = json.loads(output.read_text())
    alone, whole, big = results["rows"]
    assert [(r["measure"], r["backend"], r["image"]) for r in results["rows"]] == [
        ("segment_field", "onnx", "160x120"), ("predict.py --fields", "onnx", "160x120"),
        ("predict.py --fields", "onnx", "300x300")]
    for row in results["rows"]:
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0 and row["cells"] >= 0
    for row in (whole, big):
        assert row["start_up_s"] > 0 and row["predicting_s"] > 0 and row["peak_rss_mib"] > 10
        assert row["start_up_s"] + row["predicting_s"] <= row["seconds"]  # predict.py's own timings lie inside its wall time
    assert whole["cells"] == alone["cells"]  # the same models on the same field
    assert results["big_estimate_s"] > 0 and results["threads"] == 1
    assert not list((tmp_path / "work").iterdir())  # the field, the TIFF and the outputs are gone

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    # header, then a row per measurement
    assert table[0].startswith("| measure | backend | image | seconds |") and len(table) == 1 + 3
