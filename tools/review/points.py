"""A reviewer's decisions as training data: the reviewed cells exported as CRIC-style points, and read back as
CellRecords (main_classify.py --layout review), so a run can be fine-tuned on a lab's own corrections.

    review.py OUTPUT_DIR [OUTPUT_DIR ...] --export-points DIR
writes, for every accepted or relabelled cell (rejected ones are not cells to learn from):
    DIR/images/<input>_<cell id>.png   the cell with its surroundings (CROP_CONTEXT times its box, at least
                                       CROP_MIN_PX), cut from the full-resolution slide or field
    DIR/classifications.csv            one row per cell, the CRIC Cervix collection's columns: image_id,
                                       image_filename, image_doi, cell_id, bethesda_system, nucleus_x, nucleus_y
                                       (bethesda_system holds the run's class name the reviewer gave; nucleus_x/y
                                       the cell's centre in its picture) and, after them, source (the output
                                       folder and input it came from)
A data root of exported points reads back with tools/layouts/review.read_review_points (the layout `review`).
"""
import csv
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import cv2

from tools.fields.readers import open_slide
from tools.layouts.points import POINTS_CSV
from tools.layouts.review import COLUMNS
from tools.review.catalogue import ScreenedInput, read_catalogue
from tools.review.decisions import DecisionLog
from utils.errors import UserError
from utils.files import written_atomically

CROP_CONTEXT = 2.0  # a picture shows this many times the cell's box
CROP_MIN_PX = 96


def reviewed_cells(screened: ScreenedInput) -> Iterator[Dict]:
    """The input's accepted and relabelled cells: id, the reviewer's class, box and centre (in slide px)."""
    from tools.review.cells import CellIndex

    decisions = DecisionLog(screened.review_csv).decisions()
    kept = {cell_id: given for cell_id, (decision, given) in decisions.items() if decision in ("accept", "relabel") and given}
    if not kept:
        return
    index = CellIndex(screened.cells_csv, screened.geojson, screened.class_names)
    for cell_id in sorted(kept):
        row = index.row_of_id.get(cell_id)
        if row is None:
            continue
        yield {"id": cell_id, "class": kept[cell_id], "box": [int(v) for v in index.boxes[row]],
               "x": float(index.x[row]), "y": float(index.y[row])}


def cell_picture(reader, cell: Dict):
    """(RGB picture around the cell, the cell's centre in it)."""
    x0, y0, x1, y1 = cell["box"]
    side = max(CROP_MIN_PX, int(CROP_CONTEXT * max(x1 - x0, y1 - y0)))
    top = max(0, min(int(cell["y"]) - side // 2, reader.shape[0] - side))
    left = max(0, min(int(cell["x"]) - side // 2, reader.shape[1] - side))
    picture = reader.read(top, left, top + side, left + side)
    return picture, (round(cell["x"] - left, 1), round(cell["y"] - top, 1))


def export_points(output_dirs: Sequence[Path], out: Path) -> int:
    """Write the reviewed cells of every output folder as CRIC-style points (module docstring); returns how many."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: List[Dict] = []
    for output_dir in output_dirs:
        for name, screened in read_catalogue(output_dir).items():
            cells = list(reviewed_cells(screened))
            if not cells:
                continue
            if screened.input_path is None:
                raise UserError(f"{screened.summary.get('input')}: the input of {name}'s reviewed cells is not there "
                                f"any more; put it back where predict.py read it")
            reader = open_slide(screened.input_path)
            for cell in cells:
                picture, (x, y) = cell_picture(reader, cell)
                image_id = f"{name.replace('/', '__')}_{cell['id']}"
                filename = f"{image_id}.png"
                cv2.imwrite(str(out / "images" / filename), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                rows.append({"image_id": image_id, "image_filename": filename, "image_doi": "", "cell_id": cell["id"],
                             "bethesda_system": cell["class"], "nucleus_x": x, "nucleus_y": y,
                             "source": f"{Path(output_dir).resolve().name}/{name}"})
            reader.close()
    with written_atomically(out / POINTS_CSV) as tmp, open(tmp, "w", newline="") as table:
        writer = csv.DictWriter(table, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
