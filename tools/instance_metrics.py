"""Instance scores of predicted cells or nuclei against ground truth, for fields of view.

Instances may OVERLAP (ISBI cells do), so every function takes instances as a list of bool [H, W] masks (a
[N, H, W] stack or an integer label image [H, W] is converted); areas and intersections are counted per mask,
never read off a label image. Only pairs whose bounding boxes intersect are compared, so a 1024x1024 field with
tens of instances scores in milliseconds. Empty masks are no instances and are left out.

Definitions (per field; `pool_*` combine fields the way the papers do):
  detection_scores      one-to-one matching (Hungarian, scipy.optimize.linear_sum_assignment) of pairs with
                        IoU >= iou_threshold, the most pairs first and then the largest total IoU; precision,
                        recall, F1 from the matched count; dice_matched = mean Dice of the matched pairs.
  isbi_cell_scores      ISBI 2014 overlapping-cell challenge (Lu et al., IEEE TIP 2015; challenge evaluation
                        page): each GT cell G takes the prediction S with the largest Dice; it is "good" when
                        that Dice > dice_threshold (0.7). dice = mean Dice of good cells; fno = share of GT
                        cells that are not good; over good cells, tpp = |S n G| / |G| (pixel true-positive
                        rate) and fpp = |S \\ G| / (|image| - |G|) (pixel false-positive rate: wrong pixels over
                        the pixels that are not the cell). fdo = share of predictions that are no good cell's
                        match (the later ISBI 2015 evaluation's object false-discovery rate).
  aggregated_jaccard_index  Kumar et al., IEEE TMI 2017: each GT instance takes the prediction with the largest
                        IoU (a prediction may serve several GT instances, as in the original); I += |G n S|,
                        U += |G u S| (U += |G| when nothing overlaps G); every prediction no GT instance took
                        adds its area to U. AJI = I / U.
Empty cases follow tools/metrics.py: nothing to find and nothing found scores 1.0; a ratio over nothing is 0.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

Instances = Union[np.ndarray, Sequence[np.ndarray]]  # label image [H, W], stack [N, H, W] or list of [H, W]


def instance_masks(labels: np.ndarray) -> List[np.ndarray]:
    """Split an integer label image into one bool [H, W] mask per label present, in ascending label order.

    Args:
        labels: integer [H, W], 0 = background.

    Returns:
        list of bool [H, W] masks, one per non-zero label.
    """
    masks = []
    for index, box in enumerate(ndimage.find_objects(np.asarray(labels).astype(np.int64, copy=False)), start=1):
        if box is not None:  # find_objects leaves None for labels that do not occur
            mask = np.zeros(labels.shape, bool)
            mask[box] = labels[box] == index
            masks.append(mask)
    return masks


# ---------------------------------------------------------------- overlaps of two instance sets

@dataclass
class InstanceSet:
    """Non-empty instances as bounding-box crops: enough to count any pair's overlap without full-size masks."""

    index: np.ndarray  # [N] position of each instance in the caller's list (empty masks are skipped)
    boxes: np.ndarray  # [N, 4] row0, col0, row1, col1 (exclusive ends)
    crops: List[np.ndarray]  # bool [row1 - row0, col1 - col0] each
    areas: np.ndarray  # [N] pixel counts
    image_pixels: int  # H * W, 0 when no mask was given


