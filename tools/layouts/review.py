"""The review layout: the cells a reviewer accepted or relabelled, as `review.py OUTPUT_DIR --export-points DIR`
writes them (tools/review/points.py): DIR/images/<input>_<cell id>.png and DIR/classifications.csv in CRIC's columns
plus `source`. Named with --layout review, never detected; no masks (stage 1 predicts them, as for `labels`)."""
import csv
from pathlib import Path
from typing import List

from tools.layouts.points import CSV_COLUMNS, POINTS_CSV
from tools.layouts.record import CellRecord
from utils.errors import UserError

COLUMNS = CSV_COLUMNS + ("source",)  # source: the output folder and input a cell came from


def read_review_points(root: Path) -> List[CellRecord]:
    """The exported cells of a data root as CellRecords (label: the reviewer's class; no masks: stage 1 predicts
    them, as for the `labels` layout)."""
    table_path = Path(root) / POINTS_CSV
    if not table_path.is_file():
        raise UserError(f"{root}: no {POINTS_CSV} (the review layout reads `review.py OUTPUT_DIR --export-points "
                        f"{root}`'s folder); export the reviewed cells there first")
    records = []
    with open(table_path, newline="") as table:
        reader = csv.DictReader(table)
        missing = [c for c in ("image_filename", "bethesda_system") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{table_path}: no column {', '.join(missing)}; expected {', '.join(COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            image = Path(root) / "images" / row["image_filename"]
            if not image.is_file() or Path(row["image_filename"]).name != row["image_filename"]:
                raise UserError(f"{table_path}:{line}: {row['image_filename']} is not in {Path(root) / 'images'}; "
                                f"export the points again")
            # each cell its own group: a lab's reviewed slides are few, too few to split by slide (the test of a
            # fine-tuned run is the lab's next slides, not these cells)
            records.append(CellRecord(f"images/{image.stem}", image, row["bethesda_system"], image.stem))
    if not records:
        raise UserError(f"{table_path}: no reviewed cells; accept or relabel cells in review.py, then export again")
    return records
