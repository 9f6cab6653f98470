"""Tiny generated CRIC-layout data: a few small fields with dark disks as nuclei and CRIC's classifications.csv."""
import csv
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from tools.layouts.points import CSV_COLUMNS

CRIC_NAMES = {"NILM": "Negative for intraepithelial lesion"}  # CRIC's long name of NILM; the others are short already
# field file -> (width, height), [(cell_id, short class, x, y)]
FIELDS: Dict[str, Tuple[Tuple[int, int], List[Tuple[str, str, int, int]]]] = {
    "a.png": ((160, 120), [("1", "NILM", 40, 40), ("2", "LSIL", 110, 60), ("3", "NILM", 5, 115)]),
    "b.png": ((160, 120), [("4", "NILM", 30, 30), ("5", "NILM", 120, 90)]),
    "c.jpg": ((200, 150), [("6", "HSIL", 60, 70), ("7", "SCC", 150, 40), ("8", "ASC-US", 100, 120)]),
    "d.png": ((160, 120), [("9", "NILM", 80, 60), ("10", "ASC-H", 130, 30)]),
}


def write_field(path: Path, size: Tuple[int, int], points: Sequence[Tuple[int, int]]) -> None:
    """Pale glass with a grey cytoplasm and a dark nucleus disk around each point."""
    width, height = size
    image = np.full((height, width, 3), 225, np.uint8)
    for x, y in points:
        cv2.circle(image, (x, y), 14, (190, 170, 200), -1)
    for x, y in points:
        cv2.circle(image, (x, y), 5, (60, 40, 90), -1)
    cv2.imwrite(str(path), image)


def write_csv(path: Path, rows: Sequence[Sequence]) -> None:
    with open(path, "w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)


def csv_rows(fields=FIELDS) -> List[list]:
    rows = []
    for image_id, (name, (_, cells)) in enumerate(sorted(fields.items())):
        for cell_id, label, x, y in cells:
            rows.append([image_id, name, "10.0/x", cell_id, CRIC_NAMES.get(label, label), x, y])
    return rows


def make_cric_root(root: Path, fields=FIELDS) -> Path:
    """Write the fields and their classifications.csv into root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (size, cells) in fields.items():
        write_field(root / name, size, [(x, y) for _, _, x, y in cells])
    write_csv(root / "classifications.csv", csv_rows(fields))
    return root


def grid_fields(count: int, classes=("NILM", "LSIL", "HSIL"), cells_per_field: int = 4, seed: int = 0):
    """`count` 160 x 120 fields of cells_per_field cells each at jittered grid points; field k's cells are NILM but
    one of classes[k % len(classes)] (a NILM field when that is NILM). Returns a FIELDS-like dict."""
    rng = np.random.default_rng(seed)
    fields, cell_id = {}, 0
    for k in range(count):
        cells = []
        for i in range(cells_per_field):
            x, y = 25 + 40 * i + int(rng.integers(-4, 5)), 40 + 40 * (i % 2) + int(rng.integers(-4, 5))
            cell_id += 1
            cells.append((str(cell_id), classes[k % len(classes)] if i == 0 else "NILM", x, y))
        fields[f"f{k:02d}.png"] = ((160, 120), cells)
    return fields
