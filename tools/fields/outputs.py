"""What predict.py --fields writes for a field: GeoJSON for QuPath, label images, an overlay, table rows, a summary."""
import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from tools.fields.segment import FieldCell
from tools.geojson import cell_feature, mask_to_polygon, write_geojson
from tools.layouts import normal_class_names
from utils.errors import UserError
from utils.files import write_image

OVERLAY_MAX_SIDE = 8192  # px: larger fields get a scaled-down overlay (the label images stay full size)
UNCLASSIFIED_RGB = (0, 200, 0)
SUSPICIOUS_LISTED = 20  # cells per field (and overall) listed in summary.json by abnormal probability


def class_colours(class_names: Sequence[str]) -> Dict[str, tuple]:
    """A distinct RGB colour per class (matplotlib's tab10, then tab20), the same in the overlay and in QuPath."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    return {name: tuple(int(255 * c) for c in palette(index)[:3]) for index, name in enumerate(class_names)}


def cell_measurements(cell: FieldCell, class_names: Optional[Sequence[str]]) -> Dict[str, float]:
    """Areas, N/C ratio, the cell score and, when classified, each class's probability."""
    nucleus_area, cell_area = int(cell.nuc_mask.sum()), int(cell.cell_mask.sum())
    cytoplasm_area = cell_area - nucleus_area
    values = {"cell_area_px": cell_area, "nucleus_area_px": nucleus_area, "cytoplasm_area_px": cytoplasm_area,
              "nc_ratio": nucleus_area / cytoplasm_area if cytoplasm_area else float("nan"), "cell_score": cell.score}
    if cell.probs is not None:
        values.update({f"prob_{name}": float(p) for name, p in zip(class_names, cell.probs)})
    return {**values, **cell.measurements}


def predicted_class(cell: FieldCell, class_names: Optional[Sequence[str]]) -> Optional[str]:
    return None if cell.probs is None else class_names[int(np.argmax(cell.probs))]


def feature_of(cell: FieldCell, class_names, colours) -> Optional[Dict]:
    x0, y0 = cell.box[:2]
    outline = mask_to_polygon(cell.cell_mask, (x0, y0))
    if outline is None:
        return None
    nucleus = mask_to_polygon(cell.nuc_mask, (x0, y0))
    name = predicted_class(cell, class_names)
    feature = cell_feature(outline, nucleus, name, colours.get(name), cell_measurements(cell, class_names))
    if nucleus is not None:  # QuPath reads nucleusGeometry beside "geometry"; readers that follow the spec look here
        feature["properties"]["nucleusGeometry"] = feature["nucleusGeometry"]
    return feature


def label_images(cells: Sequence[FieldCell], shape) -> tuple:
    """uint16 cell and nucleus instance labels (cell i + 1, its nucleus i + 1); where cells overlap, the smaller wins."""
    if len(cells) >= 2**16:
        raise UserError(f"{len(cells)} cells in one field: more than a 16-bit label image holds; use smaller fields")
    cell_labels, nuc_labels = np.zeros(shape, np.uint16), np.zeros(shape, np.uint16)
    for index in sorted(range(len(cells)), key=lambda i: -cells[i].cell_mask.sum()):
        x0, y0, x1, y1 = cells[index].box
        cell_labels[y0:y1, x0:x1][cells[index].cell_mask] = index + 1
        nuc_labels[y0:y1, x0:x1][cells[index].nuc_mask] = index + 1
    return cell_labels, nuc_labels


def overlay(image: np.ndarray, cells: Sequence[FieldCell], class_names, colours) -> np.ndarray:
    """The field with each cell outlined in its class colour (nuclei in a darker shade), at most OVERLAY_MAX_SIDE px."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(image.shape[:2]))
    canvas = image.copy() if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    for cell in cells:
        colour = colours.get(predicted_class(cell, class_names), UNCLASSIFIED_RGB)
        for mask, shade in ((cell.cell_mask, 1.0), (cell.nuc_mask, 0.6)):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            shifted = [((c + np.array(cell.box[:2])) * scale).astype(np.int32) for c in contours]
            cv2.drawContours(canvas, shifted, -1, tuple(int(v * shade) for v in colour), 1 if scale < 1 else 2)
    return canvas


def write_field(output_dir: Path, name: str, image: Optional[np.ndarray], shape, cells: Sequence[FieldCell],
                class_names: Optional[Sequence[str]]) -> None:
    """<name>.geojson, <name>_cells.png, <name>_nuclei.png and (when the image is in memory) <name>_overlay.png."""
    colours = class_colours(class_names) if class_names else {}
    stem = output_dir / name
    stem.parent.mkdir(parents=True, exist_ok=True)
    features = [feature_of(cell, class_names, colours) for cell in cells]
    write_geojson(stem.with_name(f"{stem.name}.geojson"), [f for f in features if f is not None])
    cell_labels, nuc_labels = label_images(cells, shape)
    write_image(stem.with_name(f"{stem.name}_cells.png"), cell_labels)
    write_image(stem.with_name(f"{stem.name}_nuclei.png"), nuc_labels)
    if image is not None:
        write_image(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, cells, class_names, colours))


def table_rows(field_name: str, cells: Sequence[FieldCell], class_names) -> List[Dict]:
    """cells.csv rows: field, id, centroid, bounding box, class, probabilities, measurements."""
    rows = []
    for index, cell in enumerate(cells, start=1):
        rows_, cols_ = np.nonzero(cell.cell_mask)
        x0, y0, x1, y1 = cell.box
        rows.append({"field": field_name, "id": index, "centroid_x": round(x0 + cols_.mean() + 0.5, 2),
                     "centroid_y": round(y0 + rows_.mean() + 0.5, 2), "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                     "class": predicted_class(cell, class_names) or "", **cell_measurements(cell, class_names)})
    return rows


def field_summary(rows: Sequence[Dict], class_names) -> Dict:
    """Counts per class, the abnormal fraction and the most suspicious cells (highest summed abnormal probability)."""
    summary = {"cells": len(rows)}
    if not class_names or not rows:
        return summary
    abnormal = [name for name in class_names if name not in normal_class_names(class_names)]
    counts = Counter(row["class"] for row in rows)
    scored = sorted(rows, key=lambda row: -sum(row[f"prob_{name}"] for name in abnormal))
    summary.update(
        counts={name: counts.get(name, 0) for name in class_names},
        abnormal_fraction=sum(counts.get(name, 0) for name in abnormal) / len(rows),
        most_suspicious=[{"field": row["field"], "id": row["id"], "class": row["class"],
                          "abnormal_probability": round(sum(row[f"prob_{name}"] for name in abnormal), 4)}
                         for row in scored[:SUSPICIOUS_LISTED]])
    return summary


def write_summary(output_dir: Path, rows_by_field: Dict[str, List[Dict]], class_names, settings: Dict) -> None:
    every = [row for rows in rows_by_field.values() for row in rows]
    summary = {"settings": settings, "overall": field_summary(every, class_names),
               "fields": {name: field_summary(rows, class_names) for name, rows in rows_by_field.items()}}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
