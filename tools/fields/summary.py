"""The answer for a slide (or a field): counts per class, abnormal cells per 1000, a call, the cells to see first.

Read back from the input's finished <name>_cells.csv in one pass, so it costs no memory per cell and can be
made again with other thresholds without screening the slide again. The call is a stated rule, not a
diagnosis, and its thresholds are flags (predict.py --abnormal-probability, --abnormal-per-1000, --min-cells):
  - fewer cells than --min-cells: "unsatisfactory" (The Bethesda System asks at least 5000 well-preserved
    squamous cells of a liquid-based slide);
  - else "abnormal" when the cells whose summed probability of the abnormal classes is at least
    --abnormal-probability number at least --abnormal-per-1000 per 1000 cells; else "NILM" (negative for
    intraepithelial lesion or malignancy);
  - "not classified" without a classifier.
The thresholds are not calibrated on real slides (none are available to this project): set them on your own.
"""
import csv
import heapq
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tools.layouts.cells import normal_class_names


@dataclass(frozen=True)
class CallRule:
    abnormal_probability: float = 0.5  # a cell counts as abnormal from this summed probability of the abnormal classes
    abnormal_per_1000: float = 5.0  # abnormal cells per 1000 cells from which a slide is called abnormal
    min_cells: int = 5000  # fewer cells: too few to call (Bethesda's adequacy for liquid-based slides)
    gallery: int = 50  # most suspicious cells listed and shown

    def describe(self) -> str:
        return (f"'unsatisfactory' under {self.min_cells} cells; else 'abnormal' when the cells with a summed "
                f"abnormal-class probability >= {self.abnormal_probability:g} number >= {self.abnormal_per_1000:g} per "
                f"1000 cells; else 'NILM'")


def abnormal_classes(class_names: Sequence[str]) -> List[str]:
    normal = set(normal_class_names(class_names))
    return [name for name in class_names if name not in normal]


def the_call(cells: int, abnormal: int, classified: bool, rule: CallRule) -> str:
    if not classified:
        return "not classified"
    if cells < rule.min_cells:
        return "unsatisfactory"
    return "abnormal" if abnormal * 1000 >= rule.abnormal_per_1000 * cells else "NILM"


def summarise_cells(cells_csv: Path, class_names: Optional[Sequence[str]], rule: CallRule,
                    mpp: Optional[float]) -> Dict:
    """Counts, the call and the `rule.gallery` most suspicious cells (highest summed abnormal probability first,
    then in the table's order), each with its place on the slide in px and, when the scale is known, in microns."""
    abnormal_names = abnormal_classes(class_names) if class_names else []
    counts, cells, abnormal, heap = Counter(), 0, 0, []
    with open(cells_csv, newline="") as table:
        for row in csv.DictReader(table):
            cells += 1
            counts[row["class"]] += 1
            if not class_names:
                continue
            probability = sum(float(row[f"prob_{name}"]) for name in abnormal_names)
            abnormal += probability >= rule.abnormal_probability
            item = (probability, -cells, row)  # ties: the earlier row first (ids repeat across a run's inputs)
            if len(heap) < rule.gallery:
                heapq.heappush(heap, item)
            elif rule.gallery:
                heapq.heappushpop(heap, item)
    summary = {"cells": cells, "call": the_call(cells, abnormal, bool(class_names), rule), "rule": rule.describe()}
    if not class_names:
        return summary
    summary.update(counts={name: counts.get(name, 0) for name in class_names}, abnormal_classes=abnormal_names,
                   abnormal_cells=abnormal, abnormal_per_1000=round(1000 * abnormal / cells, 3) if cells else 0.0,
                   most_suspicious=[suspicious_cell(row, probability, mpp) for probability, _, row in sorted(heap, reverse=True)])
    return summary


def suspicious_cell(row: Dict, probability: float, mpp: Optional[float]) -> Dict:
    x, y = float(row["centroid_x"]), float(row["centroid_y"])
    cell = {"id": int(row["id"]), "class": row["class"], "abnormal_probability": round(probability, 4),
            "x": x, "y": y, "box": [int(row[k]) for k in ("x0", "y0", "x1", "y1")]}
    if mpp:
        cell.update(x_um=round(x * mpp, 1), y_um=round(y * mpp, 1))
    return cell
