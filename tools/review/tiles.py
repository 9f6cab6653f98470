"""Deep Zoom tiles of a slide or field, read on demand through the project's slide readers (no pre-tiling).

Deep Zoom level L of a W x H image is the image shrunk by 2^(top - L) (top: the level at full resolution), cut
into TILE_PX tiles that overlap their neighbours by OVERLAP_PX. Where OpenSlide reads the file, its own
DeepZoomGenerator cuts them; otherwise each tile is read from the pyramid level closest above its scale (the
slide's own levels, else a shrunk copy of the whole image kept in memory) and shrunk to size. A tile of a low
zoom of a slide without a pyramid would read a large part of the slide at full resolution: those come from one
overview made once (at most OVERVIEW_SIDE px a side), so no tile costs more than a few reads.
"""
import math
import threading
from typing import Optional, Tuple

import cv2
import numpy as np

from tools.fields.readers import ImageReader, OpenSlideReader, SlideReader

TILE_PX = 254  # with the overlap, 256 px tiles: OpenSlide's Deep Zoom server default
OVERLAP_PX = 1
JPEG_QUALITY = 80
OVERVIEW_SIDE = 4096  # px: tiles coarser than this overview's scale are cut from it
MAX_READ_SHRINK = 8  # a tile is read from a level at most this many times finer than itself (else the overview)


class TileError(LookupError):
    """A tile that does not exist (level, column or row out of range)."""


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return encoded.tobytes()


class TileSource:
    """Deep Zoom tiles of one reader; `tile` is safe to call from several threads."""

    def __init__(self, reader: SlideReader):
        self.reader = reader
        self.height, self.width = reader.shape
        self.levels = int(math.ceil(math.log2(max(self.width, self.height, 1)))) + 1
        self.deep_zoom = None
        if isinstance(reader, OpenSlideReader):
            from openslide.deepzoom import DeepZoomGenerator

            self.deep_zoom = DeepZoomGenerator(reader.slide, TILE_PX, OVERLAP_PX, limit_bounds=False)
            self.levels = self.deep_zoom.level_count
        self.lock = threading.Lock()
        self._overview: Optional[Tuple[np.ndarray, float]] = None
        self._shrunk = {}  # ImageReader: downsample -> the whole image shrunk by it

    def dzi(self) -> str:
        """The Deep Zoom descriptor (XML) that viewers read first."""
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="jpeg" Overlap="{OVERLAP_PX}" TileSize="{TILE_PX}"><Size Height="{self.height}" '
                f'Width="{self.width}"/></Image>\n')

    def info(self) -> dict:
        return {"width": self.width, "height": self.height, "tileSize": TILE_PX, "overlap": OVERLAP_PX,
                "levels": self.levels}

    def level_size(self, level: int) -> Tuple[int, int]:
        """(width, height) of Deep Zoom level `level`."""
        downsample = 2 ** (self.levels - 1 - level)
        return max(1, math.ceil(self.width / downsample)), max(1, math.ceil(self.height / downsample))

    def tile_box(self, level: int, col: int, row: int) -> Tuple[int, int, int, int]:
        """x0, y0, x1, y1 of a tile in its level's px, overlap included; TileError when it does not exist."""
        if not 0 <= level < self.levels:
            raise TileError(f"level {level} does not exist (0..{self.levels - 1})")
        width, height = self.level_size(level)
        cols, rows = math.ceil(width / TILE_PX), math.ceil(height / TILE_PX)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileError(f"tile {col}_{row} does not exist at level {level} ({cols} x {rows} tiles)")
        x0, y0 = col * TILE_PX - (OVERLAP_PX if col else 0), row * TILE_PX - (OVERLAP_PX if row else 0)
        return x0, y0, min((col + 1) * TILE_PX + OVERLAP_PX, width), min((row + 1) * TILE_PX + OVERLAP_PX, height)

    def tile(self, level: int, col: int, row: int) -> bytes:
        """The JPEG bytes of one tile; TileError when it does not exist."""
        box = self.tile_box(level, col, row)
        if self.deep_zoom is not None:
            return jpeg_bytes(np.asarray(self.deep_zoom.get_tile(level, (col, row)).convert("RGB")))
        return jpeg_bytes(self.tile_pixels(level, box))

    def tile_pixels(self, level: int, box: Tuple[int, int, int, int]) -> np.ndarray:
        """uint8 RGB of a tile's box of Deep Zoom level `level`, from the cheapest source fine enough."""
        downsample = 2 ** (self.levels - 1 - level)
        x0, y0, x1, y1 = box
        out_size = (x1 - x0, y1 - y0)
        source, source_downsample = self.source_for(downsample)
        factor = downsample / source_downsample  # source px per tile px
        top, left = int(round(y0 * factor)), int(round(x0 * factor))
        bottom, right = int(round(y1 * factor)), int(round(x1 * factor))
        pixels = source(top, left, bottom, right)
        canvas = np.full((bottom - top, right - left, 3), 255, np.uint8)
        canvas[:pixels.shape[0], :pixels.shape[1]] = pixels  # the last tiles may reach past a rounded-up level
        if canvas.shape[1::-1] == out_size:
            return canvas
        return cv2.resize(canvas, out_size, interpolation=cv2.INTER_AREA)

    def source_for(self, downsample: float):
        """(read(top, left, bottom, right), its downsample): the coarsest level at most `downsample`; the overview
        when that level is more than MAX_READ_SHRINK times finer than the tile."""
        if isinstance(self.reader, ImageReader):
            return self.shrunk_image(downsample)
        levels = [(d, i) for i, d in enumerate(self.reader.downsamples) if d <= downsample * 1.01]
        level_downsample, level = max(levels)
        if downsample / level_downsample > MAX_READ_SHRINK:
            overview, overview_downsample = self.overview()
            if overview_downsample <= downsample * 1.01:
                return (lambda t, l, b, r: overview[t:b, l:r]), overview_downsample
        return (lambda t, l, b, r: self.reader.read(t, l, b, r, level)), level_downsample

    def overview(self) -> Tuple[np.ndarray, float]:
        """The whole slide at most OVERVIEW_SIDE px a side, made once, and its downsample."""
        from tools.fields.tissue import read_overview

        with self.lock:
            if self._overview is None:
                downsample = 2 ** math.ceil(math.log2(max(1.0, max(self.width, self.height) / OVERVIEW_SIDE)))
                self._overview = (read_overview(self.reader, downsample), float(downsample))
            return self._overview

    def shrunk_image(self, downsample: float):
        """A plain image shrunk by the largest power of two at most `downsample` (made once per power)."""
        power = 2 ** int(math.floor(math.log2(max(downsample, 1))))
        with self.lock:
            if power not in self._shrunk:
                image = self.reader.image
                self._shrunk[power] = image if power == 1 else cv2.resize(
                    image, (max(1, image.shape[1] // power), max(1, image.shape[0] // power)), interpolation=cv2.INTER_AREA)
            shrunk = self._shrunk[power]
        return (lambda t, l, b, r: shrunk[t:b, l:r]), float(power)
