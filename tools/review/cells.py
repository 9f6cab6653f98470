"""The cells of one screened input, indexed for the viewer: which lie in a view, and what one cell measured.

Built once per input from its <name>_cells.csv (centres, boxes, classes, probabilities) in one pass; a cell's
full row is read back from its byte offset when asked for, and its outline from its line of <name>.geojson
(predict.py writes one feature per line; another layout is read whole once), so 100,000 cells cost a few
arrays, not 100,000 dictionaries. A grid of GRID_PX buckets, cells sorted by bucket, answers "which cells lie
here" by reading only the buckets that the view touches.

What travels per view is bounded: outlines of at most MAX_OUTLINES cells when zoomed in, else dots of at most
MAX_DOTS cells, else a DENSITY_BINS x DENSITY_BINS grid of counts.
"""
import csv
import io
import json
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from tools.fields.summary import abnormal_classes

GRID_PX = 512  # side of a bucket of the spatial index, in slide px
MAX_OUTLINES = 1500  # outlines sent for one view at most
MIN_OUTLINE_SCALE = 0.15  # screen px per slide px from which outlines are drawn (below: dots)
MAX_DOTS = 6000
DENSITY_BINS = 48
NUMERIC_COLUMNS = ("centroid_x", "centroid_y", "x0", "y0", "x1", "y1")


