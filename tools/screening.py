"""The screening answer measured: predict.py --fields outputs scored against annotated nucleus points (CRIC).

A predicted cell finds an annotated nucleus when the point lies inside its nucleus polygon, or within
MATCH_RADIUS_PX of its nucleus's centre; each prediction finds at most one point and each point is found at most
once, pairs taken greedily from the closest (point to nucleus centre). Every predicted cell counts in "predicted
cells per annotated cell" and in the field's ranking, found or not: blood and debris called cells cost there.

A cell's abnormal score is 1 - P(normal), the normal classes' probabilities summed (NILM for a classifier in
Bethesda's classes; tools/layouts.normal_class_names for others). A field's abnormal score is the MAX of its
predicted cells' abnormal scores (0 without cells): one convincing abnormal cell is what a screener acts on.
A field is abnormal when any of its annotated cells is not NILM; CRIC's fields with NILM cells only are the
normal ones. Top-10 hit: an abnormal field whose TOP_K most suspicious predicted cells include one found at a
truly abnormal point.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from sklearn import metrics as skm

from tools.layouts.cells import normal_class_names
from tools.layouts.points import BETHESDA_CLASSES, NORMAL_CLASS, FieldPoints, is_bethesda
from tools.metrics import (
    SCREENING_SPECIFICITIES,
    bethesda_metrics,
    sensitivity_at_specificity,
    threshold_at_specificity,
)
from utils.errors import UserError

MATCH_RADIUS_PX = 12  # a point this close to a predicted nucleus's centre is found even outside its outline
TOP_K = 10  # the most suspicious cells of a field that a screener would look at


@dataclass
class PredictedCells:
    """The cells predict.py --fields found in one field (or a part of a slide), in that field's pixels."""

    centres: np.ndarray  # float [M, 2] x, y of each nucleus centre (NaN for a cell without nucleus)
    nuclei: List[Optional[np.ndarray]]  # [P, 2] x, y ring of each nucleus, or None
    cell_centres: np.ndarray  # float [M, 2] x, y of each cell's outline centre
    probs: Optional[np.ndarray]  # [M, K] class probabilities (None: the cells were not classified)
    class_names: List[str]

    def __len__(self) -> int:
        return len(self.centres)

    def subset(self, keep: np.ndarray, shift=(0.0, 0.0)) -> "PredictedCells":
        """The cells where `keep` (bool [M]), moved by -shift (slide pixels to field pixels)."""
        offset = np.asarray(shift, float)
        return PredictedCells(self.centres[keep] - offset,
                              [None if ring is None else ring - offset for ring, k in zip(self.nuclei, keep) if k],
                              self.cell_centres[keep] - offset, None if self.probs is None else self.probs[keep],
                              self.class_names)


def ring_centre(ring: np.ndarray) -> np.ndarray:
    """The area centroid of a closed ring [P, 2] (its vertex mean when it encloses no area)."""
    moments = cv2.moments(ring.astype(np.float32))
    return np.array([moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]]) if moments["m00"] \
        else ring.mean(axis=0)


