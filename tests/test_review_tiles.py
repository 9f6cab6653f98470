"""tools/review/tiles.py: Deep Zoom tiles through the slide readers agree with OpenSlide's DeepZoomGenerator on the
same slide, with the image itself at full resolution, and with a shrunk image at low zoom (pyramid or not)."""
import cv2
import numpy as np
import pytest

from tools.fields.make_slide import make_slide
from tools.fields.readers import ImageReader, OpenSlideReader, TiffReader
from tools.review.tiles import OVERLAP_PX, TILE_PX, TileError, TileSource


def decoded(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def slide(demo_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "slide.tiff"
    make_slide(sorted(demo_root.glob("im_*/im_*/002.bmp")), path, side=2048, mpp=0.5, quality=95, seed=0)
    return path


def test_tiles_through_tifffile_match_openslides_deep_zoom(slide):
    ours, theirs = TileSource(TiffReader(slide)), TileSource(OpenSlideReader(slide))
    assert theirs.deep_zoom is not None and ours.deep_zoom is None
    assert ours.levels == theirs.levels == 12
    for level, col, row in [(11, 0, 0), (11, 3, 2), (11, 8, 8), (9, 1, 1), (6, 0, 0), (0, 0, 0)]:
        mine, openslide = decoded(ours.tile(level, col, row)), decoded(theirs.tile(level, col, row))
        assert mine.shape == openslide.shape
        difference = np.abs(mine.astype(int) - openslide.astype(int)).mean()
        assert difference < 4, (level, col, row, difference)  # two JPEG encodings, two resamplers


def test_a_full_resolution_tile_is_the_image_with_its_overlap(demo_root):
    path = sorted(demo_root.glob("im_*/im_*/002.bmp"))[0]
    reader = ImageReader(path)
    source = TileSource(reader)
    top = source.levels - 1
    assert source.tile_box(top, 1, 0) == (TILE_PX - OVERLAP_PX, 0, min(2 * TILE_PX + OVERLAP_PX, reader.shape[1]),
                                          min(TILE_PX + OVERLAP_PX, reader.shape[0]))
    tile = decoded(source.tile(top, 1, 0))
    x0, y0, x1, y1 = source.tile_box(top, 1, 0)
    assert np.abs(tile.astype(int) - reader.image[y0:y1, x0:x1].astype(int)).mean() < 3
    whole = decoded(source.tile(top - 2, 0, 0))  # a quarter of the size: one tile
    shrunk = cv2.resize(reader.image, whole.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(whole.astype(int) - shrunk.astype(int)).mean() < 5  # JPEG at quality 80 on a small, busy tile


def test_a_slide_without_a_pyramid_serves_low_zoom_from_one_overview(slide, tmp_path):
    import tifffile

    image = TiffReader(slide).read(0, 0, 2048, 2048)
    flat = tmp_path / "flat.tiff"
    tifffile.imwrite(flat, image, tile=(256, 256), compression="zlib")
    source = TileSource(TiffReader(flat))
    assert source.reader.downsamples == (1.0,)
    low = decoded(source.tile(4, 0, 0))  # 2048 / 128 = 16 px
    assert source._overview is not None and low.shape == (16, 16, 3)
    expected = cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(low.astype(int) - expected.astype(int)).mean() < 6


@pytest.mark.parametrize("level, col, row", [(12, 0, 0), (-1, 0, 0), (11, 9, 0), (11, 0, 9), (0, 1, 0)])
def test_tiles_that_do_not_exist_are_tile_errors(slide, level, col, row):
    with pytest.raises(TileError):
        TileSource(TiffReader(slide)).tile(level, col, row)
