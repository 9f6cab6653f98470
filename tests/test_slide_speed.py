"""benchmarks/slide_speed.py: the slide it times is made from the fields asked for; a slide left in the work folder
by another request (other fields, side, coverage, scale or seed) is made again, not timed in their place."""
import cv2
import numpy as np

from benchmarks.slide_speed import made_slide


def write_field(path, seed):
    rng = np.random.default_rng(seed)
    image = np.full((96, 128, 3), 228, np.uint8)
    image[16:-16, 16:-16] = rng.integers(40, 200, (64, 96, 3))
    cv2.imwrite(str(path), image)
    return str(path)


def test_the_slide_is_reused_only_for_the_same_request(tmp_path):
    first, second = write_field(tmp_path / "a.png", 0), write_field(tmp_path / "b.png", 1)
    slide = tmp_path / "work" / "slide.tiff"
    made = made_slide([first], slide, 512, 0, 0.25, 0)
    stamp = slide.stat().st_mtime_ns
    assert made_slide([first], slide, 512, 0, 0.25, 0) == made and slide.stat().st_mtime_ns == stamp
    other = made_slide([second], slide, 512, 0, 0.25, 0)
    assert [f["image"] for f in other["fields"]] == [str((tmp_path / "b.png").resolve())]
    assert made_slide([second], slide, 512, 0, 0.5, 0)["mpp"] == 0.5  # another scale: made again
