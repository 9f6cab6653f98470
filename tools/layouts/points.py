"""The "points" layouts: field images with one annotated point per cell, as CRIC Cervix distributes them.

A points root holds the field images and CRIC's own `classifications.csv` directly in it, one row per squamous
cell, marked by its nucleus centre and labelled in The Bethesda System:

    image_id,image_filename,image_doi,cell_id,bethesda_system,nucleus_x,nucleus_y
    216,011fda505d7e4af4b8cc57545343624d.jpg,10.6084/m9.figshare.12230273,4826,Negative for intraepithelial lesion,368,105

Classes are read as CRIC writes them ("Negative for intraepithelial lesion", "ASC-US", "LSIL", "ASC-H", "HSIL",
"SCC"; "NILM" too) and named by their short names everywhere after. Points are in the image's own pixels
(x = column, y = row), so CRIC as distributed (1376 x 1020 PNG) and a resized copy with its CSV both read
unchanged: nothing here assumes a size. A field without any annotated cell has no row and is not a field here.
Every problem of the CSV is found before any work, each as one line naming the CSV, its line and what to do.
"""
import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tools.config import unknown_name
from tools.layouts.record import CellRecord
from utils.errors import UserError

POINTS_CSV = "classifications.csv"
CSV_COLUMNS = ("image_id", "image_filename", "image_doi", "cell_id", "bethesda_system", "nucleus_x", "nucleus_y")
# The Bethesda System's squamous classes, from least to most severe (the order of the grading metrics)
BETHESDA_CLASSES = ("NILM", "ASC-US", "LSIL", "ASC-H", "HSIL", "SCC")
BETHESDA_GRADES = {"NILM": "NILM", "ASC-US": "low", "LSIL": "low", "ASC-H": "high", "HSIL": "high", "SCC": "high"}
GRADE_NAMES = ("NILM", "low", "high")  # NILM / low grade (ASC-US, LSIL) / high grade (ASC-H, HSIL, SCC)
NORMAL_CLASS = "NILM"  # the only normal Bethesda class: NILM vs abnormal is NILM vs the rest
CRIC_CLASS_NAMES = {"negative for intraepithelial lesion": "NILM", **{name.lower(): name for name in BETHESDA_CLASSES}}
FIX_CSV = "fix the row or remove it"


@dataclass
class FieldPoints:
    """The annotated cells of one field image."""

    field_id: str  # the image's path below the root, without extension
    image_path: Path
    image_id: str  # CRIC's image_id
    cell_ids: Tuple[str, ...]
    points: np.ndarray  # float32 [N, 2] x, y of each nucleus centre in image pixels
    labels: Tuple[str, ...]  # short Bethesda names (BETHESDA_CLASSES), one per point
    size: Tuple[int, int] = (0, 0)  # the image's width, height in pixels


def is_points_root(root) -> bool:
    """Whether `root` is a points layout: a classifications.csv directly in it."""
    return (Path(root) / POINTS_CSV).is_file()


def short_class_name(text: str, where: str) -> str:
    """The short Bethesda name of a class as CRIC writes it (or already short), any case; else a UserError."""
    name = CRIC_CLASS_NAMES.get(" ".join(text.split()).lower())
    if name is None:
        known = ["Negative for intraepithelial lesion", *BETHESDA_CLASSES]
        raise UserError(f"{where}: {unknown_name(text, known, 'Bethesda class')}; {FIX_CSV}")
    return name


def coordinate(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise UserError(f"{where}: {column} {text!r} is not a number; {FIX_CSV}")
    return value


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) of an image from its header alone (no pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UserError(f"{path}: cannot read this image ({error}); replace or remove it, or its rows of {POINTS_CSV}")


def read_rows(csv_path: Path) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, row) of every data row, after checking the header names every column."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as table:
            reader = csv.DictReader(table)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [column for column in CSV_COLUMNS if column not in header]
            if missing:
                found = ", ".join(header) or "no header"
                raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)} (found: {found}); "
                                f"the first line must name {','.join(CSV_COLUMNS)}")
            reader.fieldnames = header
            rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{csv_path}: cannot be read as CSV ({error}); save it as comma-separated UTF-8 text")
    if not rows:
        raise UserError(f"{csv_path}: no annotated cell (only a header); add rows or point --data-root elsewhere")
    return rows


def resolved_image(root: Path, name: str, where: str) -> Path:
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"{where}: image {name!r} lies outside {root}; name the image by its path inside the root")
    path = root / name
    if not name or not path.is_file():
        near = sorted(p.name for p in root.iterdir() if p.is_file() and p.name != POINTS_CSV)
        raise UserError(f"{where}: image {name!r} does not exist in {root} ({unknown_name(name, near, 'image', str(root))}); "
                        f"add the image or remove its rows")
    return path


def check_unique(rows: Sequence[Tuple[int, Dict[str, str], Tuple[float, float], str]]) -> None:
    """A cell id used twice, or two cells at the same point of one image, would count one cell twice.

    rows: (line number, row, its point, where: the row named for messages)."""
    first_line: Dict[tuple, int] = {}
    for line, row, point, where in rows:
        for key, what in (((row["cell_id"],), f"cell_id {row['cell_id']}"),
                          ((row["image_filename"], point), f"point ({point[0]:g}, {point[1]:g}) of {row['image_filename']}")):
            earlier = first_line.setdefault(key, line)
            if earlier != line:
                raise UserError(f"{where}: {what} already given on line {earlier}; one cell per row: remove the "
                                f"duplicate")


