"""CellRecord: the one record every cell layout yields; everything after the readers uses only it."""
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
        """The cell's RGB image [H, W, 3]: its file, or its box of a cluster image."""
        image = read_image(self.image_path)
        if self.crop_box is not None:
            x0, y0, x1, y1 = self.crop_box
            image = image[y0:y1, x0:x1]  # slicing clips the far edges at the image border
        return image
