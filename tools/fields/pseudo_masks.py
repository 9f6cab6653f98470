"""Training targets for fields whose cells are marked by a point on the nucleus (CRIC Cervix), not outlined.

A field model learns nuclei and cells as masks. From a point, a nucleus is grown over the dark pixels around it
(`point_nucleus`), and a cell is the tissue around its nucleus, shared with neighbouring marked nuclei by a
watershed and kept within a reach of a few nuclei (`point_cells`). Both are guesses: where they may be wrong the
target says so (UNKNOWN), and the loss leaves those pixels out (train_segment.dice_bce_loss).

What is not marked is not a squamous nucleus to the nucleus target: neutrophils, lymphocytes, red cells, debris,
and the squamous cells the annotators left unmarked (at the border, unclear). The last are few; teaching the model
to leave the first out is the point.
"""
from typing import List, Tuple

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from tools.fields.tissue import glass_colour
from utils.preprocessing import fill_holes

UNKNOWN = 255  # a target pixel whose truth the points do not tell (as tools.fields.data.UNKNOWN)
MAX_NUCLEUS_RADIUS_PX = 36  # grown nuclei stop here: CRIC's largest (HSIL, SCC) are ~60 px across at 1280 px wide
FALLBACK_RADIUS_PX = 10  # a point on no dark blob (a pale nucleus) gets a disc of this radius
SNAP_PX = 5  # a point this close to a dark blob marks that blob (points are placed by hand)
NUCLEUS_CONTRAST = 0.45  # the nucleus threshold between its core's grey and the surroundings', from the core
UNSURE_RING_PX = 3  # around a grown nucleus, its border is uncertain: neither nucleus nor background
CELL_REACH_NUCLEI = 2.5  # a cell reaches at most this many median nucleus diameters from its nucleus's centre
TISSUE_DIFFERENCE = 35  # grey levels from the glass above which a pixel is tissue (mucus and haze are 10-30 away)


def point_nucleus(grey: np.ndarray, x: int, y: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The nucleus around a point: (bool mask of a window around it, the window's top-left (x0, y0)).

    The dark blob that holds the point (or lies within SNAP_PX of it) at a threshold between the grey of the point's
    core and the 75th percentile of the window; thin bridges to neighbours are cut by an opening.
    """
    height, width = grey.shape
    r = MAX_NUCLEUS_RADIUS_PX
    x0, y0, x1, y1 = max(x - r, 0), max(y - r, 0), min(x + r + 1, width), min(y + r + 1, height)
    window = grey[y0:y1, x0:x1].astype(np.float32)
    cx, cy = x - x0, y - y0
    yy, xx = np.mgrid[0:window.shape[0], 0:window.shape[1]]
    distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
    core, surround = np.median(window[distance2 <= 9]), np.percentile(window, 75)
    dark = (window < core + NUCLEUS_CONTRAST * (surround - core)) & (distance2 <= r * r)
    dark = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    blobs, _ = ndimage.label(dark)
    label = blobs[cy, cx]
    if label == 0 and blobs.any():
        nearest = np.where(blobs > 0, distance2, np.inf)
        index = np.unravel_index(np.argmin(nearest), nearest.shape)
        label = blobs[index] if nearest[index] <= SNAP_PX ** 2 else 0
    if label == 0 or (blobs == label).sum() < np.pi * (FALLBACK_RADIUS_PX / 2) ** 2:
        return distance2 <= FALLBACK_RADIUS_PX ** 2, (x0, y0)
    return fill_holes(blobs == label), (x0, y0)


def point_nuclei(image: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nucleus labels from points and the pixels whose nucleus truth is unsure.

    Args:
        image: uint8 RGB [H, W, 3].
        points: float [N, 2] nucleus centres, x, y in image pixels.

    Returns:
        (int32 [H, W] labels, point k -> label k + 1, 0 = not a marked nucleus; bool [H, W] unsure: a ring around
        each grown nucleus). Where grown nuclei overlap, the pixel goes to the nearer point.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    labels = np.zeros(grey.shape, np.int32)
    nearest = np.full(grey.shape, np.inf, np.float32)
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * UNSURE_RING_PX + 1,) * 2)
    unsure = np.zeros(grey.shape, bool)
    for index, (x, y) in enumerate(np.round(points).astype(int)):
        mask, (x0, y0) = point_nucleus(grey, int(x), int(y))
        h, w = mask.shape
        yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
        distance = np.hypot(xx - x, yy - y).astype(np.float32)
        closer = mask & (distance < nearest[y0:y0 + h, x0:x0 + w])
        labels[y0:y0 + h, x0:x0 + w][closer] = index + 1
        nearest[y0:y0 + h, x0:x0 + w][closer] = distance[closer]
        grown = cv2.dilate(mask.astype(np.uint8), ring).astype(bool)
        unsure[y0:y0 + h, x0:x0 + w] |= grown & ~cv2.erode(mask.astype(np.uint8), ring).astype(bool)
    return labels, unsure


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels that differ from the glass (the field's commonest colour) by more than TISSUE_DIFFERENCE."""
    small = cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    glass, _ = glass_colour(small)
    blurred = cv2.GaussianBlur(image, (5, 5), 0).astype(np.float32)
    differs = (np.abs(blurred - glass).max(axis=2) > TISSUE_DIFFERENCE).astype(np.uint8)
    # pale spots inside a cytoplasm are still that cell
    return cv2.morphologyEx(differs, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))).astype(bool)


