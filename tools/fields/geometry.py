"""How a field is cut into the models' inputs, in numpy alone (no torch): the field model's tiles and the
instance model's window around one nucleus. Shared by training (tools/fields/data.py) and inference (tools/fields/segment.py).
"""
from typing import List, Tuple

import cv2
import numpy as np

from utils.preprocessing import PAD_RGB, normalize_image


def crop_padded(array: np.ndarray, top: int, left: int, size, fill) -> np.ndarray:
    """array[top:top+height, left:left+width], padded with `fill` where the window leaves the array.

    size: the window's side, or its (height, width)."""
    height, width = (size, size) if np.isscalar(size) else size
    out = np.empty((height, width, *array.shape[2:]), array.dtype)
    out[:] = fill
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = array[y0:y1, x0:x1]
    return out


def grid_corners(shape: Tuple[int, int], tile: int) -> List[Tuple[int, int]]:
    """Top-left corners of tiles that cover an image, the last row and column flush with its far edges."""
    def starts(length: int) -> List[int]:
        return sorted({min(start, max(length - tile, 0)) for start in range(0, max(length - tile, 0) + tile, tile)})

    return [(top, left) for top in starts(shape[0]) for left in starts(shape[1])]


def window_corner(centre: Tuple[float, float], window: int) -> Tuple[int, int]:
    """(top, left) of the window of side `window` around centre (row, col)."""
    return int(round(centre[0])) - window // 2, int(round(centre[1])) - window // 2


def window_crop(image: np.ndarray, marker: np.ndarray, centre: Tuple[float, float], window: int,
                size: int) -> Tuple[np.ndarray, np.ndarray]:
    """The window of side `window` around centre (row, col), resized to size x size: (uint8 RGB, uint8 0/1 marker)."""
    top, left = window_corner(centre, window)
    return shrunk_window(crop_padded(image, top, left, window, PAD_RGB),
                         crop_padded(marker.astype(np.uint8), top, left, window, 0), size)


def shrunk_window(rgb: np.ndarray, marker: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """A window's RGB and uint8 0/1 marker resized to the instance model's side, size x size."""
    return (cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA),
            cv2.resize(marker, (size, size), interpolation=cv2.INTER_NEAREST))


def window_input(rgb: np.ndarray, marker: np.ndarray) -> np.ndarray:
    """The instance model's input [4, S, S]: normalised RGB, then the 0/1 marker of the seed nucleus."""
    return np.concatenate([normalize_image(rgb), marker[None].astype(np.float32)])
