"""Behaviour of utils/preprocessing.py: reading, the mask policy, rasterising, letterboxing, normalisation."""
import tempfile
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

from utils.errors import UserError
from utils.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_RGB,
    cell_channels,
    fill_holes,
    letterbox,
    letterbox_box,
    normalize_image,
    rasterize_polygons,
    read_image,
    read_mask,
    unletterbox,
)

# ---------------------------------------------------------------- read_image

def test_bgr_on_disk_becomes_rgb(tmp_path):
    red_bgr = np.zeros((6, 8, 3), np.uint8)
    red_bgr[..., 2] = 255  # OpenCV writes BGR: this file is pure red
    for ext in ("png", "bmp", "tif"):
        path = tmp_path / f"red.{ext}"
        assert cv2.imwrite(str(path), red_bgr)
        image = read_image(path)
        assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
        assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all(), ext


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (6, 8, 3)
    for channel in range(3):
        assert np.array_equal(image[..., channel], gray)


def test_rgba_drops_alpha_and_keeps_colour_order(tmp_path):
    bgra = np.zeros((5, 5, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 1] = 100  # green
    bgra[..., 2] = 10  # red
    bgra[..., 3] = 0  # fully transparent: alpha is ignored, not multiplied in
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (5, 5, 3)
    assert tuple(image[0, 0]) == (10, 100, 200)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_images_are_scaled_to_8_bit(tmp_path, ext):
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = 65535  # red at full scale
    bgr16[..., 1] = 257 * 128  # green at half scale
    bgr16[0, 0] = 0
    path = tmp_path / f"deep.{ext}"
    assert cv2.imwrite(str(path), bgr16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really a 16-bit file
    image = read_image(path)
    assert image.dtype == np.uint8
    assert tuple(image[1, 1]) == (255, 128, 0)
    assert tuple(image[0, 0]) == (0, 0, 0)

    gray16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    cv2.imwrite(str(tmp_path / f"gray16.{ext}"), gray16)
    gray = read_image(tmp_path / f"gray16.{ext}")
    assert gray.shape == (4, 4, 3)
    assert np.array_equal(gray[..., 0], np.arange(16, dtype=np.uint8).reshape(4, 4) * 17)


def test_float_tiff_outside_the_usual_scale_is_stretched_to_8_bit(tmp_path):
    data = np.linspace(-1, 3, 20, dtype=np.float32).reshape(4, 5)
    assert cv2.imwrite(str(tmp_path / "float.tiff"), data)
    image = read_image(tmp_path / "float.tiff")
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    assert image.min() == 0 and image.max() == 255
    assert (np.diff(image[..., 0].ravel().astype(int)) >= 0).all()  # order of values kept


# ---------------------------------------------------------------- generated hostile images (tests/hostile.py)

# capfd: read in every example
@settings(max_examples=hostile.examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile.images())
@example(hostile.GeneratedImage(np.full((3, 2), 0.8, np.float32), ".tif"))  # was black: every float was stretched
@example(hostile.GeneratedImage(np.array([[[102]], [[190]], [[28]], [[189]]], np.uint16).transpose(1, 2, 0), ".tif",
                                planar=True))  # OpenCV returned whatever lay in memory
@example(hostile.GeneratedImage(np.array([[[127, 53, 8, 3]]], np.uint8), ".tif"))  # OpenCV: premultiplied by alpha
@example(hostile.GeneratedImage(np.full((4, 4), np.nan, np.float32), ".tif"))  # was black with a RuntimeWarning
@example(hostile.GeneratedImage(np.full((9, 9, 3), 90, np.uint8), ".jpg", damage="cut"))  # was decoded, grey-filled
@example(hostile.GeneratedImage(np.full((6, 6, 3), 0.5, np.float32), ".tif", planar=True, damage="cut"))  # likewise
def test_generated_images_read_as_their_rgb_or_one_line(capfd, image):
    """Any size, depth, channel count and format: the stored pixels as uint8 RGB, or one UserError naming the file
    (and no line of the decoders' own on stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        path = image.write(Path(folder) / "cell")
        try:
            rgb = read_image(path)
        except UserError as error:
            assert not image.readable and str(error).startswith(f"{path}: "), error
        else:
            assert image.readable and rgb.dtype == np.uint8 and rgb.shape == (*image.pixels.shape[:2], 3)
            if image.expected_rgb() is not None:
                assert np.array_equal(rgb, image.expected_rgb())
    assert capfd.readouterr().err == ""


def test_a_truncated_png_is_one_line_without_libpngs_own(tmp_path, capfd):
    path = hostile.GeneratedImage(np.zeros((30, 30, 3), np.uint8), ".png", damage="cut").write(tmp_path / "cell")
    with pytest.raises(UserError, match="cannot read this image, truncated"):
        read_image(path)
    assert capfd.readouterr().err == ""  # libpng printed "libpng error: Read Error"


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_unreadable_file_is_a_user_error_naming_it(tmp_path, content):
    path = tmp_path / "broken_cell.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match="broken_cell.png"):
        read_image(path)


def test_missing_image_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nowhere.bmp"):
        read_image(tmp_path / "nowhere.bmp")


# ---------------------------------------------------------------- read_mask

def test_read_mask_foreground_is_brighter_than_half_the_maximum(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 255
    mask[5, 6] = 1  # a lone 1 in a 0/255 mask: an antialiased edge below half height, background
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    read = read_mask(tmp_path / "m.png", (6, 7))
    assert read.dtype == bool
    assert np.array_equal(read, mask > 127) and not read[5, 6]
    binary = (mask > 0).astype(np.uint8)  # a pure 0/1 mask is read whole
    cv2.imwrite(str(tmp_path / "m01.png"), binary)
    assert np.array_equal(read_mask(tmp_path / "m01.png", (6, 7)), binary > 0)


def test_read_mask_size_mismatch_is_a_user_error(tmp_path):
    cv2.imwrite(str(tmp_path / "12N.png"), np.zeros((6, 7), np.uint8))
    with pytest.raises(UserError, match=r"12N\.png.*7x6.*8x6"):
        read_mask(tmp_path / "12N.png", (6, 8))


def test_read_mask_unreadable_is_a_user_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(UserError, match="bad.png"):
        read_mask(tmp_path / "bad.png", (4, 4))


def test_read_mask_16_bit(tmp_path):
    mask = np.zeros((6, 7), np.uint16)
    mask[1:3, 2:5] = 255
    cv2.imwrite(str(tmp_path / "m16.png"), mask)
    assert np.array_equal(read_mask(tmp_path / "m16.png", (6, 7)), mask > 0)


# ---------------------------------------------------------------- rasterize_polygons

def test_square_fills_exactly_its_pixels_inclusive():
    square = np.array([(2, 3), (7, 3), (7, 8), (2, 8)], np.float32)  # x, y
    expected = np.zeros((12, 10), bool)
    expected[3:9, 2:8] = True  # rows 3..8, cols 2..7: vertices lie on pixel centres, boundary included
    assert np.array_equal(rasterize_polygons([square], (12, 10)), expected)


def test_x_is_column_and_y_is_row():
    tall = np.array([(1, 0), (2, 0), (2, 6), (1, 6)], np.float32)
    mask = rasterize_polygons([tall], (8, 4))
    assert mask[:, 1:3].all(axis=1)[:7].all() and mask.sum() == 2 * 7


def test_triangle_area_is_close_to_the_analytic_area():
    legs = 60.0
    triangle = np.array([(10.3, 10.7), (10.3 + legs, 10.7), (10.3, 10.7 + legs)], np.float32)
    area = legs * legs / 2
    count = rasterize_polygons([triangle], (90, 90)).sum()
    # boundary pixels are included, so the count exceeds the area by about half the perimeter at most
    half_perimeter = (2 * legs + legs * np.sqrt(2)) / 2
    assert area <= count <= area + half_perimeter + 2
    assert abs(count - area) / area < 0.06


def test_subpixel_vertices_are_not_rounded_to_whole_pixels():
    # a 0.4 px shift of every vertex moves no boundary over a pixel centre: same mask; 0.6 px does
    base = np.array([(2, 2), (6, 2), (6, 6), (2, 6)], np.float32)
    assert np.array_equal(rasterize_polygons([base + 0.4], (10, 10)), rasterize_polygons([base], (10, 10)))
    assert rasterize_polygons([base], (10, 10))[2, 2]
    assert not rasterize_polygons([base + 0.6], (10, 10))[2, 2]


def test_several_polygons_are_united_and_an_empty_list_is_empty():
    a = np.array([(0, 0), (2, 0), (2, 2), (0, 2)], np.float32)
    b = a + 5
    mask = rasterize_polygons([a, b], (10, 10))
    assert mask.sum() == 9 + 9 and mask[0, 0] and mask[7, 7]
    assert rasterize_polygons([], (4, 5)).shape == (4, 5) and not rasterize_polygons([], (4, 5)).any()


# ---------------------------------------------------------------- letterbox / unletterbox

def coloured_cell(height, width):
    """Grey background with a red rectangle; returns (image, mask of exactly the red pixels)."""
    image = np.full((height, width, 3), 200, np.uint8)
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 3: width // 3 + width // 4] = True
    image[mask] = (220, 30, 30)
    return image, mask


@pytest.mark.parametrize("height,width", [(40, 80), (80, 40), (50, 50), (300, 120), (10, 30)])
def test_letterbox_keeps_aspect_and_pads_with_pad_rgb(height, width):
    image, mask = coloured_cell(height, width)
    boxed, (boxed_mask,), box = letterbox(image, [mask], 64)
    assert boxed.shape == (64, 64, 3) and boxed.dtype == np.uint8
    assert boxed_mask.shape == (64, 64)
    assert max(box.height, box.width) == 64
    assert abs(box.width / box.height - width / height) < 0.05 * width / height + 1 / min(box.height, box.width)
    # centred
    assert abs(box.top - (64 - box.height - box.top)) <= 1 and abs(box.left - (64 - box.width - box.left)) <= 1
    inside = np.zeros((64, 64), bool)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert (boxed[~inside] == PAD_RGB).all()
    assert not boxed_mask[~inside].any()


@pytest.mark.parametrize("height,width", [(40, 80), (120, 90), (20, 24)])
def test_letterboxed_masks_stay_on_their_pixels(height, width):
    image, mask = coloured_cell(height, width)
    boxed, (boxed_mask,), _ = letterbox(image, [mask], 64)
    red = (boxed[..., 0].astype(int) - boxed[..., 1]) > 100  # the red rectangle after resizing
    boxed_mask = boxed_mask.astype(bool)
    assert boxed_mask.any()
    iou = (red & boxed_mask).sum() / (red | boxed_mask).sum()
    assert iou > 0.75, iou  # only the interpolated border pixels may disagree


def test_letterbox_mask_values_stay_binary():
    image, mask = coloured_cell(37, 91)
    _, boxed_masks, _ = letterbox(image, [mask, np.ones_like(mask)], 128)
    for boxed in boxed_masks:
        assert boxed.dtype == np.uint8 and set(np.unique(boxed)) <= {0, 1}


def test_letterbox_box_matches_letterbox():
    image = np.zeros((30, 90, 3), np.uint8)
    assert letterbox(image, [], 96)[2] == letterbox_box(30, 90, 96)
    box = letterbox_box(30, 90, 96)
    assert (box.height, box.width, box.top, box.left) == (32, 96, 32, 0)


@pytest.mark.parametrize("height,width,size", [(40, 80, 64), (90, 60, 128), (200, 150, 64)])
def test_unletterbox_restores_shape_and_content(height, width, size):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    smooth = (np.sin(xx / 9.0) + np.cos(yy / 7.0) + 2) / 4  # in [0, 1], slowly varying
    image = np.repeat((smooth * 255).astype(np.uint8)[..., None], 3, axis=2)
    boxed, _, box = letterbox(image, [], size)
    prob = boxed[..., 0].astype(np.float32) / 255
    outside = np.ones((size, size), bool)
    outside[box.top:box.top + box.height, box.left:box.left + box.width] = False
    prob[outside] = -1  # the padding must not leak back into the restored map
    restored = unletterbox(prob, box, (height, width))
    assert restored.shape == (height, width)
    error = np.abs(restored - smooth)
    assert error.mean() < 0.03 and np.percentile(error, 99) < 0.15
    assert restored.min() >= 0


# ---------------------------------------------------------------- normalisation

def test_normalize_image_is_chw_float_with_imagenet_statistics():
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    out = normalize_image(image)
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    expected = (np.array([1.0, 0.0, 128 / 255], np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(out[:, 2, 3], expected, atol=1e-6)
    mean_pixel = np.round(IMAGENET_MEAN * 255).astype(np.uint8)
    assert np.abs(normalize_image(np.broadcast_to(mean_pixel, (2, 2, 3)).copy())).max() < 0.01


def test_cell_channels_are_normalised_rgb_then_cell_and_nucleus_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    masks = (rng.random((2, 16, 16)) < 0.5).astype(np.uint8)
    channels = cell_channels(image, masks)
    assert channels.shape == (5, 16, 16) and channels.dtype == np.float32
    assert np.array_equal(channels[:3], normalize_image(image))
    assert np.array_equal(channels[3:], masks.astype(np.float32))


# ---------------------------------------------------------------- mask policy and clean-up

def test_antialiased_mask_edges_below_half_height_are_background(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    cv2.circle(mask, (10, 10), 6, 255, -1, lineType=cv2.LINE_AA)  # soft edge: values between 0 and 255
    assert len(np.unique(mask)) > 2
    cv2.imwrite(str(tmp_path / "aa.png"), mask)
    assert np.array_equal(read_mask(tmp_path / "aa.png", (20, 20)), mask > 127)


@pytest.mark.parametrize("soften", ["antialiased", "blurred"])
def test_a_soft_edged_nucleus_has_the_area_of_its_hard_version(tmp_path, soften):
    """Half height is where a soft edge crosses the hard one; counting every non-zero pixel would grow the nucleus."""
    hard = np.zeros((64, 64), np.uint8)
    cv2.circle(hard, (32, 32), 16, 255, -1, lineType=cv2.LINE_8)
    if soften == "antialiased":  # each pixel holds the share of it the shape covers, as drawing programs save it
        fine = np.zeros((512, 512), np.uint8)  # (OpenCV's LINE_AA fill is not this: it draws a circle ~0.6 px wider)
        cv2.circle(fine, (32 * 8 + 4, 32 * 8 + 4), 16 * 8, 255, -1)  # the same circle at 8x, centred on the same pixel
        soft = cv2.resize(fine, (64, 64), interpolation=cv2.INTER_AREA)
    else:
        soft = cv2.GaussianBlur(hard, (0, 0), sigmaX=1.5)  # a JPEG-like smeared edge, several pixels wide
    assert len(np.unique(soft)) > 10
    cv2.imwrite(str(tmp_path / "soft.png"), soft)
    hard_area, soft_area = (hard > 0).sum(), read_mask(tmp_path / "soft.png", (64, 64)).sum()
    assert abs(soft_area - hard_area) / hard_area < 0.03
    assert (soft > 0).sum() / hard_area > 1.05  # what "any non-zero pixel" would have measured


def test_fill_holes_fills_enclosed_background_only():
    ring = np.zeros((9, 12), bool)
    ring[1:8, 1:8] = True
    ring[3:5, 3:5] = False  # a hole inside the cell: filled
    assert np.array_equal(fill_holes(ring), np.pad(np.ones((7, 7), bool), ((1, 1), (1, 4))))
    notch = ring.copy()
    notch[3:5, 1:3] = False  # the same hole opened to the outside: background, left as it is
    assert np.array_equal(fill_holes(notch), notch)


def test_fill_holes_matches_scipy_on_random_masks():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for index in range(100):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) > rng.random()
        mask = ndimage.binary_opening(mask) if index % 2 else mask
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask)), index
