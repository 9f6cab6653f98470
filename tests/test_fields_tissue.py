"""tools/fields/tissue.py: the tissue map covers every field placed on a slide and leaves the glass out."""
import cv2
import numpy as np
import pytest

from tools.fields.make_slide import make_slide
from tools.fields.readers import open_slide
from tools.fields.tissue import UNIT_PX, everywhere, find_tissue, glass_colour


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tissue")
    field = np.full((200, 260, 3), 232, np.uint8)
    cv2.ellipse(field, (130, 100), (90, 60), 0, 0, 360, (205, 200, 215), -1)  # pale cytoplasm (-30 grey levels)
    cv2.circle(field, (130, 100), 12, (90, 60, 110), -1)
    cv2.imwrite(str(folder / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    manifest = make_slide([folder / "field.png"] * 3, folder / "slide.tiff", side=4096, mpp=0.25, quality=90, seed=2)
    return folder / "slide.tiff", manifest


def test_the_map_covers_every_field_and_skips_most_of_the_glass(slide):
    path, manifest = slide
    tissue = find_tissue(open_slide(path))
    assert tissue.units.shape == (4096 // UNIT_PX, 4096 // UNIT_PX) and tissue.unit == UNIT_PX
    assert tissue.glass_rgb == (232, 232, 232)
    for placed in manifest["fields"]:  # the cell in each field (the middle of its ellipse), its nucleus, not the glass
        top, left = placed["y"] + 70, placed["x"] + 70
        assert tissue.region(top, left, top + 60, left + 120).all()
        assert not tissue.region(placed["y"] - 200, placed["x"] - 200, placed["y"] - 80, placed["x"] - 80).any()
    assert tissue.tissue_share < 0.05


def test_a_threshold_above_the_cells_contrast_finds_no_tissue(slide):
    path, _ = slide
    assert find_tissue(open_slide(path), threshold=250).tissue_share == 0.0


def test_everywhere_screens_the_whole_image(slide):
    path, _ = slide
    tissue = everywhere(open_slide(path))
    assert tissue.units.all() and tissue.tissue_share == 1.0


def test_the_glass_is_the_commonest_grey_with_its_noise_even_beside_a_large_uniform_object():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(225, 2, (100, 100, 3)), 0, 255).astype(np.uint8)
    image[:30] = (120, 80, 140)
    glass, noise = glass_colour(image)
    assert np.allclose(glass, 225, atol=1) and 1 <= noise <= 3


def test_box_in_is_the_tissue_units_inside_a_region_clipped_to_it(slide):
    path, manifest = slide
    tissue = find_tissue(open_slide(path))
    placed = manifest["fields"][0]
    box = tissue.box_in(placed["y"] - 300, placed["x"] - 300, placed["y"] + 500, placed["x"] + 500)
    assert box is not None and box[0] >= placed["y"] - 300 and box[2] <= placed["y"] + 500
    assert box[0] <= placed["y"] + 70 and box[2] >= placed["y"] + 130  # holds the cell's middle
    assert tissue.region(*box).any() and tissue.box_in(0, 0, 1, 1) in (None, (0, 0, 1, 1))
