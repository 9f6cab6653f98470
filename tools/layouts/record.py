"""CellRecord: the one record every cell layout yields; everything after the readers uses only it."""
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from utils.preprocessing import read_image


@dataclass
class CellRecord:
    """One cell image and where its masks come from."""

    sample_id: str  # image path relative to the data root, without extension; unique
    image_path: Path
    label: str
    group: str  # cells of one group always land in the same split
    cyt_mask_path: Optional[Path] = None
    nuc_mask_path: Optional[Path] = None
    cyt_polygons: List[np.ndarray] = field(default_factory=list)  # [N, 2] x, y in image coordinates
    nuc_polygons: List[np.ndarray] = field(default_factory=list)
    polygon_files: Tuple[Path, ...] = ()  # for error messages
    crop_box: Optional[Tuple[int, int, int, int]] = None  # x0, y0, x1, y1 inside image_path
    problem: Optional[str] = None  # under --skip-bad: the error that makes this cell unusable (raised when it is loaded)

    @property
    def has_masks(self) -> bool:
        return self.cyt_mask_path is not None or bool(self.cyt_polygons)

    def load_image(self) -> np.ndarray:
        """The cell's RGB image [H, W, 3]: its file, or its box of a cluster image or field."""
        if self.crop_box is None:
            return read_image(self.image_path)
        x0, y0, x1, y1 = self.crop_box
        return shared_image(self.image_path)[y0:y1, x0:x1].copy()  # slicing clips the far edges at the image border


SHARED_IMAGES = 4  # decoded images kept for the cells cut from them (a CRIC field holds ~25 cells, read in a row)


def shared_image(path: Path) -> np.ndarray:
    """The decoded image, read-only, kept while its cells are read: the cells of one image are sorted together, so
    it is decoded once, not once per cell (4,159 CRIC cells from 173 fields: 3 minutes per pass otherwise)."""
    try:
        stat = os.stat(path)
    except OSError:
        return read_image(path)  # gone or unreadable: read_image says so in one line
    return _decoded(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=SHARED_IMAGES)
def _decoded(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """read_image keyed by the file's stamp, so that an image changed on disk is read again."""
    image = read_image(Path(path))
    image.flags.writeable = False
    return image
