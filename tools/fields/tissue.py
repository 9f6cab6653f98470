"""Where the cells are on a slide: a coarse map of tissue against glass, read from a low-resolution level.

Most of a cytology slide is empty glass. Before any model runs, the slide is read at a small overview scale
(OVERVIEW_PX_PER_UNIT px per unit of UNIT_PX x UNIT_PX slide pixels, from the coarsest pyramid level that still
gives that many, window by window so memory stays small), the glass colour is taken from the overview's
commonest grey, and a unit is tissue when any of its overview pixels differs from the glass by more than the
threshold. Blocks without tissue are never read; inside a block, the field model's tiles are laid over the tissue's
bounding box and a tile whose own pixels hold no tissue is not run (its context still comes from the image around
it, so nothing needs to grow the map: nuclei, the dark part the models look for, are tissue wherever they are).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from tools.fields.readers import SlideReader

UNIT_PX = 64  # side of a tissue unit in slide (level-0) px: a cell or two, so a lone cluster's tiles hug it
OVERVIEW_PX_PER_UNIT = 2  # overview pixels along a unit's side (32 slide px each: a 100,000 px slide's overview is 29 MB)
MIN_TISSUE_DIFFERENCE = 10  # grey levels from the glass; faint cytoplasm differs by 25-40 at the overview scale
GLASS_NOISE_FACTOR = 6  # ... or this many times the glass's own noise, whichever is larger
WINDOW_PX = 4096  # side of the windows of the overview's source level read at once (48 MB of RGB)


@dataclass
class TissueMap:
    units: np.ndarray  # bool [ceil(H / unit), ceil(W / unit)]: True where the models run
    unit: int  # slide px per unit
    overview: np.ndarray  # uint8 RGB of the slide at OVERVIEW_PX_PER_UNIT px per unit (the report's thumbnail)
    glass_rgb: Tuple[int, int, int]
    threshold: float  # grey levels from the glass that count as tissue

    @property
    def tissue_share(self) -> float:
        return float(self.units.mean()) if self.units.size else 0.0

    def region(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """The units that a slide region [top:bottom, left:right] touches, as a bool array of units."""
        u = self.unit
        return self.units[max(top, 0) // u:-(-max(bottom, 0) // u), max(left, 0) // u:-(-max(right, 0) // u)]

    def any_in(self, top: int, left: int, bottom: int, right: int) -> bool:
        return bool(self.region(top, left, bottom, right).any())

    def box_in(self, top: int, left: int, bottom: int, right: int) -> Optional[Tuple[int, int, int, int]]:
        """(top, left, bottom, right) in slide px of the tissue units inside a region, clipped to it; None: none."""
        u, units = self.unit, self.region(top, left, bottom, right)
        rows, cols = np.nonzero(units.any(axis=1))[0], np.nonzero(units.any(axis=0))[0]
        if rows.size == 0:
            return None
        first_row, first_col = max(top, 0) // u, max(left, 0) // u
        return (max((first_row + rows[0]) * u, top), max((first_col + cols[0]) * u, left),
                min((first_row + rows[-1] + 1) * u, bottom), min((first_col + cols[-1] + 1) * u, right))


def overview_level(reader: SlideReader, px_per_overview: float) -> int:
    """The coarsest level whose pixels are no larger than an overview pixel."""
    fitting = [level for level, downsample in enumerate(reader.downsamples) if downsample <= px_per_overview]
    return max(fitting, key=lambda level: reader.downsamples[level]) if fitting else 0


def read_overview(reader: SlideReader, px_per_overview: float) -> np.ndarray:
    """The slide shrunk so that one pixel covers px_per_overview slide pixels, read window by window (a slide
    without a pyramid is read at full resolution, so no more than WINDOW_PX x WINDOW_PX of it at once)."""
    level = overview_level(reader, px_per_overview)
    height, width = reader.level_shape(level)
    shrink = px_per_overview / reader.downsamples[level]  # level px per overview px
    out_height, out_width = (max(1, int(round(side / shrink))) for side in (height, width))
    overview = np.empty((out_height, out_width, 3), np.uint8)
    for top in range(0, height, WINDOW_PX):
        out_top, out_bottom = int(round(top / shrink)), min(int(round(min(top + WINDOW_PX, height) / shrink)), out_height)
        for left in range(0, width, WINDOW_PX):
            out_left, out_right = int(round(left / shrink)), min(int(round(min(left + WINDOW_PX, width) / shrink)), out_width)
            if out_bottom <= out_top or out_right <= out_left:
                continue
            window = reader.read(top, left, min(top + WINDOW_PX, height), min(left + WINDOW_PX, width), level)
            overview[out_top:out_bottom, out_left:out_right] = cv2.resize(
                window, (out_right - out_left, out_bottom - out_top), interpolation=cv2.INTER_AREA)
    return overview


def glass_colour(overview: np.ndarray) -> Tuple[np.ndarray, float]:
    """(RGB of the glass, its noise in grey levels): the pixels at the commonest grey value and next to it."""
    grey = cv2.cvtColor(overview, cv2.COLOR_RGB2GRAY)
    # the mode of a histogram smoothed over 7 grey levels: the glass's values spread with its noise, while a large
    # uniform object (a stain blot, a label) piles up on one value and would win an unsmoothed count
    mode = int(np.convolve(np.bincount(grey.ravel(), minlength=256), np.ones(7), mode="same").argmax())
    near = np.abs(grey.astype(np.int16) - mode) <= 3
    glass = np.median(overview[near], axis=0)
    noise = 1.4826 * float(np.median(np.abs(grey[near].astype(np.float32) - mode)))
    return glass, noise


def find_tissue(reader: SlideReader, unit: int = UNIT_PX, threshold: Optional[float] = None) -> TissueMap:
    """The tissue map of a slide (module docstring); threshold: grey levels from the glass (default: automatic)."""
    overview = read_overview(reader, unit / OVERVIEW_PX_PER_UNIT)
    glass, noise = glass_colour(overview)
    threshold = threshold if threshold is not None else max(MIN_TISSUE_DIFFERENCE, GLASS_NOISE_FACTOR * noise)
    differs = (np.abs(overview.astype(np.float32) - glass).max(axis=2) > threshold).astype(np.uint8)
    rows, cols = (-(-side // unit) for side in reader.shape)
    # a unit is tissue when any of its overview pixels is (max-pool the pixels onto the unit grid)
    padded = np.zeros((rows * OVERVIEW_PX_PER_UNIT, cols * OVERVIEW_PX_PER_UNIT), np.uint8)
    h, w = min(differs.shape[0], padded.shape[0]), min(differs.shape[1], padded.shape[1])
    padded[:h, :w] = differs[:h, :w]
    units = padded.reshape(rows, OVERVIEW_PX_PER_UNIT, cols, OVERVIEW_PX_PER_UNIT).max(axis=(1, 3)).astype(bool)
    return TissueMap(units, unit, overview, tuple(int(v) for v in glass), float(threshold))


def everywhere(reader: SlideReader, unit: int = UNIT_PX) -> TissueMap:
    """A map that runs the models on the whole image (no glass skipped): --tissue-threshold 0 and small fields."""
    rows, cols = (-(-side // unit) for side in reader.shape)
    return TissueMap(np.ones((rows, cols), bool), unit, np.zeros((1, 1, 3), np.uint8), (255, 255, 255), 0.0)
