"""What every cell layout reads: class folders and their image files (listed by tools/inputs.py, names matched
without regard to case), SIPaKMeD's .dat polygons, and how a bad cell is kept aside under --skip-bad."""
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from tools.inputs import folder_entries, input_files
from utils.errors import UserError

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_COORDINATE = 1e6  # px; a polygon point further out belongs to no image
SKIP_BAD_HINT = "or pass --skip-bad to leave bad cells out"


# ---------------------------------------------------------------- folders and files

def class_folders(root: Path) -> List[Path]:
    """The folders directly in root, not hidden, not this project's output; a link to another one stays (two classes
    sharing files are refused by check_each_cell_once)."""
    return folder_entries(root)[0]


def image_files(folder: Path) -> List[Path]:
    return input_files([folder], IMAGE_EXTENSIONS, max_depth=1, required=False)


def files_by_lower_name(folder: Path) -> Dict[str, Path]:
    return {p.name.lower(): p for p in input_files([folder], max_depth=1, required=False)}


def check_unique_stems(images: Sequence[Path]) -> None:
    """Two images of one name but for the extension would be one cell id twice (and one mask pair for both)."""
    counts = Counter((p.parent, p.stem.lower()) for p in images)
    twice = [p for p in images if counts[(p.parent, p.stem.lower())] > 1]
    if twice:
        raise UserError(f"{twice[0]} and {twice[1].name}: one cell stored twice under two extensions; "
                        f"keep one of them")


# ---------------------------------------------------------------- bad cells

T = TypeVar("T")


def with_skip_hint(error: UserError) -> UserError:
    """The same one-cell error, its advice extended by the way past it."""
    return UserError(f"{error}, {SKIP_BAD_HINT}")


def read_cell_files(read: Callable[[], T], skip_bad: bool) -> Tuple[Optional[T], Optional[str]]:
    """Run the reading of one cell's files: (result, None), or under --skip-bad (None, the error) for a bad cell.

    Without --skip-bad the error stops the run. With it the cell is still recorded, so the split manifest
    keeps describing the files present, and it is left out when the cells are checked.
    """
    try:
        return read(), None
    except UserError as error:
        if not skip_bad:
            raise with_skip_hint(error) from None
        return None, str(error)


# ---------------------------------------------------------------- .dat polygons

def read_dat_polygon(path: Path) -> np.ndarray:
    """Read a SIPaKMeD boundary file: one `x,y` per line (decimals, scientific notation, spaces allowed)."""
    points = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        try:
            x, y = (float(p) for p in parts)
        except ValueError:
            raise UserError(f"{path}:{line_number}: expected 'x,y' numbers, found {line.strip()[:40]!r}; fix or remove the file")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise UserError(f"{path}:{line_number}: point is not a finite number; fix or remove the file")
        if max(abs(x), abs(y)) > MAX_COORDINATE:  # beyond float32's whole pixels, and any crop box's int range
            raise UserError(f"{path}:{line_number}: point ({x:g}, {y:g}) lies beyond any image; fix or remove the file")
        points.append((x, y))
    if len(points) < 3:
        raise UserError(f"{path}: a polygon needs at least 3 points, found {len(points)}; fix or remove the file")
    polygon = np.asarray(points, dtype=np.float32)
    if cv2.contourArea(polygon) < 1:
        raise UserError(f"{path}: the polygon encloses less than a pixel (its points lie on a line or on one spot); "
                        f"fix or remove the file")
    return polygon


def check_polygons_inside(polygons: Sequence[np.ndarray], files: Sequence[Path], shape: Tuple[int, int]) -> None:
    height, width = shape
    slack = 1.0  # boundary points on the last pixel edge are fine
    for polygon, path in zip(polygons, files):
        xs, ys = polygon[:, 0], polygon[:, 1]
        if xs.min() < -slack or ys.min() < -slack or xs.max() > width - 1 + slack or ys.max() > height - 1 + slack:
            raise UserError(
                f"{path}: points reach ({xs.min():.0f}..{xs.max():.0f}, {ys.min():.0f}..{ys.max():.0f}) outside its "
                f"{width}x{height} image; the coordinates may belong to another image (for SIPaKMeD crops try "
                f"--sipakmed-source clusters)"
            )