def point_cells(image: np.ndarray, nuclei: np.ndarray, nucleus_diameter: float) -> List[np.ndarray]:
    """The cell of each marked nucleus (labels 1..N): tissue in its watershed basin, within the reach, solid.

    Returns:
        bool [H, W] per nucleus label 1..N, each holding its nucleus.
    """
    count = int(nuclei.max())
    if count == 0:
        return []
    tissue = tissue_mask(image) | (nuclei > 0)
    distance = ndimage.distance_transform_edt(nuclei == 0)
    basins = watershed(distance, nuclei, mask=tissue)
    reach = CELL_REACH_NUCLEI * nucleus_diameter
    height, width = nuclei.shape
    cells = []
    for label, box in enumerate(ndimage.find_objects(nuclei), start=1):
        cell = np.zeros(nuclei.shape, bool)
        if box is None:
            cells.append(cell)
            continue
        centre = [(s.start + s.stop - 1) / 2 for s in box]
        # the work is done in the square the reach allows around the nucleus, not the whole field
        top, left = (max(int(c - reach), 0) for c in centre)
        bottom, right = min(int(centre[0] + reach) + 1, height), min(int(centre[1] + reach) + 1, width)
        rows, cols = np.ogrid[top:bottom, left:right]
        near = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= reach ** 2
        nucleus = nuclei[top:bottom, left:right] == label
        blobs, _ = ndimage.label((basins[top:bottom, left:right] == label) & near)
        owner = np.bincount(blobs[nucleus]).argmax()
        cell[top:bottom, left:right] = fill_holes(blobs == owner) | nucleus
        cells.append(cell)
    return cells


def point_targets(image: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray], np.ndarray]:
    """Everything a field model learns from a point-marked field.

    Returns:
        (nucleus labels int32 [H, W], nucleus_unsure bool [H, W], cells: bool [H, W] per nucleus, foreground
        uint8 [H, W]: 1 in a marked cell, 0 on glass, UNKNOWN on other tissue (unmarked cells, blood, mucus)).
    """
    nuclei, unsure = point_nuclei(image, points)
    areas = np.bincount(nuclei.ravel())[1:]
    diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi))) if (areas > 0).any() else 2.0 * FALLBACK_RADIUS_PX
    cells = point_cells(image, nuclei, diameter)
    foreground = np.where(tissue_mask(image), UNKNOWN, 0).astype(np.uint8)
    for cell in cells:
        foreground[cell] = 1
    return nuclei, unsure, cells, foreground