class CellIndex:
    """Arrays over the cells of one input, in their CSV order (cell id k is row k - 1)."""

    def __init__(self, cells_csv: Path, geojson: Path, class_names: Sequence[str]):
        self.cells_csv, self.geojson, self.class_names = Path(cells_csv), Path(geojson), list(class_names)
        self.read_table()
        self.build_grid()
        self.lock = threading.Lock()
        self._feature_offsets: Optional[np.ndarray] = None
        self._geojson_stamp = None
        self._outlines: Dict[int, List] = {}

    # ---------------------------------------------------------------- building

    def read_table(self) -> None:
        """ids, centres, boxes, model classes, abnormal probabilities and row offsets, in one pass."""
        abnormal = abnormal_classes(self.class_names) if self.class_names else []
        with open(self.cells_csv, "rb") as table:
            header_line = table.readline()
            self.header = next(csv.reader([header_line.decode("utf-8")]))
            offsets, rows = [], []
            offset = len(header_line)
            for line in table:
                if line.strip():
                    offsets.append(offset)
                    rows.append(line.decode("utf-8"))
                offset += len(line)
        column = {name: index for index, name in enumerate(self.header)}
        parsed = list(csv.reader(rows))
        count = len(parsed)
        self.offsets = np.array(offsets, np.int64)
        self.ids = np.array([int(row[column["id"]]) for row in parsed], np.int64)
        numbers = np.array([[float(row[column[c]]) for c in NUMERIC_COLUMNS] for row in parsed], np.float64).reshape(count, 6)
        self.x, self.y, self.boxes = numbers[:, 0], numbers[:, 1], numbers[:, 2:].astype(np.int64)
        class_index = {name: index for index, name in enumerate(self.class_names)}
        self.model_class = np.array([class_index.get(row[column["class"]], -1) for row in parsed], np.int16)
        prob_columns = [column[f"prob_{name}"] for name in abnormal if f"prob_{name}" in column]
        self.abnormal_probability = np.array([sum(float(row[c]) for c in prob_columns) for row in parsed], np.float64)
        self.row_of_id = {int(cell_id): row for row, cell_id in enumerate(self.ids)}

    def build_grid(self) -> None:
        """Cells sorted by their bucket (row-major); bucket b's cells are order[starts[b]:starts[b + 1]]."""
        self.grid_cols = int(self.x.max() // GRID_PX) + 1 if len(self.x) else 1
        self.grid_rows = int(self.y.max() // GRID_PX) + 1 if len(self.y) else 1
        bucket = (self.y // GRID_PX).astype(np.int64) * self.grid_cols + (self.x // GRID_PX).astype(np.int64)
        self.order = np.argsort(bucket, kind="stable")
        self.starts = np.searchsorted(bucket[self.order], np.arange(self.grid_rows * self.grid_cols + 1))
        sizes = self.boxes[:, 2:] - self.boxes[:, :2]
        self.reach = float(sizes.max()) if len(sizes) else 0.0  # a cell's box reaches this far from its centre at most

    # ---------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.ids)

    def in_view(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Rows of the cells whose box may touch the view (centre within the view grown by the largest box)."""
        x0, y0, x1, y1 = x0 - self.reach, y0 - self.reach, x1 + self.reach, y1 + self.reach
        col0, col1 = max(int(x0 // GRID_PX), 0), min(int(x1 // GRID_PX), self.grid_cols - 1)
        row0, row1 = max(int(y0 // GRID_PX), 0), min(int(y1 // GRID_PX), self.grid_rows - 1)
        if col1 < col0 or row1 < row0:
            return np.zeros(0, np.int64)
        pieces = [self.order[self.starts[r * self.grid_cols + col0]:self.starts[r * self.grid_cols + col1 + 1]]
                  for r in range(row0, row1 + 1)]
        rows = np.concatenate(pieces)
        inside = (self.x[rows] >= x0) & (self.x[rows] < x1) & (self.y[rows] >= y0) & (self.y[rows] < y1)
        return np.sort(rows[inside])

    def view(self, box: Sequence[float], scale: float, final_class: np.ndarray, decision_codes: np.ndarray,
             visible: np.ndarray, min_probability: float) -> Dict:
        """What the viewer draws for a view: outlines, dots or a density grid of the cells shown.

        Args:
            box: x0, y0, x1, y1 of the view in slide px.
            scale: screen px per slide px (outlines only from MIN_OUTLINE_SCALE).
            final_class: per row, the class index after review (len(class_names): rejected).
            decision_codes: per row, 0 none, 1 accept, 2 reject, 3 relabel.
            visible: bool per class index (rejected last): which classes are shown.
            min_probability: cells under this abnormal probability are left out.
        """
        rows = self.in_view(*box)
        rows = rows[visible[final_class[rows]] & (self.abnormal_probability[rows] >= min_probability)]
        if scale >= MIN_OUTLINE_SCALE and len(rows) <= MAX_OUTLINES:
            return {"mode": "outlines", "total": int(len(rows)), "cells": [
                {"id": int(self.ids[r]), "c": int(final_class[r]), "d": int(decision_codes[r]),
                 "p": round(float(self.abnormal_probability[r]), 3), "x": float(self.x[r]), "y": float(self.y[r]),
                 "ring": self.outline(int(r))} for r in rows]}
        if len(rows) <= MAX_DOTS:
            return {"mode": "dots", "total": int(len(rows)), "id": self.ids[rows].tolist(),
                    "x": np.round(self.x[rows], 1).tolist(), "y": np.round(self.y[rows], 1).tolist(),
                    "c": final_class[rows].tolist(), "d": decision_codes[rows].tolist()}
        return self.density(box, rows, final_class)

    def density(self, box: Sequence[float], rows: np.ndarray, final_class: np.ndarray) -> Dict:
        """Counts of the shown cells (and of those of abnormal classes) on a DENSITY_BINS grid over the view."""
        x0, y0, x1, y1 = box
        edges = (np.linspace(y0, y1, DENSITY_BINS + 1), np.linspace(x0, x1, DENSITY_BINS + 1))
        counts, _, _ = np.histogram2d(self.y[rows], self.x[rows], bins=edges)
        abnormal_names = set(abnormal_classes(self.class_names)) if self.class_names else set()
        abnormal_index = np.array([name in abnormal_names for name in self.class_names] + [False])
        flagged = rows[abnormal_index[final_class[rows]]]
        abnormal, _, _ = np.histogram2d(self.y[flagged], self.x[flagged], bins=edges)
        return {"mode": "density", "total": int(len(rows)), "bins": DENSITY_BINS, "box": [float(v) for v in box],
                "counts": counts.astype(int).tolist(), "abnormal": abnormal.astype(int).tolist()}

    # ---------------------------------------------------------------- one cell

    def row(self, cell_id: int) -> Dict[str, str]:
        """The cell's row of <name>_cells.csv as column -> text (KeyError for an unknown id)."""
        offset = int(self.offsets[self.row_of_id[cell_id]])
        with open(self.cells_csv, "rb") as table:
            table.seek(offset)
            line = table.readline().decode("utf-8")
        return dict(zip(self.header, next(csv.reader(io.StringIO(line)))))

    def outline(self, row: int) -> List:
        """The cell's outline as [[x, y], ...] (rounded to 0.1 px), from its GeoJSON feature."""
        with self.lock:
            if row not in self._outlines:
                ring = self.feature(row)["geometry"]["coordinates"][0]
                self._outlines[row] = [[round(x, 1), round(y, 1)] for x, y in ring]
            return self._outlines[row]

    def feature(self, row: int) -> Dict:
        """The cell's GeoJSON feature (the caller holds the lock). The file may have been rewritten since its lines
        were counted (by this server's decisions or another's): its identity and size say so."""
        with open(self.geojson, "rb") as collection:
            status = os.fstat(collection.fileno())
            stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
            if self._feature_offsets is None or self._geojson_stamp != stamp:
                self._feature_offsets, self._geojson_stamp = feature_line_offsets(collection), stamp
            if self._feature_offsets is not None and len(self._feature_offsets) == len(self.ids):
                collection.seek(int(self._feature_offsets[row]))
                return json.loads(collection.readline().decode("utf-8").rstrip().rstrip(","))
            collection.seek(0)
            if getattr(self, "_features_stamp", None) != stamp:  # not one feature per line: read whole, once
                self._features, self._features_stamp = json.load(collection)["features"], stamp
            return self._features[row]

    def replace_geojson(self, written: Path) -> None:
        """Put a rewritten GeoJSON (reviewed classes) in place; its lines moved, so their offsets are read again."""
        with self.lock:
            os.replace(written, self.geojson)
            self._feature_offsets = None


def feature_line_offsets(collection) -> Optional[np.ndarray]:
    """Byte offset of every feature line of an open GeoJSON written one feature per line; None for another layout."""
    offsets, offset = [], 0
    collection.seek(0)
    for line in collection:
        if line.startswith(b'{"type": "Feature"'):
            offsets.append(offset)
        offset += len(line)
    return np.array(offsets, np.int64) if offsets else None