def read_field_points(root) -> List[FieldPoints]:
    """Read and check a points root: every field image the CSV names, once, with its cells.

    Args:
        root: folder holding classifications.csv and the field images it names.

    Returns:
        FieldPoints per field image, sorted by field_id; each field's cells in the CSV's order.

    Raises:
        UserError, before any other work, for a missing column, a missing image, an unknown class, a
        coordinate that is not a number or lies outside its image, or a duplicate cell.
    """
    root = Path(root)
    csv_path = root / POINTS_CSV
    if not csv_path.is_file():
        raise UserError(f"{root}: no {POINTS_CSV} in this folder; point --data-root at the folder holding CRIC's "
                        f"{POINTS_CSV} and its field images")
    checked, places, sizes = [], [], {}
    for line, row in read_rows(csv_path):
        where = f"{csv_path}:{line} (image {row['image_filename'] or '?'}, cell {row['cell_id'] or '?'})"
        if not row["cell_id"]:
            raise UserError(f"{where}: no cell_id; {FIX_CSV}")
        label = short_class_name(row["bethesda_system"], where)
        x, y = (coordinate(row[c], c, where) for c in ("nucleus_x", "nucleus_y"))
        image_path = resolved_image(root, row["image_filename"], where)
        if image_path not in sizes:
            sizes[image_path] = image_size(image_path)
        width, height = sizes[image_path]
        if not (0 <= x <= width and 0 <= y <= height):  # pixel centres and pixel edges both land inside
            raise UserError(f"{where}: point ({x:g}, {y:g}) lies outside its {width}x{height} image; the coordinates "
                            f"may belong to another size of the image: {FIX_CSV}")
        checked.append((line, row, (x, y), label, image_path))
        places.append((line, row, (x, y), where))
    check_unique(places)
    return fields_of(root, checked, sizes)


def fields_of(root: Path, checked: Sequence[tuple], sizes: Dict[Path, Tuple[int, int]]) -> List[FieldPoints]:
    """Group checked rows (line, row, point, label, image path) into one FieldPoints per image."""
    rows_of: Dict[Path, List[tuple]] = defaultdict(list)
    for item in checked:
        rows_of[item[4]].append(item)
    fields = []
    for image_path, rows in rows_of.items():
        fields.append(FieldPoints(
            field_id=image_path.relative_to(root).with_suffix("").as_posix(), image_path=image_path,
            image_id=rows[0][1]["image_id"], cell_ids=tuple(row["cell_id"] for _, row, _, _, _ in rows),
            points=np.array([point for _, _, point, _, _ in rows], dtype=np.float32).reshape(-1, 2),
            labels=tuple(label for _, _, _, label, _ in rows), size=tuple(sizes[image_path])))
    return sorted(fields, key=lambda f: f.field_id)


# ---------------------------------------------------------------- cells at the points

# Side of the square window cut around each point for the classifier, in the CSV's pixels: at CRIC's scale
# (about 0.2 um/px at 1376 px wide) it holds a whole intermediate squamous cell with some of its neighbours
CELL_WINDOW_PX = 128


def centred_box(point, size: Tuple[int, int], window_px: int = CELL_WINDOW_PX) -> Tuple[int, int, int, int]:
    """The window_px square centred on point, shifted inside the image where it would cross its border.

    Args:
        point: x, y in image pixels.
        size: the image's (width, height).
        window_px: the square's side; an image smaller than it gives its whole extent along that side.

    Returns:
        x0, y0, x1, y1 (exclusive) inside the image.
    """
    box = []
    for centre, extent in zip(point, size):
        side = min(window_px, extent)
        start = int(round(float(centre) - side / 2))
        box.append(min(max(start, 0), extent - side))
        box.append(box[-1] + side)
    x0, x1, y0, y1 = box
    return x0, y0, x1, y1


def read_cric_cells(root: Path, window_px: int = CELL_WINDOW_PX) -> List[CellRecord]:
    """One record per annotated point of a CRIC root: the window_px square centred on the nucleus (shifted inside
    the image at its border), labelled with the short Bethesda name, grouped by field (no field in two splits)."""
    records = []
    for field_points in read_field_points(root):
        for cell_id, point, label in zip(field_points.cell_ids, field_points.points, field_points.labels):
            records.append(CellRecord(sample_id=f"{field_points.field_id}/{cell_id}", image_path=field_points.image_path,
                                      label=label, group=field_points.field_id,
                                      crop_box=centred_box(point, field_points.size, window_px)))
    return records


def is_bethesda(class_names: Sequence[str]) -> bool:
    """Whether the classifier's classes are Bethesda's (NILM among them, none outside them)."""
    return NORMAL_CLASS in class_names and set(class_names) <= set(BETHESDA_CLASSES)


def classifier_window(class_names: Optional[Sequence[str]]) -> int:
    """The side (image px) of the window a classifier saw each cell in: CELL_WINDOW_PX around the nucleus point for a
    classifier in Bethesda's classes (trained on CRIC-style points), 0 for one trained on cells cut by their outline."""
    return CELL_WINDOW_PX if class_names and is_bethesda(class_names) else 0
