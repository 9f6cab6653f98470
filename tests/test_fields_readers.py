"""tools/fields/readers.py: the same pixels by region from every reader, microns per pixel from the metadata, and
one clear line for a file that cannot be read."""
import cv2
import numpy as np
import pytest
import tifffile

from tools.fields.make_slide import make_slide
from tools.fields.readers import ImageReader, OpenSlideReader, TiffReader, open_slide, plausible_mpp
from utils.errors import UserError


@pytest.fixture(scope="module")
def field_image():
    rng = np.random.default_rng(0)
    image = np.full((300, 420, 3), 230, np.uint8)
    for _ in range(12):
        centre = tuple(int(v) for v in rng.integers(20, 280, 2))
        cv2.circle(image, (centre[1], centre[0]), int(rng.integers(8, 20)), tuple(int(v) for v in rng.integers(40, 200, 3)), -1)
    return image


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, field_image):
    """A 1024 px pyramidal JPEG slide holding the field at a known place."""
    folder = tmp_path_factory.mktemp("pyramid")
    cv2.imwrite(str(folder / "field.png"), cv2.cvtColor(field_image, cv2.COLOR_RGB2BGR))
    manifest = make_slide([folder / "field.png"], folder / "slide.tiff", side=1024, mpp=0.25, quality=95, seed=0)
    return folder / "slide.tiff", manifest["fields"][0]


def test_a_generated_slide_opens_in_openslide_with_its_levels_and_scale(pyramid, field_image):
    path, placed = pyramid
    reader = OpenSlideReader(path)
    assert reader.format == "openslide:generic-tiff"
    assert reader.shape == (1024, 1024) and reader.downsamples == (1.0, 4.0, 16.0) and reader.mpp == pytest.approx(0.25)
    region = reader.read(placed["y"], placed["x"], placed["y"] + 300, placed["x"] + 420)
    assert region.shape == field_image.shape and region.dtype == np.uint8
    assert np.abs(region.astype(int) - field_image).mean() < 3  # JPEG at quality 95
    assert reader.read(0, 0, 64, 64, level=2).shape == (64, 64, 3) and reader.level_shape(2) == (64, 64)


def test_tifffile_reads_the_same_pixels_as_openslide(pyramid):
    """A generic pyramidal TIFF goes to tifffile (faster); OpenSlide, which scanners' formats go to, agrees."""
    path, placed = pyramid
    window = (placed["y"] - 50, placed["x"] - 70, placed["y"] + 333, placed["x"] + 517)  # across tile borders
    by_tifffile, by_openslide = open_slide(path), OpenSlideReader(path)
    assert isinstance(by_tifffile, TiffReader)
    assert by_tifffile.mpp == pytest.approx(0.25) and by_tifffile.downsamples == (1.0, 4.0, 16.0)
    assert np.array_equal(by_tifffile.read(*window), by_openslide.read(*window))
    assert np.array_equal(by_tifffile.read(0, 0, 64, 64, level=2), by_openslide.read(0, 0, 64, 64, level=2))


def test_a_scanners_format_goes_to_openslide_with_its_scale(tmp_path, field_image):
    """An Aperio .svs (tiled JPEG pages, the scale in the ImageDescription, as Aperio's scanners write it) is read
    by OpenSlide as 'aperio', not by tifffile, and its microns per pixel come from OpenSlide's properties."""
    path = tmp_path / "scan.svs"
    level0 = np.pad(field_image, ((0, 724), (0, 604), (0, 0)), constant_values=230)  # 1024 x 1024
    header = "Aperio Image Library v12.0.0 \r\n1024x1024 [0,0 1024x1024] (256x256) JPEG/RGB Q=95"
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb",
                  description=f"{header}|AppMag = 40|MPP = 0.2520", metadata=None)
        tif.write(np.ascontiguousarray(level0[::4, ::4]), tile=(256, 256), compression="jpeg", photometric="rgb",
                  description=f"{header} -> 256x256", metadata=None)
    reader = open_slide(path)
    assert isinstance(reader, OpenSlideReader) and reader.format == "openslide:aperio"
    assert reader.shape == (1024, 1024) and reader.mpp == pytest.approx(0.252) and reader.downsamples == (1.0, 4.0)
    assert np.abs(reader.read(0, 0, 300, 420).astype(int) - field_image).mean() < 3


@pytest.mark.parametrize("kind", ["striped deflate rgb", "tiled grey 16-bit", "uncompressed"])
def test_other_tiffs_are_read_by_region(tmp_path, field_image, kind):
    path = tmp_path / "field.tif"
    if kind == "striped deflate rgb":
        tifffile.imwrite(path, field_image, compression="zlib", rowsperstrip=64, photometric="rgb")
        expected = field_image
    elif kind == "tiled grey 16-bit":
        grey = field_image[..., 0].astype(np.uint16) * 257
        tifffile.imwrite(path, grey, tile=(64, 64), compression="zlib")
        expected = np.repeat(field_image[..., :1], 3, axis=2)
    else:
        tifffile.imwrite(path, field_image, photometric="rgb")
        expected = field_image
    reader = open_slide(path)
    assert isinstance(reader, TiffReader) and reader.shape == (300, 420)
    assert (reader.mapped[0] is not None) == (kind == "uncompressed")
    assert np.array_equal(reader.read(37, 65, 250, 401), expected[37:250, 65:401])


def test_a_plain_image_is_read_whole_and_regions_are_clipped(tmp_path, field_image):
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(field_image, cv2.COLOR_RGB2BGR))
    reader = open_slide(tmp_path / "field.png")
    assert isinstance(reader, ImageReader) and reader.mpp is None and reader.downsamples == (1.0,)
    assert np.array_equal(reader.read(-10, -10, 20, 30), field_image[:20, :30])  # clipped to the image
    assert reader.read(400, 0, 500, 10).shape == (0, 10, 3)


@pytest.mark.parametrize("resolution, unit, expected", [
    ((40000, 1), "CENTIMETER", 0.25), ((101600, 1), "INCH", 0.25), ((72, 1), "INCH", None), ((40000, 1), "NONE", None)])
def test_microns_per_pixel_come_from_the_resolution_tags_when_plausible(tmp_path, field_image, resolution, unit, expected):
    tifffile.imwrite(tmp_path / "field.tif", field_image, photometric="rgb", resolution=resolution, resolutionunit=unit)
    mpp = open_slide(tmp_path / "field.tif").mpp
    assert (mpp is None) if expected is None else mpp == pytest.approx(expected)


def test_plausible_mpp_refuses_placeholders():
    assert plausible_mpp("0.2527") == pytest.approx(0.2527)
    assert plausible_mpp("353") is None and plausible_mpp("") is None and plausible_mpp(None) is None


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_slide_is_one_line_naming_it(pyramid, tmp_path, damage):
    path, _ = pyramid
    data = path.read_bytes()
    broken = tmp_path / "broken.tiff"
    broken.write_bytes({"empty": b"", "truncated": data[:len(data) // 3], "garbage": b"II*\x00" + bytes(5000)}[damage])
    with pytest.raises(UserError, match="broken.tiff"):
        reader = open_slide(broken)
        reader.read(0, 0, *reader.shape)  # a truncated file may open and fail only where its tiles are missing


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        open_slide(tmp_path / "nothing.svs")
