"""What an output folder of predict.py --fields holds for review: every finished input (its <name>_summary.json
marks it finished), where its slide or field lies, its classes and the rule that made its call.

Only what this catalogue lists is ever served: a request names an input by its name here and a cell by its
number, never a path, so no request can reach a file outside the output folder and the inputs it names.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from tools.fields.summary import CallRule
from utils.errors import UserError

SUMMARY_SUFFIX = "_summary.json"
RULE_TEXT = re.compile(r"under (\d+) cells; else 'abnormal' when the cells with a summed abnormal-class probability "
                       r">= ([0-9.e+-]+) number >= ([0-9.e+-]+) per 1000")


@dataclass
class ScreenedInput:
    """One screened field or slide of the output folder."""

    name: str  # as predict.py named its outputs (may hold '/': inputs in sub-folders)
    summary: Dict  # its <name>_summary.json
    stem: Path  # output folder / name: <stem>.geojson, <stem>_cells.csv, ...
    input_path: Optional[Path]  # the slide or field itself; None when it is no longer where the summary says
    class_names: List[str]  # [] when the run had no classifier
    rule: CallRule

    def output(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)

    @property
    def geojson(self) -> Path:
        return self.output(".geojson")

    @property
    def cells_csv(self) -> Path:
        return self.output("_cells.csv")

    @property
    def review_csv(self) -> Path:
        return self.output("_review.csv")


def rule_of(summary: Dict) -> CallRule:
    """The call's thresholds, read back from the rule text the summary states (CallRule.describe wrote it)."""
    gallery = len(summary.get("most_suspicious", [])) or CallRule.gallery
    found = RULE_TEXT.search(summary.get("rule", ""))
    if not found:
        return CallRule(gallery=gallery)
    min_cells, probability, per_1000 = found.groups()
    return CallRule(float(probability), float(per_1000), int(min_cells), gallery)


def find_input(recorded: str, output_dir: Path) -> Optional[Path]:
    """The input's file: as recorded (absolute, or relative to where predict.py ran: here or above the output)."""
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, output_dir / path,
                                                     *(parent / path for parent in output_dir.parents)]
    return next((c.resolve() for c in candidates if c.is_file()), None)


def read_catalogue(output_dir: Path) -> Dict[str, ScreenedInput]:
    """Every finished input of an output folder of predict.py --fields, by name (sorted).

    Raises UserError when the folder holds no finished input (not such a folder, or not finished)."""
    output_dir = Path(output_dir).resolve()
    if not output_dir.is_dir():
        raise UserError(f"{output_dir}: no such folder; pass the --output-dir of a predict.py --fields run")
    inputs = {}
    for path in sorted(output_dir.rglob(f"*{SUMMARY_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours, or being written: a finished input's summary is written in one rename
        if not isinstance(summary, dict) or "outputs" not in summary or "cells" not in summary:
            continue
        name = path.relative_to(output_dir).as_posix()[:-len(SUMMARY_SUFFIX)]
        stem = output_dir / name
        if not stem.with_name(stem.name + "_cells.csv").is_file():
            continue
        inputs[name] = ScreenedInput(name, summary, stem, find_input(summary.get("input", ""), output_dir),
                                     list(summary.get("counts", {})), rule_of(summary))
    if not inputs:
        raise UserError(f"{output_dir}: no screened input found (no <name>_summary.json beside its <name>_cells.csv); "
                        f"pass the --output-dir of a finished predict.py --fields run")
    return inputs
