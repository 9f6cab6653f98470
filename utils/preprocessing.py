"""Image and mask reading, polygon rasterisation, letterboxing, normalisation and mask clean-up.

Every image is letterboxed (aspect-preserving resize, then centred padding to a square): cells
are not square, and squashing them would distort the size and shape that separate the classes.
Nothing here knows about datasets, models or runs; augmentation lives with the training data path
(tools/data_loader.py).
"""
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from utils.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Pap-smear backgrounds are pale; padding with a pale grey keeps the pad from looking like a dark cell
PAD_RGB = (230, 230, 230)


@contextmanager
def quiet_decoders():
    """Silence OpenCV's and tifffile's own logs while decoding: our error names the file; their lines would only add
    noise (tifffile warns of every odd tag of a truncated file)."""
    level, tifffile_log = cv2.utils.logging.getLogLevel(), logging.getLogger("tifffile")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    tifffile_log.disabled = True
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
        tifffile_log.disabled = False


PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"


def cut_short(data: bytes) -> bool:
    """Whether PNG or JPEG bytes end before their end marker (anything after it is allowed). Their decoders would
    fail with a line of their own on stderr (PNG), or fill the missing rows with grey and carry on (JPEG)."""
    if data.startswith(PNG_SIGNATURE):
        return PNG_END not in data  # its end chunk (a trailer may follow)
    if data.startswith(JPEG_START):
        return data.rfind(JPEG_END) < data.rfind(JPEG_SCAN)  # the last scan never ends (a thumbnail's end is earlier)
    return False


TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


CODEC_MISSING = ("imagecodecs", "not supported", "not implemented", "not a known")  # tifffile's words for it


def read_tiff(path: Path):
    """The first page of a TIFF read by tifffile, in OpenCV's layout (grey [H, W]; BGR or BGRA [H, W, C]).

    OpenCV's own TIFF reading multiplies the colours by the alpha channel, returns whatever lay in memory for planar
    16-bit RGBA, and decodes a planar file cut short without a word (all found by the property tests); tifffile gives
    the stored samples or fails.

    Raises:
        LookupError: tifffile has no codec for the file's compression (OpenCV may have one).
        ValueError: the file is damaged, cut short or not a TIFF it can read.
    """
    import tifffile

    try:
        with quiet_decoders(), tifffile.TiffFile(str(path)) as tiff:
            page = tiff.pages[0]
            pixels, axes = page.asarray(), page.axes
    except Exception as error:  # tifffile raises many types for what it cannot decode
        if isinstance(error, NotImplementedError) or any(words in str(error) for words in CODEC_MISSING):
            raise LookupError(str(error)) from error
        raise ValueError(str(error)) from error
    if axes.startswith("S"):  # planar: one plane per sample
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):  # grey, grey + alpha
        return pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return pixels[..., [2, 1, 0, 3][:pixels.shape[2]]]
    if pixels.ndim != 2:
        raise ValueError(f"{pixels.shape} samples: not grey, RGB or RGBA")
    return pixels


def imread_unchanged(path: Path):
    """An image file's pixels keeping depth and channels, as cv2.imread gives them (the format is told by the bytes,
    not the extension); None when the file cannot be decoded or is a PNG or JPEG cut short."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
    except OSError:
        return None
    if head.startswith(TIFF_SIGNATURES):
        try:
            return read_tiff(path)
        except ValueError:
            return None
        except LookupError:
            pass  # a compression tifffile has no codec for: OpenCV's libtiff may have it
    with quiet_decoders():
        if not head.startswith((PNG_SIGNATURE, JPEG_START)):
            return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        data = Path(path).read_bytes()  # checked whole, then decoded from the same bytes
        return None if cut_short(data) else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def unreadable_reason(path: Path) -> str:
    """Why OpenCV could not decode a file, in the user's terms."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "empty file"
    return "truncated, damaged or not an image"


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Finite float pixels as uint8: on the usual scale 0..1 (or 0..255) they keep their values, a constant image its
    shade; any other range is stretched to 0..255."""
    low, high = float(image.min()), float(image.max())
    if low >= 0 and high <= 1:
        return np.round(image.astype(np.float64) * 255).astype(np.uint8)  # float32 products round 229.49999 to 230
    if low >= 0 and high <= 255:
        return np.round(image).astype(np.uint8)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any decoded OpenCV image (grey, BGR, BGRA; 8-bit, 16-bit, other integers or finite floats) as uint8 RGB [H, W, 3]."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = float_to_uint8(image)
    elif image.dtype != np.uint8:  # signed or 32- and 64-bit integers: no usual scale
        image = cv2.normalize(image.astype(np.float64), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Read any image OpenCV understands as uint8 RGB [H, W, 3] (grayscale, RGBA and 16-bit included)."""
    image = imread_unchanged(path)
    if image is None or image.size == 0:
        raise UserError(f"{path}: cannot read this image, {unreadable_reason(path)}; replace or remove it")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():  # they would become black or white
        raise UserError(f"{path}: the image holds NaN or infinite pixel values; save it without them, or remove it")
    return to_rgb8(image)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """The mask policy: a pixel is foreground when it is brighter than half the mask's brightest value.

    A binary mask (0/1, 0/255, 0/65535, 0/255 in a 16-bit file) keeps all its foreground; the soft edges
    of an antialiased or JPEG-saved mask are cut at half height instead of counting as foreground, which
    would inflate every area. Colour masks are read by their brightest channel (alpha says nothing).
    """
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)
    peak = mask.max()
    return mask > peak / 2 if peak > 0 else np.zeros(mask.shape, bool)


