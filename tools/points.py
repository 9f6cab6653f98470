"""STUB (replaced by the cric-cells branch): CRIC-style point annotations."""
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np

BETHESDA_CLASSES = ("NILM", "ASC-US", "LSIL", "ASC-H", "HSIL", "SCC")
CRIC_NAMES = {"Negative for intraepithelial lesion": "NILM"}


@dataclass
class FieldPoints:
    field_id: str
    image_path: Path
    image_id: str
    cell_ids: Tuple[str, ...]
    points: np.ndarray
    labels: Tuple[str, ...]


def is_points_root(root) -> bool:
    return (Path(root) / "classifications.csv").is_file()


def read_field_points(root) -> List[FieldPoints]:
    root = Path(root)
    rows = {}
    with open(root / "classifications.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["image_filename"], []).append(row)
    fields = []
    for name, cells in rows.items():
        path = root / name
        fields.append(FieldPoints(
            Path(name).with_suffix("").as_posix(), path, cells[0]["image_id"], tuple(c["cell_id"] for c in cells),
            np.array([[float(c["nucleus_x"]), float(c["nucleus_y"])] for c in cells], np.float32),
            tuple(CRIC_NAMES.get(c["bethesda_system"], c["bethesda_system"]) for c in cells)))
    return sorted(fields, key=lambda f: f.field_id)