def instance_set(instances: Instances) -> InstanceSet:
    shape = instances.shape[-2:] if isinstance(instances, np.ndarray) else np.shape(instances[0]) if len(instances) else ()
    image_pixels = int(np.prod(shape)) if len(shape) else 0  # FPp needs it even when no instance is left
    if isinstance(instances, np.ndarray) and instances.ndim == 2:
        instances = instance_masks(instances)
    index, boxes, crops = [], [], []
    for position, mask in enumerate(instances):
        mask = np.asarray(mask, bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        box = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        index.append(position)
        boxes.append(box)
        crops.append(mask[box[0]:box[2], box[1]:box[3]])
    return InstanceSet(np.asarray(index, int), np.asarray(boxes, int).reshape(-1, 4), crops,
                       np.asarray([c.sum() for c in crops], np.int64), image_pixels)


@dataclass
class Overlaps:
    """Pairwise overlap of GT (rows) and predicted (columns) instances."""

    gt: InstanceSet
    pred: InstanceSet
    intersection: np.ndarray  # int64 [G, P] pixels in both

    @property
    def union(self) -> np.ndarray:
        return self.gt.areas[:, None] + self.pred.areas[None, :] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        union = self.union
        return np.divide(self.intersection, union, out=np.zeros(union.shape), where=union > 0)

    @property
    def dice(self) -> np.ndarray:
        total = self.gt.areas[:, None] + self.pred.areas[None, :]
        return np.divide(2 * self.intersection, total, out=np.zeros(total.shape), where=total > 0)


def box_intersection(a: np.ndarray, b: np.ndarray) -> Tuple[int, int, int, int]:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def overlaps(gt: Instances, pred: Instances) -> Overlaps:
    """Intersections of every GT/predicted pair, counted only where their bounding boxes meet.

    Args:
        gt, pred: label image [H, W], stack [N, H, W] or list of bool [H, W] masks, all of one size.

    Returns:
        Overlaps with intersection [G, P] over the non-empty instances (their list positions in .gt.index,
        .pred.index).
    """
    gt_set, pred_set = instance_set(gt), instance_set(pred)
    if gt_set.image_pixels and pred_set.image_pixels and gt_set.image_pixels != pred_set.image_pixels:
        raise ValueError(f"GT masks have {gt_set.image_pixels} pixels but predicted masks {pred_set.image_pixels}")
    g, p = gt_set.boxes, pred_set.boxes
    boxes_meet = ((g[:, None, 0] < p[None, :, 2]) & (p[None, :, 0] < g[:, None, 2])
                  & (g[:, None, 1] < p[None, :, 3]) & (p[None, :, 1] < g[:, None, 3]))  # [G, P]
    intersection = np.zeros(boxes_meet.shape, np.int64)
    for i, j in zip(*np.nonzero(boxes_meet)):
        r0, c0, r1, c1 = box_intersection(g[i], p[j])
        gt_part = gt_set.crops[i][r0 - g[i, 0]:r1 - g[i, 0], c0 - g[i, 1]:c1 - g[i, 1]]
        pred_part = pred_set.crops[j][r0 - p[j, 0]:r1 - p[j, 0], c0 - p[j, 1]:c1 - p[j, 1]]
        intersection[i, j] = np.count_nonzero(gt_part & pred_part)
    return Overlaps(gt_set, pred_set, intersection)


# ---------------------------------------------------------------- detection (nuclei)

def match_by_iou(gt: Instances, pred: Instances, iou_threshold: float = 0.5) -> List[Tuple[int, int, float]]:
    """One-to-one matches with IoU >= iou_threshold: the most matches possible, then the largest total IoU.

    Returns:
        (gt position, pred position, IoU) per match, sorted by gt position; a position indexes the caller's
        list (for a label image: instance_masks order, i.e. ascending label).
    """
    table = overlaps(gt, pred)
    rows, cols = matched_pairs(table, iou_threshold)
    iou = table.iou
    return [(int(table.gt.index[i]), int(table.pred.index[j]), float(iou[i, j])) for i, j in zip(rows, cols)]


def matched_pairs(table: Overlaps, iou_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the matched pairs in `table`'s own order."""
    iou = table.iou
    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    eligible = iou >= iou_threshold
    # Each eligible pair is worth 1 plus a tie-breaker below 1/min(G, P): the count of pairs comes first (this
    # matters below IoU 0.5, where one instance can pass the threshold with several), their IoU second
    worth = eligible + eligible * iou / (2 * min(iou.shape))
    rows, cols = linear_sum_assignment(worth, maximize=True)
    keep = eligible[rows, cols]
    return rows[keep], cols[keep]


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def detection_scores(gt: Instances, pred: Instances, iou_threshold: float = 0.5) -> Dict[str, float]:
    """Object detection at IoU >= iou_threshold (the ISBI EDF nucleus target is F1 at IoU 0.5).

    Returns:
        dict with precision, recall, f1, tp, fp, fn and dice_matched (mean Dice of the matched pairs); all 1.0
        when there is nothing to find and nothing was found.
    """
    table = overlaps(gt, pred)
    rows, cols = matched_pairs(table, iou_threshold)
    tp, n_gt, n_pred = len(rows), len(table.gt.areas), len(table.pred.areas)
    if n_gt == 0 and n_pred == 0:
        return dict(precision=1.0, recall=1.0, f1=1.0, tp=0, fp=0, fn=0, dice_matched=1.0)
    return dict(precision=ratio(tp, n_pred), recall=ratio(tp, n_gt), f1=ratio(2 * tp, n_gt + n_pred),
                tp=tp, fp=n_pred - tp, fn=n_gt - tp, dice_matched=float(table.dice[rows, cols].mean()) if tp else 0.0)


def pool_detection_scores(per_field: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Detection scores over many fields from their summed tp/fp/fn (dice_matched weighted by tp)."""
    tp, fp, fn = (sum(s[k] for s in per_field) for k in ("tp", "fp", "fn"))
    dice_sum = sum(s["dice_matched"] * s["tp"] for s in per_field)
    return dict(precision=ratio(tp, tp + fp), recall=ratio(tp, tp + fn), f1=ratio(2 * tp, 2 * tp + fp + fn),
                tp=tp, fp=fp, fn=fn, dice_matched=ratio(dice_sum, tp))


# ---------------------------------------------------------------- ISBI 2014 cell scores

def isbi_cell_scores(gt: Instances, pred: Instances, dice_threshold: float = 0.7) -> Dict[str, float]:
    """The ISBI 2014 overlapping-cell measures (module docstring): Dice, FNo, TPp, FPp, plus FDo.

    Returns:
        dict with dice, fno, tpp, fpp, fdo and the counts n_gt, n_pred, n_good. dice, tpp and fpp average the
        good cells of this field (0.0 when there is none); pool fields with pool_isbi_cell_scores.
    """
    table = overlaps(gt, pred)
    n_gt, n_pred = len(table.gt.areas), len(table.pred.areas)
    if n_gt == 0 or n_pred == 0:
        nothing = float(n_gt == 0 and n_pred == 0)  # 1.0: nothing to find, nothing found
        return dict(dice=nothing, fno=float(n_gt > 0), tpp=nothing, fpp=0.0, fdo=float(n_pred > 0),
                    n_gt=n_gt, n_pred=n_pred, n_good=0)
    dice = table.dice
    best = dice.argmax(axis=1)  # [G] each GT cell's best prediction
    cells = np.arange(n_gt)
    good = dice[cells, best] > dice_threshold
    n_good = int(good.sum())
    if n_good == 0:
        return dict(dice=0.0, fno=1.0, tpp=0.0, fpp=0.0, fdo=1.0, n_gt=n_gt, n_pred=n_pred, n_good=0)
    inter = table.intersection[cells, best][good]
    gt_areas, pred_areas = table.gt.areas[good], table.pred.areas[best[good]]
    tpp = inter / gt_areas
    fpp = (pred_areas - inter) / (table.gt.image_pixels - gt_areas)
    return dict(dice=float(dice[cells, best][good].mean()), fno=1.0 - n_good / n_gt, tpp=float(tpp.mean()),
                fpp=float(fpp.mean()), fdo=1.0 - len(set(best[good].tolist())) / n_pred,
                n_gt=n_gt, n_pred=n_pred, n_good=n_good)


def pool_isbi_cell_scores(per_field: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """ISBI cell scores over many fields as the challenge reports them: averages over all good cells, FNo over
    all GT cells, FDo over all predictions."""
    n_gt, n_pred, n_good = (sum(s[k] for s in per_field) for k in ("n_gt", "n_pred", "n_good"))
    pooled = {k: ratio(sum(s[k] * s["n_good"] for s in per_field), n_good) for k in ("dice", "tpp", "fpp")}
    matched_preds = sum((1.0 - s["fdo"]) * s["n_pred"] for s in per_field)
    return dict(pooled, fno=1.0 - ratio(n_good, n_gt), fdo=1.0 - ratio(matched_preds, n_pred),
                n_gt=n_gt, n_pred=n_pred, n_good=n_good)


# ---------------------------------------------------------------- AJI

def aggregated_jaccard_index(gt: Instances, pred: Instances) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017), on per-mask areas so overlapping instances count.

    Returns:
        AJI in [0, 1]; 1.0 when both sets are empty.
    """
    table = overlaps(gt, pred)
    n_gt, n_pred = len(table.gt.areas), len(table.pred.areas)
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_pred == 0:
        return 0.0
    iou = table.iou
    best = iou.argmax(axis=1)  # [G]
    touched = iou[np.arange(n_gt), best] > 0
    intersection = table.intersection[np.arange(n_gt), best][touched].sum()
    union = table.union[np.arange(n_gt), best][touched].sum() + table.gt.areas[~touched].sum()
    unused = np.ones(n_pred, bool)
    unused[best[touched]] = False
    union += table.pred.areas[unused].sum()
    return ratio(intersection, union)