def read_mask(path: Path, expected_shape: Tuple[int, int]) -> np.ndarray:
    """Read a mask image as bool [H, W] (binarize_mask's policy); its size must be expected_shape."""
    mask = imread_unchanged(path)  # not GRAYSCALE: that drops the low byte of 16-bit masks
    if mask is None or mask.size == 0:
        raise UserError(f"{path}: cannot read this mask, {unreadable_reason(path)}; replace it or remove the cell")
    if mask.shape[:2] != tuple(expected_shape):
        raise UserError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{expected_shape[1]}x{expected_shape[0]}; redraw the mask at its image's size or remove the cell"
        )
    return binarize_mask(mask)


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: Tuple[int, int]) -> np.ndarray:
    """Fill polygons ([N, 2] arrays of x, y in this image's own pixel coordinates) into a bool [H, W] mask."""
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4  # draw at 1/16-pixel precision instead of rounding every vertex to whole pixels
    for polygon in polygons:
        points = np.round(polygon * (1 << shift)).astype(np.int32)
        cv2.fillPoly(mask, [points.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


@dataclass(frozen=True)
class LetterboxBox:
    """Where the resized image sits inside the square canvas."""

    top: int
    left: int
    height: int
    width: int


def letterbox_box(height: int, width: int, size: int) -> LetterboxBox:
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return LetterboxBox((size - new_h) // 2, (size - new_w) // 2, new_h, new_w)


def letterbox(image: np.ndarray, masks: Sequence[np.ndarray], size: int) -> Tuple[np.ndarray, List[np.ndarray], LetterboxBox]:
    """Resize keeping the aspect ratio and pad to size x size; masks follow with nearest-neighbour."""
    box = letterbox_box(image.shape[0], image.shape[1], size)
    interpolation = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_LINEAR
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = PAD_RGB
    resized = cv2.resize(image, (box.width, box.height), interpolation=interpolation)
    canvas[box.top:box.top + box.height, box.left:box.left + box.width] = resized
    boxed_masks = []
    for mask in masks:
        boxed = np.zeros((size, size), dtype=np.uint8)
        boxed[box.top:box.top + box.height, box.left:box.left + box.width] = cv2.resize(
            mask.astype(np.uint8), (box.width, box.height), interpolation=cv2.INTER_NEAREST)
        boxed_masks.append(boxed)
    return canvas, boxed_masks, box


def unletterbox(prob_map: np.ndarray, box: LetterboxBox, shape: Tuple[int, int]) -> np.ndarray:
    """Cut the image region out of a square [S, S] probability map and resize it to the original shape."""
    region = prob_map[box.top:box.top + box.height, box.left:box.left + box.width]
    return cv2.resize(region, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W] normalised with ImageNet statistics."""
    return ((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def cell_channels(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The classifier's input for one letterboxed cell: normalised RGB, then cell and nucleus masks.

    Args:
        image: uint8 RGB [S, S, 3].
        masks: 0/1 [2, S, S]: cell (whole cell), nucleus.

    Returns:
        float32 [5, S, S].
    """
    return np.concatenate([normalize_image(image), np.asarray(masks, dtype=np.float32)])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background: cells and nuclei are solid.

    The background that a flood from outside the mask (4-connected) cannot reach is a hole: the same pixels as
    scipy.ndimage.binary_fill_holes, ten times faster with OpenCV's flood fill (a field's cells call it per cell).
    """
    mask = np.asarray(mask, bool)
    outside = np.pad(mask.astype(np.uint8), 1)
    cv2.floodFill(outside, None, (0, 0), 1)
    return mask | (outside[1:-1, 1:-1] == 0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component (a cell image shows one main cell and one main nucleus)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
