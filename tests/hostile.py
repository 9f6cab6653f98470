"""Generated hostile inputs for the property tests (Hypothesis): what a user's folder may hold, written to disk.

Images of any size from 1 px, grey, RGB or RGBA (TIFF: grey + alpha too), 8- or 16-bit or float (constant, or with
NaN), as PNG, BMP, JPEG or TIFF (planar too), whole, cut short or empty; masks that are empty, full, inverted, off
by a pixel or of another size; polygon (.dat) files of any text. Arrays come from a drawn seed, so a failing example
shrinks to small sizes and seed 0 and reads back as a few numbers.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import tifffile
from hypothesis import settings
from hypothesis import strategies as st

# suffix on disk -> pixel types the format stores losslessly (JPEG: lossy, its pixels are not compared)
FORMATS = {".png": ("uint8", "uint16"), ".bmp": ("uint8",), ".jpg": ("uint8",), ".tif": ("uint8", "uint16", "float32")}
SCALE = {"uint8": 255, "uint16": 65535, "float32": 1.0}  # the value of white


def examples(count: int) -> int:
    """max_examples for a test cheap enough for `count` examples in the suite; the explore profile's, if larger."""
    return max(count, settings().max_examples)


@dataclass
class GeneratedImage:
    pixels: np.ndarray  # as stored: [H, W] grey or [H, W, C] grey + alpha or RGB(A), in RGB order
    suffix: str
    planar: bool = False  # TIFF: one plane per channel
    compressed: bool = False  # TIFF: zlib (not mappable by region)
    damage: Optional[str] = None  # None, "cut" (truncated) or "empty" (zero bytes)

    @property
    def readable(self) -> bool:
        """Whether a reader must decode it (else: one clear line)."""
        return self.damage is None and bool(np.isfinite(self.pixels).all())

    def expected_rgb(self) -> Optional[np.ndarray]:
        """uint8 RGB [H, W, 3] the readers must return: 16-bit / 257, float 0..1 * 255, alpha dropped (None: JPEG)."""
        if self.suffix == ".jpg":
            return None
        pixels = self.pixels.astype(np.float64) * 255 / SCALE[self.pixels.dtype.name]
        rgb = np.round(pixels).astype(np.uint8)
        grey = rgb if rgb.ndim == 2 else rgb[..., 0] if rgb.shape[2] == 2 else None
        return np.repeat(grey[..., None], 3, axis=2) if grey is not None else rgb[..., :3]

    def write(self, path: Path) -> Path:
        """Write the image to `path` (its suffix is replaced), damaged as drawn; returns the path written."""
        path = Path(path).with_suffix(self.suffix)
        if self.suffix == ".tif":
            write_tiff(path, self.pixels, self.planar, self.compressed)
        else:
            rgb = self.pixels
            assert cv2.imwrite(str(path), rgb if rgb.ndim == 2 else rgb[..., [2, 1, 0, 3][:rgb.shape[2]]])
        data = path.read_bytes()
        if self.damage is not None:
            path.write_bytes(b"" if self.damage == "empty" else data[:len(data) * 3 // 4])
        return path


def write_tiff(path: Path, pixels: np.ndarray, planar: bool = False, compressed: bool = False) -> None:
    """Grey [H, W], grey + alpha [H, W, 2], RGB or RGBA [H, W, 3 or 4] as a TIFF, planar (a plane per channel) or not."""
    extra = {"compression": "zlib"} if compressed else {}
    if pixels.ndim == 2:
        tifffile.imwrite(path, pixels, photometric="minisblack", **extra)
        return
    if pixels.shape[2] in (2, 4):
        extra["extrasamples"] = ["unassalpha"]
    stored = np.moveaxis(pixels, -1, 0) if planar else pixels
    tifffile.imwrite(path, stored, photometric="minisblack" if pixels.shape[2] == 2 else "rgb",
                     planarconfig="separate" if planar else "contig", **extra)


@st.composite
def pixels(draw, max_side: int = 24, dtypes=("uint8", "uint16", "float32"), channels=(1, 3, 4)) -> np.ndarray:
    """An image array of a drawn size, depth and channel count: noise, a constant, or a dark disc on a pale ground."""
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    dtype, count = draw(st.sampled_from(dtypes)), draw(st.sampled_from(channels))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.random((height, width, count))
    kind = draw(st.sampled_from(["noise", "constant", "disc"]))
    if kind == "constant":
        values[:] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    elif kind == "disc":
        rows, cols = np.mgrid[:height, :width]
        values[:] = 0.9
        values[(rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (min(height, width) / 3) ** 2] = 0.3
    array = (values * SCALE[dtype]).astype(dtype)
    return array[..., 0] if count == 1 else array


@st.composite
def images(draw, max_side: int = 24, damage: bool = True, nan: bool = True) -> GeneratedImage:
    """A GeneratedImage in any format that stores its pixel type; some cut short, empty, or with a NaN pixel."""
    suffix = draw(st.sampled_from(sorted(FORMATS)))
    channels = {".jpg": (1, 3), ".tif": (1, 2, 3, 4)}.get(suffix, (1, 3, 4))
    array = draw(pixels(max_side, FORMATS[suffix], channels))
    if nan and array.dtype.kind == "f" and draw(st.integers(0, 4)) == 0:
        array.flat[draw(st.integers(0, array.size - 1))] = np.nan
    planar = suffix == ".tif" and array.ndim == 3 and draw(st.booleans())
    compressed = suffix == ".tif" and draw(st.booleans())
    damaged = draw(st.sampled_from([None] * 4 + ["cut", "empty"])) if damage else None
    return GeneratedImage(array, suffix, planar, compressed, damaged)


MASK_FAULTS = ("none", "empty", "full", "inverted", "shifted", "wrong_size", "one_pixel", "soft_edges", "rgba", "16bit")


def draw_mask(shape, fault: str, centre_offset: int = 0, radius_share: float = 0.33) -> np.ndarray:
    """A 0/255 ellipse mask of `shape`, with one of MASK_FAULTS."""
    height, width = shape
    mask = np.zeros(shape, np.uint8)
    axes = (max(int(width * radius_share), 1), max(int(height * radius_share), 1))
    cv2.ellipse(mask, (width // 2 + centre_offset, height // 2), axes, 0, 0, 360, 255, -1)
    if fault == "empty":
        mask[:] = 0
    elif fault == "full":
        mask[:] = 255
    elif fault == "inverted":
        mask = 255 - mask
    elif fault == "shifted":
        mask = np.roll(mask, 1, axis=1)
    elif fault == "wrong_size":
        mask = np.zeros((height + 1, width), np.uint8)
    elif fault == "one_pixel":
        mask[:] = 0
        mask[height // 2, width // 2] = 255
    elif fault == "soft_edges":
        mask = cv2.GaussianBlur(mask, (5, 5), 2)
    elif fault == "rgba":
        mask = cv2.cvtColor(mask, cv2.COLOR_GRAY2BGRA)
    elif fault == "16bit":
        mask = mask.astype(np.uint16) * 257
    return mask


number_text = st.one_of(st.floats(-5, 60).map(lambda v: f"{v:.3g}"), st.integers(-10, 70).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["1e39", "-1e400", "1e20", "nan", "abc", "", "1,5", "0x10", "٣"]))
polygon_line = st.one_of(st.tuples(number_text, number_text).map(",".join),
                         st.tuples(number_text, number_text).map(" ".join), number_text, st.text(max_size=8))
# .dat text: lines of anything, or plausible points (inside, outside, on a line), or bytes decoded as Latin-1
polygon_text = st.one_of(
    st.lists(polygon_line, max_size=6).map("\n".join),
    st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 40)), max_size=6).map(
        lambda points: "\n".join(f"{x},{y}" for x, y in points)),
    st.binary(max_size=40).map(lambda data: data.decode("latin-1")),
)
