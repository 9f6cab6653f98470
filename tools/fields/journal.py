"""The outputs of one input while its blocks are screened, written so that a run killed at any moment continues.

While an input is screened, everything lives in OUTPUT_DIR/.<name>.partial/:
    cells.geojson    the FeatureCollection so far (its closing bracket comes last)
    cells.csv        the cells.csv rows so far
    masks/<k>.pkl    block k's cells with their masks (only when label images are wanted)
    progress.json    blocks finished, in order, the cells so far and the byte length of both files after them
Each finished block appends its features and rows, then replaces progress.json in one rename. A run that starts
on a .partial folder truncates both files to the lengths progress.json gives (anything after them is a block
cut off mid-write) and goes on with the next block; the files end as an uninterrupted run writes them, byte for
byte. When every block is in, the collection is closed and both files move to <name>.geojson and
<name>_cells.csv; <name>_summary.json, written last, marks the input finished. A .partial folder made with
other models or settings (its fingerprint differs) is started afresh, with a note.
"""
import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tools.fields.outputs import CellRecord, csv_columns, csv_row, feature_json
from utils.files import written_atomically

GEOJSON_HEAD = '{"type": "FeatureCollection", "features": [\n'
GEOJSON_TAIL = "\n]}\n"


@dataclass
class Progress:
    fingerprint: str
    blocks: int  # blocks of the input (with tissue)
    done: int = 0  # blocks finished, in order: 0..done-1
    cells: int = 0
    geojson_bytes: int = 0
    csv_bytes: int = 0
    closed: bool = False  # the collection's closing bracket is written


def csv_line(values: Sequence) -> str:
    """One CSV line as csv.writer writes it (quoted where needed), so the file reads back with csv.DictReader."""
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


class SlideJournal:
    def __init__(self, output_dir: Path, name: str, fingerprint: str, blocks: int, class_names, with_masks: bool):
        self.stem = Path(output_dir) / name
        self.folder = self.stem.with_name(f".{self.stem.name}.partial")
        self.name, self.class_names, self.with_masks = name, class_names, with_masks
        self.columns = csv_columns(class_names)
        self.progress = Progress(fingerprint, blocks)

    # ---------------------------------------------------------------- paths

    @property
    def geojson(self) -> Path:
        return self.stem.with_name(f"{self.stem.name}.geojson")

    @property
    def cells_csv(self) -> Path:
        return self.stem.with_name(f"{self.stem.name}_cells.csv")

    def masks_file(self, block: int) -> Path:
        return self.folder / "masks" / f"{block:06d}.pkl"

    # ---------------------------------------------------------------- starting and resuming

    def open(self) -> Optional[str]:
        """Start the input, or continue it from its last finished block; returns a note when it continues."""
        saved = self.read_progress()
        if saved is not None and saved.fingerprint == self.progress.fingerprint and saved.blocks == self.progress.blocks:
            self.progress = saved
            for path, length in ((self.folder / "cells.geojson", saved.geojson_bytes),
                                 (self.folder / "cells.csv", saved.csv_bytes)):
                if not saved.closed:  # once closed, the files may already have moved into place
                    with open(path, "r+b") as file:
                        file.truncate(length)  # drop a block cut off mid-write
            return f"continuing after block {saved.done} of {saved.blocks} ({saved.cells} cells kept)"
        note = None if saved is None else "its unfinished outputs were made with other models or settings: started afresh"
        shutil.rmtree(self.folder, ignore_errors=True)
        (self.folder / "masks").mkdir(parents=True)
        self.write_text("cells.geojson", GEOJSON_HEAD)
        self.write_text("cells.csv", csv_line(self.columns))
        self.progress.geojson_bytes = len(GEOJSON_HEAD.encode())
        self.progress.csv_bytes = len(csv_line(self.columns).encode())
        self.save_progress()
        return note

    def read_progress(self) -> Optional[Progress]:
        try:
            return Progress(**json.loads((self.folder / "progress.json").read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or not ours: start afresh
            return None

    def write_text(self, name: str, text: str) -> None:
        (self.folder / name).write_text(text, encoding="utf-8")

    def save_progress(self) -> None:
        with written_atomically(self.folder / "progress.json") as tmp:
            tmp.write_text(json.dumps(asdict(self.progress)))

    # ---------------------------------------------------------------- one block

    def append(self, block: int, records: Sequence[CellRecord]) -> None:
        """Add block `block`'s cells (blocks come in order), numbered after the cells before them."""
        assert block == self.progress.done, f"block {block} arrived while block {self.progress.done} was expected"
        first = self.progress.cells + 1
        numbered = list(enumerate(records, start=first))
        features = "".join(("" if number == 1 else ",\n")
                           + feature_json(record, self.name, number, self.class_names, self.colours)
                           for number, record in numbered)
        rows = "".join(csv_line([csv_row(record, self.name, number, self.class_names).get(c, "") for c in self.columns])
                       for number, record in numbered)
        if self.with_masks and numbered:
            with written_atomically(self.masks_file(block)) as tmp, open(tmp, "wb") as file:
                pickle.dump(numbered, file)
        self.progress.geojson_bytes += self.append_to("cells.geojson", features)
        self.progress.csv_bytes += self.append_to("cells.csv", rows)
        self.progress.done, self.progress.cells = block + 1, self.progress.cells + len(records)
        self.save_progress()

    def append_to(self, name: str, text: str) -> int:
        data = text.encode("utf-8")
        with open(self.folder / name, "ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before progress.json counts it
        return len(data)

    @property
    def colours(self):
        from tools.fields.outputs import class_colours

        if not hasattr(self, "_colours"):
            self._colours = class_colours(self.class_names) if self.class_names else {}
        return self._colours

    # ---------------------------------------------------------------- the end

    def close(self) -> Tuple[Path, Path]:
        """Close the collection and move both files into place (again harmlessly after a crash half-way)."""
        if not self.progress.closed:
            self.append_to("cells.geojson", GEOJSON_TAIL)
            self.progress.closed = True
            self.save_progress()
        for partial, final in ((self.folder / "cells.geojson", self.geojson), (self.folder / "cells.csv", self.cells_csv)):
            if partial.exists():
                os.replace(partial, final)
        return self.geojson, self.cells_csv

    def block_records(self, block: int) -> List[Tuple[int, CellRecord]]:
        """Block `block`'s (number, record with masks), kept for the label images ([] for a block without cells)."""
        path = self.masks_file(block)
        if not path.exists():
            return []
        with open(path, "rb") as file:
            return pickle.load(file)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
