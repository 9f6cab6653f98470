"""The review station's state: per screened input its reader and tiles, its cell index and its decisions, each
opened the first time a page asks for it and kept while the server runs."""
import threading
from pathlib import Path
from typing import Dict, Optional

from tools.fields.readers import open_slide
from tools.fields.report import gallery_picture
from tools.review.catalogue import ScreenedInput, read_catalogue
from tools.review.cells import CellIndex
from tools.review.decisions import DecisionError, DecisionLog, check_decision, reviewed_classes, reviewed_summary
from tools.review.qupath import GeoJsonFollower, colours_with_rejected, write_reviewed_geojson
from tools.review.tiles import TileSource, jpeg_bytes


class OpenInput:
    """One input while it is reviewed. Its tiles and its cell index are made on first use, each under its own
    lock: the slide shows while the index of 100,000 cells is still being read (about a second)."""

    def __init__(self, screened: ScreenedInput):
        self.screened = screened
        self.log = DecisionLog(screened.review_csv)
        self._tiles: Optional[TileSource] = None
        self._index: Optional[CellIndex] = None
        self.lock, self.index_lock = threading.Lock(), threading.Lock()
        self.follower = GeoJsonFollower(lambda: write_reviewed_geojson(screened, self.index, self.log.decisions))
        if screened.review_csv.is_file():
            self.follower.request()  # decisions of an earlier (perhaps killed) server reach the GeoJSON

    @property
    def index(self) -> CellIndex:
        with self.index_lock:
            if self._index is None:
                self._index = CellIndex(self.screened.cells_csv, self.screened.geojson, self.screened.class_names)
            return self._index

    @property
    def tiles(self) -> TileSource:
        """The input's tiles; LookupError when its file is gone."""
        with self.lock:
            if self._tiles is None:
                if self.screened.input_path is None:
                    raise LookupError(f"{self.screened.summary.get('input')}: the screened input is not there any more")
                self._tiles = TileSource(open_slide(self.screened.input_path))
            return self._tiles

    def state(self):
        """(final class per row, decision code per row, decisions by cell id)."""
        decisions = self.log.decisions()
        final, codes = reviewed_classes(self.index.model_class, self.index.row_of_id, decisions, self.screened.class_names)
        return final, codes, decisions

    def review(self) -> Dict:
        final, codes, decisions = self.state()
        screened = self.screened
        return {"model": model_summary(screened.summary), "reviewed": reviewed_summary(
                    final, codes, self.index.abnormal_probability, screened.class_names, screened.rule),
                "decisions": {str(cell_id): {"decision": decision, "class": given}
                              for cell_id, (decision, given) in decisions.items()}}

    def decide(self, cell_id: int, decision: str, class_name: Optional[str]) -> Dict:
        """Record a decision (KeyError: unknown cell; DecisionError: bad decision): on disk before it returns."""
        row = self.index.row_of_id[cell_id]
        names = self.screened.class_names
        if not names:
            raise DecisionError("this run has no classifier: there are no classes to decide on")
        given = check_decision(decision, class_name, names)
        model_class = names[self.index.model_class[row]] if self.index.model_class[row] >= 0 else ""
        self.log.append(cell_id, decision, model_class if given is None else given, model_class)
        self.follower.request()
        return self.review()

    def cell(self, cell_id: int) -> Dict:
        """The cell's row of the cells CSV (class, probabilities, measurements) and its decision."""
        values = self.index.row(cell_id)
        decision = self.log.decisions().get(cell_id)
        return {"id": cell_id, "values": values,
                "decision": None if decision is None else {"decision": decision[0], "class": decision[1]}}

    def crop(self, cell_id: int) -> bytes:
        """The gallery picture of a cell (as the report cuts it), JPEG."""
        x0, y0, x1, y1 = (int(v) for v in self.index.boxes[self.index.row_of_id[cell_id]])
        return jpeg_bytes(gallery_picture(self.tiles.reader, {"box": [x0, y0, x1, y1]}))

    def gallery(self):
        return self.screened.summary.get("most_suspicious", [])

    def info(self) -> Dict:
        """What the page needs first (the cell index is not: /review and /cells bring the rest)."""
        screened = self.screened
        colours = colours_with_rejected(screened.class_names)
        return {"name": screened.name, "classes": screened.class_names, "colours": {k: list(v) for k, v in colours.items()},
                "mpp": screened.summary.get("mpp"), "shape": screened.summary.get("shape"),
                "input": screened.summary.get("input"), "gallery": self.gallery(), "rule": screened.summary.get("rule"),
                "cells": screened.summary.get("cells"), "model": model_summary(screened.summary)}


def model_summary(summary: Dict) -> Dict:
    keys = ("cells", "call", "counts", "abnormal_cells", "abnormal_per_1000")
    return {k: summary[k] for k in keys if k in summary}


class Station:
    """Every input of one output folder; inputs are opened on first use."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir).resolve()
        self.catalogue = read_catalogue(self.output_dir)
        self.opened: Dict[str, OpenInput] = {}
        self.lock = threading.Lock()

    def get(self, name: str) -> OpenInput:
        """The open input of that name; KeyError when the folder holds none."""
        screened = self.catalogue[name]
        with self.lock:
            if name not in self.opened:
                self.opened[name] = OpenInput(screened)
            return self.opened[name]

    def overview(self):
        """Per input: name, model's call and rate, the reviewed call, review progress (for the index page)."""
        rows = []
        for name, screened in self.catalogue.items():
            summary = screened.summary
            row = {"name": name, "cells": summary.get("cells", 0), "call": summary.get("call"),
                   "abnormal_per_1000": summary.get("abnormal_per_1000"), "gallery": len(summary.get("most_suspicious", [])),
                   "found": screened.input_path is not None}
            opened = self.get(name)
            review = opened.review()
            gallery_ids = {cell["id"] for cell in opened.gallery()}
            decided = review["decisions"]
            row.update(reviewed=len(decided), gallery_reviewed=sum(str(i) in decided for i in gallery_ids),
                       reviewed_call=review["reviewed"]["call"],
                       reviewed_per_1000=review["reviewed"]["abnormal_per_1000"])
            rows.append(row)
        return rows

    def flush(self) -> None:
        """Every input's GeoJSON brought up to date with its decisions (tests; the server's end)."""
        for opened in list(self.opened.values()):
            opened.follower.flush()

    def output_file(self, relative: str) -> Path:
        """A file this output folder's summaries name (report, GeoJSON, cells, review); KeyError otherwise."""
        for screened in self.catalogue.values():
            for suffix in ("_report.html", ".geojson", "_cells.csv", "_review.csv", "_summary.json"):
                path = screened.output(suffix)
                if path.relative_to(self.output_dir).as_posix() == relative and path.is_file():
                    return path
        raise KeyError(relative)
