"""What predict.py --fields writes for every cell it finds: a record per cell, its QuPath GeoJSON feature, its
cells.csv row, and the pictures made from many of them (instance label images, an outlined overlay).

A block of a slide becomes CellRecords where it is segmented (possibly on another machine: records are small
and picklable); where the outputs are written, each record gets its number within the slide and becomes a
feature and a row. Numbers and feature ids follow the blocks' order, so a run writes the same bytes however
its blocks were scheduled and however often it was interrupted.
"""
import json
import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from tools.fields.segment import FieldCell
from tools.geojson import Ring, cell_feature, mask_to_polygon
from utils.errors import UserError

UNCLASSIFIED_RGB = (0, 200, 0)
FEATURE_IDS = uuid.UUID("6f1d3c52-5a0e-4c1b-9a3e-2b7f0c8d4e91")  # namespace of the cells' uuid5 feature ids


@dataclass
class CellRecord:
    """One cell as it leaves its block: geometry in slide pixels, measurements, class probabilities."""

    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in slide px
    centroid: Tuple[float, float]  # x, y of the cell's centre in pixel-edge coordinates (as the GeoJSON)
    outline: Ring  # the cell's polygon
    nucleus: Optional[Ring]  # its nucleus's polygon
    measurements: Dict[str, float]  # areas, N/C ratio, cell score and, when classified, prob_<class>
    probs: Optional[List[float]]  # class probabilities, when classified
    masks: Optional[Tuple[bytes, bytes]] = None  # np.packbits of the cell and nucleus masks over the box, on request

    def unpacked_masks(self) -> Tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.box
        size = (y1 - y0) * (x1 - x0)
        return tuple(np.unpackbits(np.frombuffer(packed, np.uint8), count=size).reshape(y1 - y0, x1 - x0).astype(bool)
                     for packed in self.masks)


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


def cell_record(cell: FieldCell, class_names: Optional[Sequence[str]], with_masks: bool = False) -> Optional[CellRecord]:
    """The record of a found cell (None when its mask has no outline to draw)."""
    x0, y0 = cell.box[:2]
    outline = mask_to_polygon(cell.cell_mask, (x0, y0))
    if outline is None:
        return None
    rows, cols = np.nonzero(cell.cell_mask)
    centroid = (round(float(x0 + cols.mean() + 0.5), 2), round(float(y0 + rows.mean() + 0.5), 2))
    masks = (np.packbits(cell.cell_mask).tobytes(), np.packbits(cell.nuc_mask).tobytes()) if with_masks else None
    probs = None if cell.probs is None else [float(p) for p in cell.probs]
    return CellRecord(tuple(int(v) for v in cell.box), centroid, outline, mask_to_polygon(cell.nuc_mask, (x0, y0)),
                      cell_measurements(cell, class_names), probs, masks)


def predicted_class(record, class_names: Optional[Sequence[str]]) -> Optional[str]:
    """The class with the highest probability (records and FieldCells alike), None when not classified."""
    return None if record.probs is None else class_names[int(np.argmax(record.probs))]


def feature_id(input_name: str, number: int) -> str:
    """The same UUID for the same cell of the same input in every run (QuPath wants a UUID per object)."""
    return str(uuid.uuid5(FEATURE_IDS, f"{input_name}/{number}"))


def feature_json(record: CellRecord, input_name: str, number: int, class_names, colours) -> str:
    """The cell as one GeoJSON Feature (tools/geojson.py: QuPath's conventions), as JSON text."""
    name = predicted_class(record, class_names)
    feature = cell_feature(record.outline, record.nucleus, name, colours.get(name), record.measurements,
                           feature_id(input_name, number))
    if record.nucleus is not None:  # QuPath reads nucleusGeometry beside "geometry"; readers that follow the spec look here
        feature["properties"]["nucleusGeometry"] = feature["nucleusGeometry"]
    return json.dumps(feature, allow_nan=False)


def csv_columns(class_names: Optional[Sequence[str]]) -> List[str]:
    columns = ["field", "id", "centroid_x", "centroid_y", "x0", "y0", "x1", "y1", "class", "cell_area_px",
               "nucleus_area_px", "cytoplasm_area_px", "nc_ratio", "cell_score"]
    return columns + [f"prob_{name}" for name in class_names or []]


def csv_row(record: CellRecord, input_name: str, number: int, class_names) -> Dict:
    """cells.csv's row of a cell: input, number, centroid, bounding box, class, measurements, probabilities."""
    x0, y0, x1, y1 = record.box
    return {"field": input_name, "id": number, "centroid_x": record.centroid[0], "centroid_y": record.centroid[1],
            "x0": x0, "y0": y0, "x1": x1, "y1": y1, "class": predicted_class(record, class_names) or "",
            **record.measurements}


# ---------------------------------------------------------------- pictures of many cells

def paint_labels(records: Iterable[Tuple[int, CellRecord]], top: int, left: int, height: int, width: int,
                 dtype=np.uint32) -> Tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus instance labels of a window of the slide: each cell painted with its number; where cells
    overlap, the smaller one wins (painted last). records: (number, record with masks)."""
    cell_labels, nuc_labels = np.zeros((height, width), dtype), np.zeros((height, width), dtype)
    for number, record in sorted(records, key=lambda item: (-item[1].measurements["cell_area_px"], item[0])):
        x0, y0, x1, y1 = record.box
        ys, xs = slice(max(y0, top), min(y1, top + height)), slice(max(x0, left), min(x1, left + width))
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        cell, nucleus = (mask[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] for mask in record.unpacked_masks())
        window = (slice(ys.start - top, ys.stop - top), slice(xs.start - left, xs.stop - left))
        cell_labels[window][cell] = number
        nuc_labels[window][nucleus] = number
    return cell_labels, nuc_labels


def label_images(records: Sequence[Tuple[int, CellRecord]], shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """uint16 cell and nucleus labels of a whole field (PNG holds 16 bits): cell number n painted n."""
    if records and max(number for number, _ in records) >= 2 ** 16:
        raise UserError(f"{len(records)} cells in one image: more than a 16-bit PNG label image holds; "
                        f"ask for tiled TIFF labels (--labels tiff)")
    return paint_labels(records, 0, 0, shape[0], shape[1], np.uint16)


def overlay(image: np.ndarray, records: Sequence[CellRecord], class_names, colours, scale: float = 1.0) -> np.ndarray:
    """The image (already at `scale`) with each cell outlined in its class colour, its nucleus in a darker shade."""
    canvas = image.copy()
    for record in records:
        colour = colours.get(predicted_class(record, class_names), UNCLASSIFIED_RGB)
        for ring, shade in ((record.outline, 1.0), (record.nucleus, 0.6)):
            if ring is None:
                continue
            points = np.round(np.asarray(ring) * scale - 0.5).astype(np.int32)  # pixel edges -> pixel centres
            cv2.polylines(canvas, [points], True, tuple(int(v * shade) for v in colour), 1 if scale < 1 else 2)
    return canvas
