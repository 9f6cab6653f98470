"""Image and mask reading, polygon rasterisation, letterboxing and augmentation.

Every image is letterboxed (aspect-preserving resize, then centred padding to a square): cells
are not square, and squashing them would distort the size and shape that separate the classes.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

from tools.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Pap-smear backgrounds are pale; padding with a pale grey keeps the pad from looking like a dark cell
PAD_RGB = (230, 230, 230)


@contextmanager
def quiet_opencv():
    """Silence OpenCV's own log while decoding: our error names the file; its lines would only add noise."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def imread_unchanged(path: Path):
    """cv2.imread keeping depth and channels (it detects the format from the bytes, not the extension)."""
    with quiet_opencv():
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def unreadable_reason(path: Path) -> str:
    """Why OpenCV could not decode a file, in the user's terms."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "empty file"
    return "truncated, damaged or not an image"


def read_image(path: Path) -> np.ndarray:
    """Read any image OpenCV understands as uint8 RGB [H, W, 3] (grayscale, RGBA and 16-bit included)."""
    image = imread_unchanged(path)
    if image is None or image.size == 0:
        raise UserError(f"{path}: cannot read this image, {unreadable_reason(path)}; replace or remove it")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, expected_shape: Tuple[int, int]) -> np.ndarray:
    """Read a mask image as bool [H, W]; any non-zero pixel is foreground."""
    mask = imread_unchanged(path)  # not GRAYSCALE: that drops the low byte of 16-bit masks
    if mask is None or mask.size == 0:
        raise UserError(f"{path}: cannot read this mask, {unreadable_reason(path)}; replace it or remove the cell")
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)  # alpha says nothing about the cell: an opaque RGBA mask is not all foreground
    if mask.shape != tuple(expected_shape):
        raise UserError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{expected_shape[1]}x{expected_shape[0]}; redraw the mask at its image's size or remove the cell"
        )
    return mask > 0


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
    canvas[box.top:box.top + box.height, box.left:box.left + box.width] = cv2.resize(image, (box.width, box.height), interpolation=interpolation)
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


def build_augmentation(train: bool) -> A.Compose:
    """Augmentations for cytology on letterboxed squares: orientation is arbitrary, stains vary, focus varies."""
    if not train:
        return A.Compose([])
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.85, 1.15), rotate=(-15, 15), translate_percent=(-0.05, 0.05),
                 border_mode=cv2.BORDER_CONSTANT, fill=PAD_RGB, fill_mask=0, p=0.7),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.04, p=0.7),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ])


def seed_augmentation(augment: A.Compose, seed: int) -> None:
    """Seed a pipeline so that its transforms draw independent streams.

    Compose.set_random_seed gives every transform the SAME seed, which makes e.g. the horizontal
    and vertical flips always fire together; each transform gets a seed of its own here.
    """
    augment.set_random_seed(seed)
    for index, transform in enumerate(augment.transforms):
        transform.set_random_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W] normalised with ImageNet statistics."""
    return ((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background: cells and nuclei are solid."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)  # everything reachable from the border is background
    return (padded | (1 - outside)).astype(bool)[1:-1, 1:-1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component (a cell image shows one main cell and one main nucleus)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