def read_predicted_cells(geojson: Path) -> PredictedCells:
    """The cells of a predict.py --fields GeoJSON: nucleus polygons and centres, class probabilities (prob_<class>)."""
    try:
        features = json.loads(Path(geojson).read_text())["features"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{geojson}: not a predict.py --fields GeoJSON ({error}); run predict.py --fields again")
    measurements = [f.get("properties", {}).get("measurements", {}) for f in features]
    class_names = [key[5:] for key in (measurements[0] if measurements else {}) if key.startswith("prob_")]
    nuclei, centres, cell_centres = [], [], []
    for feature in features:
        nucleus = feature.get("nucleusGeometry") or feature.get("properties", {}).get("nucleusGeometry")
        ring = np.asarray(nucleus["coordinates"][0], float) if nucleus else None
        nuclei.append(ring)
        centres.append(ring_centre(ring) if ring is not None else (np.nan, np.nan))
        cell_centres.append(ring_centre(np.asarray(feature["geometry"]["coordinates"][0], float)))
    probs = (np.array([[m.get(f"prob_{name}", 0.0) for name in class_names] for m in measurements], float)
             if class_names else None)
    return PredictedCells(np.array(centres, float).reshape(-1, 2), nuclei, np.array(cell_centres, float).reshape(-1, 2),
                          probs, class_names)


def match_points(points: np.ndarray, cells: PredictedCells, radius: float = MATCH_RADIUS_PX) -> np.ndarray:
    """For each annotated point, the index of the predicted cell that found it, or -1 (module docstring).

    Args:
        points: float [N, 2] x, y.
        cells: the predictions of the same field.
        radius: a point within this many px of a nucleus centre is found even outside the outline.

    Returns:
        int [N].
    """
    matched = np.full(len(points), -1, int)
    if not len(points) or not len(cells):
        return matched
    distance = np.linalg.norm(points[:, None, :] - cells.centres[None, :, :], axis=2)  # [N, M], NaN without nucleus
    pairs = []
    for i, j in zip(*np.nonzero(np.nan_to_num(distance, nan=np.inf) < np.inf)):
        ring = cells.nuclei[j]
        inside = ring is not None and cv2.pointPolygonTest(ring.astype(np.float32).reshape(-1, 1, 2),
                                                           (float(points[i, 0]), float(points[i, 1])), False) >= 0
        if inside or distance[i, j] <= radius:
            pairs.append((distance[i, j], i, j))
    used = set()
    for _, i, j in sorted(pairs):
        if matched[i] < 0 and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def abnormal_scores(cells: PredictedCells) -> Optional[np.ndarray]:
    """[M] 1 - P(normal classes) per cell, None when the cells carry no probabilities or no class is normal."""
    normal = normal_class_names(cells.class_names)
    if cells.probs is None or not normal:
        return None
    return 1.0 - cells.probs[:, [cells.class_names.index(name) for name in normal]].sum(axis=1)


@dataclass
class FieldResult:
    field_id: str
    labels: Tuple[str, ...]  # the annotated points' classes
    matched: np.ndarray  # [N] the predicted cell that found each point, or -1
    predicted: int  # cells predicted in the field
    scores: Optional[np.ndarray]  # [M] every predicted cell's abnormal score
    probs: Optional[np.ndarray]  # [N, K] the probabilities of the cell that found each point (rows of -1 points: NaN)

    @property
    def abnormal(self) -> bool:
        return any(label != NORMAL_CLASS for label in self.labels)

    def field_score(self) -> float:
        return float(self.scores.max()) if self.scores is not None and len(self.scores) else 0.0

    def top_k_hit(self, k: int = TOP_K) -> bool:
        """Whether the field's k most suspicious predicted cells include one found at a truly abnormal point."""
        if self.scores is None:
            return False
        top = set(np.argsort(-self.scores, kind="stable")[:k].tolist())
        return any(j in top for j, label in zip(self.matched, self.labels) if j >= 0 and label != NORMAL_CLASS)


def score_field(field: FieldPoints, cells: PredictedCells, radius: float = MATCH_RADIUS_PX) -> FieldResult:
    matched = match_points(field.points, cells, radius)
    probs = None
    if cells.probs is not None:
        probs = np.full((len(matched), cells.probs.shape[1]), np.nan)
        probs[matched >= 0] = cells.probs[matched[matched >= 0]]
    scores = abnormal_scores(cells) if len(cells) else np.zeros(0)  # a field without cells scores 0, classified or not
    return FieldResult(field.field_id, field.labels, matched, len(cells), scores, probs)


def binary_scores(is_positive: np.ndarray, scores: np.ndarray) -> Dict:
    """ROC-AUC and sensitivity at the screening specificities (None where one group is missing)."""
    both = 0 < is_positive.sum() < len(is_positive)
    return {"roc_auc": float(skm.roc_auc_score(is_positive, scores)) if both else None,
            **{f"sensitivity_at_{round(100 * level)}_specificity":
               sensitivity_at_specificity(is_positive, scores, level) if both else None for level in SCREENING_SPECIFICITIES},
            **{f"threshold_at_{round(100 * level)}_specificity":  # on val fields: where to set a call's threshold
               threshold_at_specificity(is_positive, scores, level) if both else None for level in SCREENING_SPECIFICITIES},
            "positives": int(is_positive.sum()), "negatives": int((~is_positive).sum())}


def detection_summary(results: Sequence[FieldResult]) -> Dict:
    labels = np.array([label for r in results for label in r.labels])
    found = np.concatenate([r.matched >= 0 for r in results]) if results else np.zeros(0, bool)
    points, predicted = len(labels), sum(r.predicted for r in results)
    return {"annotated_cells": points, "predicted_cells": predicted, "found": int(found.sum()),
            "detection_recall": float(found.mean()) if points else None,
            "predicted_per_annotated": predicted / points if points else None,
            "recall_per_class": {name: float(found[labels == name].mean()) for name in BETHESDA_CLASSES
                                 if (labels == name).any()}}


def cell_summary(results: Sequence[FieldResult], class_names: Sequence[str]) -> Dict:
    """The found cells scored in their annotated classes: NILM vs abnormal always, Bethesda's metrics when the
    classifier's classes are Bethesda's and hold every annotated class."""
    rows = [(label, probs) for r in results if r.probs is not None
            for label, probs, j in zip(r.labels, r.probs, r.matched) if j >= 0]
    normal = normal_class_names(class_names)
    if not rows or not normal:
        return {}
    labels, probs = [label for label, _ in rows], np.array([p for _, p in rows])
    scores = 1.0 - probs[:, [list(class_names).index(name) for name in normal]].sum(axis=1)
    summary = {"nilm_vs_abnormal": binary_scores(np.array([label != NORMAL_CLASS for label in labels]), scores)}
    if is_bethesda(class_names) and set(labels) <= set(class_names):
        summary["bethesda"] = bethesda_metrics([list(class_names).index(label) for label in labels], probs, class_names)
    return summary


def field_summary(results: Sequence[FieldResult]) -> Dict:
    if not results or any(r.scores is None for r in results):  # not classified
        return {}
    is_abnormal = np.array([r.abnormal for r in results])
    hits = [r.top_k_hit() for r in results if r.abnormal]
    return {"fields": len(results), "abnormal_fields": int(is_abnormal.sum()),
            "field_auc": binary_scores(is_abnormal, np.array([r.field_score() for r in results]))["roc_auc"],
            f"top{TOP_K}_hit_rate": float(np.mean(hits)) if hits else None}


def screening_metrics(results: Sequence[FieldResult], class_names: Sequence[str]) -> Dict:
    """Everything the module docstring defines, pooled over the fields: {"detection", "cells", "fields"}."""
    return {"detection": detection_summary(results), "cells": cell_summary(results, class_names),
            "fields": field_summary(results)}


def score_fields(fields: Sequence[FieldPoints], cells_of: Dict[str, PredictedCells],
                 radius: float = MATCH_RADIUS_PX) -> Tuple[Dict, List[FieldResult]]:
    """Score each field against its predictions (cells_of: field_id -> cells). Returns (screening_metrics, results)."""
    results = [score_field(field, cells_of[field.field_id], radius) for field in fields]
    class_names = next((cells.class_names for cells in cells_of.values() if cells.class_names), [])
    return screening_metrics(results, class_names), results


def cells_on_slide_fields(cells: PredictedCells, manifest: Dict, fields: Sequence[FieldPoints]) -> Dict[str, PredictedCells]:
    """The slide's cells of each field placed on it (tools/fields/make_slide.py's manifest), in field pixels.

    A cell belongs to the field that holds its nucleus centre (its outline's centre without nucleus)."""
    by_image = {Path(field.image_path).resolve(): field for field in fields}
    anchors = np.where(np.isnan(cells.centres), cells.cell_centres, cells.centres)
    cells_of = {}
    for placed in manifest["fields"]:
        field = by_image.get(Path(placed["image"]).resolve())
        if field is None:
            continue
        x, y, width, height = placed["x"], placed["y"], placed["width"], placed["height"]
        inside = (anchors[:, 0] >= x) & (anchors[:, 0] < x + width) & (anchors[:, 1] >= y) & (anchors[:, 1] < y + height)
        cells_of[field.field_id] = cells.subset(inside, (x, y))
    return cells_of
