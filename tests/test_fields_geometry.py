"""tools/fields/geometry.py: tiles that cover a field exactly, crops padded where they leave it, a cell's window."""
import numpy as np

from tools.fields.geometry import crop_padded, grid_corners, window_crop, window_input


def test_grid_corners_cover_the_image_exactly_with_the_last_tile_flush():
    shape, tile = (100, 70), 32
    corners = grid_corners(shape, tile)
    covered = np.zeros(shape, int)
    for top, left in corners:
        assert 0 <= top <= shape[0] - tile and 0 <= left <= shape[1] - tile  # every tile lies inside the image
        covered[top:top + tile, left:left + tile] += 1
    assert covered.min() >= 1
    assert max(top for top, _ in corners) + tile == shape[0] and max(left for _, left in corners) + tile == shape[1]
    assert len(corners) == len(set(corners)) == 4 * 3
    assert grid_corners((64, 64), 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]  # an exact fit adds no extra row
    assert grid_corners((20, 30), 32) == [(0, 0)]  # an image smaller than a tile: one padded tile


def test_crop_padded_copies_inside_and_pads_outside():
    array = np.arange(25, dtype=np.int32).reshape(5, 5)
    crop = crop_padded(array, -2, 3, 4, fill=-1)
    assert crop.shape == (4, 4)
    assert np.array_equal(crop[2:, :2], array[:2, 3:])  # the part inside the array
    assert (crop[:2] == -1).all() and (crop[:, 2:] == -1).all()
    rgb = crop_padded(np.zeros((4, 4, 3), np.uint8), 2, 2, 4, fill=(230, 230, 230))
    assert rgb.shape == (4, 4, 3) and (rgb[:2, :2] == 0).all() and (rgb[2:, 2:] == 230).all()
    assert (crop_padded(array, 10, 10, 3, fill=0) == 0).all()  # wholly outside


def test_window_crop_centres_the_marked_nucleus_and_window_input_stacks_it_as_a_fourth_channel():
    image = np.zeros((40, 40, 3), np.uint8)
    marker = np.zeros((40, 40), bool)
    marker[18:23, 34:39] = True  # a nucleus centred at (20, 36), 4 px from the right edge
    rgb, seed = window_crop(image, marker, (20.0, 36.0), window=16, size=32)
    assert rgb.shape == (32, 32, 3) and seed.shape == (32, 32)
    rows, cols = np.nonzero(seed)
    assert abs(rows.mean() - 15.5) <= 1.5 and abs(cols.mean() - 15.5) <= 1.5  # the nucleus sits in the middle
    assert (rgb[:, -4:] != 0).all()  # the window reaches past the image's right edge: padded, not black
    stacked = window_input(rgb, seed)
    assert stacked.shape == (4, 32, 32) and stacked.dtype == np.float32
    assert np.array_equal(stacked[3], seed.astype(np.float32))
