"""A reviewer's decisions on the cells of one input, kept in <name>_review.csv, and what they change.

The file is an append-only log, one decision a line (time, cell_id, decision, class, model_class), written at
once: each line is appended under an exclusive lock (fcntl.flock: two browser tabs, or two servers, on one
slide interleave whole lines, never lose one) and fsync'd before the request is answered, so a killed server
loses nothing it confirmed. The last line of a cell wins; `clear` takes its decision back. A line cut off by a
kill mid-write is skipped when read, and the next append starts on a new line.

Decisions:
    accept    the model's class is right
    reject    not a cell to count (debris, an artefact, a cut cell): left out of the reviewed counts
    relabel   the cell is of `class` (any class of the run)
    clear     no decision (the model's class again)
"""
import csv
import fcntl
import io
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tools.fields.summary import CallRule, abnormal_classes, the_call

DECISIONS = ("accept", "reject", "relabel", "clear")
DECISION_CODES = {"accept": 1, "reject": 2, "relabel": 3}  # 0: none (the viewer's codes)
COLUMNS = ("time", "cell_id", "decision", "class", "model_class")
REJECTED = "rejected"  # the class a rejected cell shows (in the viewer and in QuPath)


class DecisionError(ValueError):
    """A decision that cannot be taken (unknown decision or class): nothing is written."""


def check_decision(decision: str, class_name: Optional[str], class_names: Sequence[str]) -> str:
    """The class the decision gives the cell ('' for reject and clear; None for accept: the model's); raises
    DecisionError for an unknown decision or class."""
    if decision not in DECISIONS:
        raise DecisionError(f"unknown decision {decision!r}; one of: {', '.join(DECISIONS)}")
    if decision == "relabel":
        if class_name not in class_names:
            raise DecisionError(f"relabel needs a class of the run ({', '.join(class_names)}), got {class_name!r}")
        return class_name
    return None if decision == "accept" else ""


class DecisionLog:
    """<name>_review.csv: append decisions, read back the latest one per cell (also those other processes wrote)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.latest: Dict[int, Tuple[str, str]] = {}  # cell id -> (decision, class)
        self.read_bytes = 0
        self.lock = threading.Lock()

    def append(self, cell_id: int, decision: str, class_name: str, model_class: str) -> None:
        """Write one decision to disk (locked, fsync'd) before returning."""
        values = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cell_id, decision, class_name, model_class]
        with open(self.path, "a+b") as log:
            fcntl.flock(log, fcntl.LOCK_EX)  # released when the file closes
            size = log.seek(0, os.SEEK_END)
            text = csv_line(COLUMNS) if size == 0 else ""
            if size:
                log.seek(size - 1)
                if log.read(1) != b"\n":  # a line cut off by a kill: start afresh on the next line
                    text = "\n"
            log.write((text + csv_line(values)).encode("utf-8"))
            log.flush()
            os.fsync(log.fileno())

    def decisions(self) -> Dict[int, Tuple[str, str]]:
        """cell id -> (decision, class), the latest of each cell, after reading what was appended since last time."""
        with self.lock:
            if self.path.is_file():
                with open(self.path, "rb") as log:
                    if log.seek(0, os.SEEK_END) < self.read_bytes:  # removed and begun again: read it afresh
                        self.latest, self.read_bytes = {}, 0
                    log.seek(self.read_bytes)
                    new = log.read()
                complete = new[:new.rfind(b"\n") + 1]  # a line still being written is read next time
                self.read_bytes += len(complete)
                for row in csv.reader(io.StringIO(complete.decode("utf-8", errors="replace"))):
                    self.take(row)
            elif self.read_bytes:
                self.latest, self.read_bytes = {}, 0
            return dict(self.latest)

    def take(self, row: Sequence[str]) -> None:
        if len(row) != len(COLUMNS) or row[2] not in DECISIONS:
            return  # the header, or a line cut off by a kill
        try:
            cell_id = int(row[1])
        except ValueError:
            return
        if row[2] == "clear":
            self.latest.pop(cell_id, None)
        else:
            self.latest[cell_id] = (row[2], row[3])


def csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def reviewed_classes(model_class: np.ndarray, row_of_id: Dict[int, int], decisions: Dict[int, Tuple[str, str]],
                     class_names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(class index per row after review, with len(class_names) for rejected; decision code per row)."""
    final, codes = model_class.astype(np.int64), np.zeros(len(model_class), np.int8)
    index = {name: i for i, name in enumerate(class_names)}
    for cell_id, (decision, class_name) in decisions.items():
        row = row_of_id.get(cell_id)
        if row is None:
            continue
        codes[row] = DECISION_CODES[decision]
        if decision == "reject":
            final[row] = len(class_names)
        elif decision == "relabel" and class_name in index:
            final[row] = index[class_name]
    final[final < 0] = len(class_names)  # a cell without a class of the run (none classified): drawn as rejected
    return final, codes


def reviewed_summary(final: np.ndarray, codes: np.ndarray, abnormal_probability: np.ndarray,
                     class_names: Sequence[str], rule: CallRule) -> Dict:
    """The input's counts and call after review: rejected cells left out, reviewed cells counted by the class the
    reviewer gave (abnormal when it is an abnormal class), the others as the model's call counts them
    (tools/fields/summary.py's rule and call)."""
    kept = final < len(class_names)
    abnormal_names = set(abnormal_classes(class_names)) if class_names else set()
    is_abnormal_class = np.array([name in abnormal_names for name in class_names] + [False])
    reviewed = codes > 0
    abnormal = int(np.sum(kept & reviewed & is_abnormal_class[final]) +
                   np.sum(~reviewed & (abnormal_probability >= rule.abnormal_probability)))
    cells = int(kept.sum())
    counts = np.bincount(final[kept], minlength=len(class_names))
    return {"cells": cells, "call": the_call(cells, abnormal, bool(class_names), rule),
            "counts": {name: int(counts[i]) for i, name in enumerate(class_names)}, "abnormal_cells": abnormal,
            "abnormal_per_1000": round(1000 * abnormal / cells, 3) if cells else 0.0,
            "reviewed": int(reviewed.sum()), "rejected": int((codes == DECISION_CODES["reject"]).sum())}
