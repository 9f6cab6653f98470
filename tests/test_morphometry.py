"""Cell measurements on small synthetic cells drawn with cv2, checked against their known geometry."""
import cv2
import numpy as np
import pytest

from tools.morphometry import (
    FEATURE_NAMES,
    HERLEV_FEATURES,
    cell_measurements,
    measurements_table,
)

SIZE = 160  # px, the canvas; a Herlev cell is about this big
CENTRE = (SIZE // 2, SIZE // 2)  # (x, y) for cv2


def draw_cell(nucleus_draw, cyto_grey=160, nucleus_grey=80, cell_radius=60):
    """A grey cell (disc of `cell_radius`) on a light background; `nucleus_draw(mask)` paints the nucleus.

    Returns:
        (image uint8 RGB [SIZE, SIZE, 3], cell_mask bool, nuc_mask bool); grey = R = G = B inside the cell.
    """
    cell = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(cell, CENTRE, cell_radius, 1, -1)
    nuc = np.zeros((SIZE, SIZE), np.uint8)
    nucleus_draw(nuc)
    grey = np.full((SIZE, SIZE), 230, np.uint8)
    grey[cell > 0] = cyto_grey
    grey[nuc > 0] = nucleus_grey
    return np.repeat(grey[:, :, None], 3, axis=2), cell > 0, nuc > 0


def disc(radius, centre=CENTRE):
    return lambda mask: cv2.circle(mask, centre, radius, 1, -1)


def measure(image, cell, nuc):
    values = cell_measurements(image, cell, nuc)
    return dict(zip(FEATURE_NAMES, values.tolist()))


@pytest.mark.parametrize("radius", [12, 20, 35])
def test_disc_area_roundness_and_elongation(radius):
    features = measure(*draw_cell(disc(radius)))
    assert features["nucleus_area_px"] == pytest.approx(np.pi * radius ** 2, rel=0.03)
    assert features["nucleus_roundness"] == pytest.approx(1.0, abs=0.1)
    assert features["nucleus_elongation"] == pytest.approx(1.0, abs=0.05)
    assert features["nucleus_longest_diameter_px"] == pytest.approx(2 * radius, rel=0.05)
    assert features["nucleus_solidity"] > 0.95  # a pixel disc is never quite convex
    assert features["nucleus_found"] == 1 and features["nucleus_count"] == 1


@pytest.mark.parametrize("semi_axes", [(30, 15), (40, 10), (24, 18)])
def test_ellipse_elongation_is_a_over_b(semi_axes):
    a, b = semi_axes

    def ellipse(mask):  # sampled at pixel centres: cv2.ellipse fills half a pixel wide, 2b + 1 across
        rows, cols = np.mgrid[:SIZE, :SIZE] - np.array(CENTRE)[::-1, None, None]
        along, across = cols * np.cos(0.5) + rows * np.sin(0.5), -cols * np.sin(0.5) + rows * np.cos(0.5)
        mask[(along / a) ** 2 + (across / b) ** 2 <= 1] = 1

    features = measure(*draw_cell(ellipse))
    assert features["nucleus_elongation"] == pytest.approx(a / b, rel=0.05)
    assert features["nucleus_longest_diameter_px"] == pytest.approx(2 * a, rel=0.05)
    assert features["nucleus_shortest_diameter_px"] == pytest.approx(2 * b, rel=0.05)


def test_nucleus_twice_as_dark_as_cytoplasm():
    features = measure(*draw_cell(disc(20), cyto_grey=180, nucleus_grey=90))
    assert features["nucleus_cytoplasm_grey_ratio"] == pytest.approx(0.5, abs=0.01)
    assert features["nucleus_grey_mean"] == pytest.approx(90, abs=0.5)
    assert features["nucleus_r_mean"] == pytest.approx(90, abs=0.5)
    assert features["nucleus_grey_sd"] == pytest.approx(0, abs=0.5)


def test_nc_ratio_of_known_areas():
    image = np.full((120, 140, 3), 230, np.uint8)
    cell = np.zeros((120, 140), bool)
    cell[10:70, 20:120] = True   # 60 x 100 = 6000 px, nucleus included
    nuc = np.zeros((120, 140), bool)
    nuc[30:50, 50:80] = True     # 20 x 30 = 600 px, so the cytoplasm is 5400 px
    features = measure(image, cell, nuc)
    assert features["nucleus_area_px"] == 600 and features["cytoplasm_area_px"] == 5400
    assert features["nc_ratio"] == pytest.approx(600 / 5400)
    assert features["nucleus_cell_area_fraction"] == pytest.approx(0.1)


def test_empty_nucleus_gives_defined_values():
    image, cell, nuc = draw_cell(disc(20))
    values = cell_measurements(image, cell, np.zeros_like(nuc))
    features = dict(zip(FEATURE_NAMES, values.tolist()))
    assert np.isfinite(values).all()
    assert features["nucleus_found"] == 0 and features["cytoplasm_found"] == 1
    assert features["nucleus_area_px"] == 0 and features["nc_ratio"] == 0
    assert features["cytoplasm_area_px"] == pytest.approx(np.pi * 60 ** 2, rel=0.03)


def line_nucleus(mask):
    mask[80, 60:100] = 1


def pixel_nucleus(mask):
    mask[80, 80] = 1


def nucleus_outside_cell(mask):
    cv2.circle(mask, (10, 10), 8, 1, -1)


@pytest.mark.parametrize("nucleus_draw", [disc(20), line_nucleus, pixel_nucleus, nucleus_outside_cell])
def test_output_shape_and_finite(nucleus_draw):
    values = cell_measurements(*draw_cell(nucleus_draw))
    assert values.shape == (len(FEATURE_NAMES),) and values.dtype == np.float32
    assert np.isfinite(values).all()
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert len(HERLEV_FEATURES) == 20 and set(HERLEV_FEATURES) <= set(FEATURE_NAMES)


def test_empty_cell_is_all_zero_and_table_stacks():
    image, cell, nuc = draw_cell(disc(20))
    empty = cell_measurements(image, np.zeros_like(cell), np.zeros_like(nuc))
    assert not empty.any()
    table = measurements_table([(image, cell, nuc), (image, cell, nuc)])
    assert table.shape == (2, len(FEATURE_NAMES))
    np.testing.assert_array_equal(table[0], cell_measurements(image, cell, nuc))


def test_textured_nucleus_has_higher_glcm_contrast_than_flat():
    image, cell, nuc = draw_cell(disc(25))
    flat = measure(image, cell, nuc)
    textured_image = image.copy()
    noise = np.random.default_rng(0).integers(-40, 41, size=nuc.sum())
    textured_image[nuc] = np.clip(80 + noise, 0, 255).astype(np.uint8)[:, None]
    textured = measure(textured_image, cell, nuc)
    assert flat["nucleus_glcm_contrast"] == 0  # the nucleus edge must not count as texture
    assert textured["nucleus_glcm_contrast"] > 1.0
    assert textured["nucleus_glcm_entropy"] > flat["nucleus_glcm_entropy"]
    assert textured["nucleus_grey_sd"] > 10


def star(mask, points=6, outer=30, inner=12):
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    polygon = np.stack([CENTRE[0] + radii * np.cos(angles), CENTRE[1] + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [polygon.round().astype(np.int32)], 1)


def test_star_nucleus_is_less_solid_and_less_convex_than_disc():
    round_nucleus = measure(*draw_cell(disc(22)))
    star_nucleus = measure(*draw_cell(star))
    assert star_nucleus["nucleus_solidity"] < round_nucleus["nucleus_solidity"] - 0.2
    assert star_nucleus["nucleus_convexity"] < round_nucleus["nucleus_convexity"] - 0.1
    assert star_nucleus["nucleus_roundness"] < 0.6


def test_two_nuclei_counted_areas_summed_shape_from_largest():
    def two_discs(mask):
        cv2.circle(mask, (60, 80), 20, 1, -1)
        cv2.circle(mask, (110, 80), 8, 1, -1)

    features = measure(*draw_cell(two_discs))
    assert features["nucleus_count"] == 2
    assert features["nucleus_area_px"] == pytest.approx(np.pi * (20 ** 2 + 8 ** 2), rel=0.03)
    assert features["nucleus_longest_diameter_px"] == pytest.approx(40, rel=0.05)


def test_nucleus_position_is_offset_over_cell_radius():
    centred = measure(*draw_cell(disc(15)))
    offset = measure(*draw_cell(disc(15, centre=(CENTRE[0] + 30, CENTRE[1]))))
    assert centred["nucleus_position"] == pytest.approx(0, abs=0.02)
    assert offset["nucleus_position"] == pytest.approx(30 / 60, abs=0.03)


def test_extrema_counts_dark_chromatin_clumps_not_flat_regions():
    image, cell, nuc = draw_cell(disc(30))
    flat = measure(image, cell, nuc)
    clumped_image = image.copy()
    for x in (65, 80, 95):  # three dark clumps, 15 px apart, inside the nucleus
        cv2.circle(clumped_image, (x, 80), 3, (40, 40, 40), -1)
    clumped = measure(clumped_image, cell, nuc)
    assert flat["nucleus_minima_count"] == 1  # the flat nucleus is one dark basin
    assert flat["nucleus_maxima_count"] == 0 and flat["cytoplasm_minima_count"] == 0
    assert clumped["nucleus_minima_count"] == 3  # the basin's floor is now the three clumps
    assert clumped["nucleus_maxima_count"] == 0
