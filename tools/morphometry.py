"""Hand-crafted cell measurements, the ones cytologists grade dysplasia by.

Shape, size, grey level, colour, extrema and chromatin texture of one cell from its RGB image,
whole-cell mask and nucleus mask, in the cell's native pixels (no resizing: sizes stay in px).
HERLEV_FEATURES names the 20 features of the Herlev benchmark (Jantzen et al., "Pap-smear benchmark
data for pattern classification", NiSIS 2005; its "cytoplasm" shape features are measured on the
cell outline); the others add chromatin texture, colour and membrane irregularity.

Conventions (also in `cell_measurements`):
  * cell = cell_mask OR nuc_mask (a predicted nucleus may poke out of its predicted cell);
    cytoplasm = cell AND NOT nucleus.
  * Areas and grey/colour statistics use every pixel of a region; shape features (diameters,
    perimeter, roundness, ...) use its largest 8-connected component.
  * A feature that is undefined (empty region, zero denominator) is 0; `nucleus_found` and
    `cytoplasm_found` (0/1) say when that happened, so a model can tell 0 from "absent".
"""
from typing import Dict, Iterable, Tuple

import cv2
import numpy as np
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import perimeter_crofton, regionprops
from skimage.morphology import local_maxima, local_minima

MEASUREMENTS_VERSION = 1  # bump when any measurement changes: cached measurements stop matching
CROP_MARGIN = 3        # px kept around the cell: extrema and smoothing need a little context
SMOOTH_SIGMA = 1.0     # Gaussian sigma (px) before counting extrema: drops pixel noise, keeps chromatin clumps
EXTREMUM_RADIUS = 3    # px: Herlev's neighbourhood for local extrema
EXTREMUM_HEIGHT = 3    # grey levels an extremum must rise above that neighbourhood: ignores noise ripples
GLCM_LEVELS = 32       # chromatin grey levels: fixed bins of 8 grey values, so cells stay comparable
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)  # pooled: texture should not depend on rotation

_SHAPE_KEYS = ("shortest_diameter_px", "longest_diameter_px", "elongation", "roundness", "perimeter_px",
               "eccentricity", "solidity", "convexity")
_GLCM_KEYS = ("contrast", "homogeneity", "energy", "correlation", "entropy")
_STAT_KEYS = ("grey_mean", "grey_sd", "r_mean", "g_mean", "b_mean", "r_sd", "g_sd", "b_sd")

FEATURE_NAMES: Tuple[str, ...] = (
    ("nucleus_found", "cytoplasm_found", "nucleus_count", "nucleus_area_px", "cytoplasm_area_px",
     "nc_ratio", "nucleus_cell_area_fraction", "nucleus_cytoplasm_grey_ratio", "nucleus_position")
    + tuple(f"nucleus_{key}" for key in _SHAPE_KEYS)
    + tuple(f"cell_{key}" for key in _SHAPE_KEYS)
    + tuple(f"nucleus_{key}" for key in _STAT_KEYS)
    + tuple(f"cytoplasm_{key}" for key in _STAT_KEYS)
    + ("nucleus_maxima_count", "nucleus_minima_count", "cytoplasm_maxima_count", "cytoplasm_minima_count")
    + tuple(f"nucleus_glcm_{key}" for key in _GLCM_KEYS)
)
HERLEV_FEATURES: Tuple[str, ...] = (
    "nucleus_area_px", "cytoplasm_area_px", "nucleus_cell_area_fraction", "nucleus_grey_mean", "cytoplasm_grey_mean",
    "nucleus_shortest_diameter_px", "nucleus_longest_diameter_px", "cell_shortest_diameter_px",
    "cell_longest_diameter_px", "nucleus_elongation", "cell_elongation", "nucleus_roundness", "cell_roundness",
    "nucleus_perimeter_px", "cell_perimeter_px", "nucleus_position", "nucleus_maxima_count", "nucleus_minima_count",
    "cytoplasm_maxima_count", "cytoplasm_minima_count",
)


def _largest_component(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """Return (mask of the largest 8-connected component, number of components)."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # zero or one component: nothing to choose
        return mask, count - 1
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return labels == largest, count - 1


def _convex_hull(component: np.ndarray) -> np.ndarray:
    """Filled convex hull of a component (bool [H, W]).

    cv2 instead of regionprops' image_convex, which tests every pixel against the polygon in
    Python-level loops and cost ~2 ms per region; this costs ~0.05 ms. Drawing the hull through
    the outer pixels' centres includes those pixels, so the hull always covers the component.
    """
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    filled = np.zeros(component.shape, np.uint8)
    cv2.fillPoly(filled, [hull], 1)
    return filled.astype(bool) | component


def _shape(component: np.ndarray) -> Tuple[Dict[str, float], np.ndarray]:
    """Shape of one component (non-empty bool [H, W]); returns (features keyed by _SHAPE_KEYS, centroid [2])."""
    region = regionprops(component.astype(np.uint8))[0]
    # Crofton perimeter (4 directions): within 2 % of 2 pi r for discs of radius >= 15 px, where the
    # contour-length estimate (regionprops' `perimeter`) is 5 % long and caps a disc's roundness at 0.91.
    area, perim = float(region.area), float(region.perimeter_crofton)
    longest, shortest = float(region.axis_major_length), float(region.axis_minor_length)
    # Diameters are the axes of the moment-equivalent ellipse: robust to ragged pixel outlines,
    # and an ellipse with semi-axes a >= b gets exactly 2a and 2b.
    box = region.slice
    hull = _convex_hull(component[box])
    hull_perim = float(perimeter_crofton(hull, directions=4))
    shape = {
        "shortest_diameter_px": shortest,
        "longest_diameter_px": longest,
        "elongation": longest / max(shortest, 1.0),  # longest/shortest: 1 for a disc, a/b for an ellipse
        "roundness": 4.0 * np.pi * area / perim ** 2 if perim > 0 else 0.0,  # 1 for a disc, lower when ragged
        "perimeter_px": perim,
        "eccentricity": float(region.eccentricity),
        "solidity": area / float(hull.sum()),  # area / convex hull area: falls with lobes and notches
        "convexity": hull_perim / perim if perim > 0 else 0.0,  # hull / own perimeter: falls with a wiggly outline
    }
    return shape, np.asarray(region.centroid)


def _pixel_stats(rgb: np.ndarray, grey: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Mean and SD of grey and of each RGB channel (0-255) over the pixels of `mask` (non-empty)."""
    mask_u8 = mask.astype(np.uint8)
    grey_mean, grey_sd = cv2.meanStdDev(grey, mask=mask_u8)  # each [1, 1]
    rgb_mean, rgb_sd = cv2.meanStdDev(rgb, mask=mask_u8)     # each [3, 1], channels in R, G, B order
    stats = {"grey_mean": grey_mean[0, 0], "grey_sd": grey_sd[0, 0]}
    for index, channel in enumerate("rgb"):
        stats[f"{channel}_mean"], stats[f"{channel}_sd"] = rgb_mean[index, 0], rgb_sd[index, 0]
    return {key: float(value) for key, value in stats.items()}


def _chromatin_texture(grey: np.ndarray, nuc: np.ndarray) -> Dict[str, float]:
    """Grey-level co-occurrence texture over nucleus pixels only (pairs touching the outside are dropped).

    Level 0 marks "outside the nucleus"; nucleus pixels get levels 1..GLCM_LEVELS; row and column 0
    of the co-occurrence matrix are discarded, so background and cytoplasm never enter the texture.
    """
    rows, cols = np.nonzero(nuc)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    levels = (grey[box] // (256 // GLCM_LEVELS)).astype(np.uint8) + 1
    levels[~nuc[box]] = 0
    glcm = graycomatrix(levels, [1], GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True)
    glcm = glcm[1:, 1:].sum(axis=3, keepdims=True)  # [L, L, 1, 1], pooled over angles
    if glcm.sum() == 0:  # a nucleus too thin to hold a single pair
        return dict.fromkeys(_GLCM_KEYS, 0.0)
    return {key: float(graycoprops(glcm, key)[0, 0]) for key in _GLCM_KEYS}


def _count_prominent(extrema: np.ndarray, prominence: np.ndarray, masks: Tuple[np.ndarray, ...]) -> Tuple[int, ...]:
    """Per mask, count the regional extrema (bool [H, W], plateaus) that touch it and reach
    `prominence` >= EXTREMUM_HEIGHT at some pixel."""
    _, labels = cv2.connectedComponents(extrema.astype(np.uint8), connectivity=8)
    prominent = np.unique(labels[extrema & (prominence >= EXTREMUM_HEIGHT)])
    return tuple(int(np.intersect1d(prominent, labels[extrema & mask]).size) for mask in masks)


def _extrema_counts(smoothed: np.ndarray, nuc: np.ndarray, cyto: np.ndarray) -> Dict[str, float]:
    """Grey maxima/minima counted inside nucleus and cytoplasm.

    An extremum is a regional maximum (a plateau, counted once, with only lower pixels around it)
    that stands EXTREMUM_HEIGHT above the lowest pixel within EXTREMUM_RADIUS (Herlev's 3-px
    neighbourhood); minima likewise. This approximates skimage's h_maxima, whose grey
    reconstruction sorts every pixel and cost ~10 ms per cell, more than all other features together.
    """
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EXTREMUM_RADIUS + 1,) * 2)
    signed = smoothed.astype(np.int16)
    rise = signed - cv2.erode(smoothed, disc)   # how far each pixel stands above its surroundings
    drop = cv2.dilate(smoothed, disc) - signed  # how far it sinks below them
    nuc_maxima, cyto_maxima = _count_prominent(local_maxima(smoothed), rise, (nuc, cyto))
    nuc_minima, cyto_minima = _count_prominent(local_minima(smoothed), drop, (nuc, cyto))
    return {"nucleus_maxima_count": nuc_maxima, "nucleus_minima_count": nuc_minima,
            "cytoplasm_maxima_count": cyto_maxima, "cytoplasm_minima_count": cyto_minima}


def _crop(image: np.ndarray, cell: np.ndarray, nuc: np.ndarray):
    """Cut all three arrays to the cell's bounding box plus CROP_MARGIN: the rest is never looked at."""
    rows, cols = np.nonzero(cell)
    top, left = max(rows.min() - CROP_MARGIN, 0), max(cols.min() - CROP_MARGIN, 0)
    box = (slice(top, rows.max() + CROP_MARGIN + 1), slice(left, cols.max() + CROP_MARGIN + 1))
    return np.ascontiguousarray(image[box]), cell[box], nuc[box]


def cell_measurements(image: np.ndarray, cell_mask: np.ndarray, nuc_mask: np.ndarray) -> np.ndarray:
    """Measure one cell; values in the order of FEATURE_NAMES.

    Definitions: nc_ratio = nucleus area / cytoplasm area (cytoplasm = cell minus nucleus);
    nucleus_cell_area_fraction = nucleus area / cell area (Herlev's N/C definition); grey = ITU-R 601 luma
    0-255 (darker = more stain); nucleus_cytoplasm_grey_ratio = nucleus mean grey / cytoplasm mean
    grey (0.5 = nucleus twice as dark); elongation = longest / shortest diameter (>= 1);
    roundness = 4 pi area / perimeter^2; nucleus_position = distance between the centroids of the
    largest nucleus and the largest cell component / the cell's equivalent radius sqrt(area / pi);
    colour is plain RGB. Undefined values are 0 (see nucleus_found, cytoplasm_found); an empty
    cell gives all zeros.

    Args:
        image: uint8 RGB [H, W, 3].
        cell_mask: bool [H, W], the whole cell, nucleus included.
        nuc_mask: bool [H, W], the nucleus (all its pieces).

    Returns:
        float32 [len(FEATURE_NAMES)], always finite.
    """
    if image.ndim != 3 or image.shape[2] != 3 or not image.shape[:2] == cell_mask.shape == nuc_mask.shape:
        raise ValueError(f"expected an RGB image [H, W, 3] and two [H, W] masks, got {image.shape}, "
                         f"{cell_mask.shape}, {nuc_mask.shape}")
    values = dict.fromkeys(FEATURE_NAMES, 0.0)
    cell = cell_mask.astype(bool) | nuc_mask.astype(bool)
    if not cell.any():
        return np.zeros(len(FEATURE_NAMES), np.float32)
    rgb, cell, nuc = _crop(image, cell, nuc_mask.astype(bool))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cyto = cell & ~nuc
    nuc_area, cyto_area = float(nuc.sum()), float(cyto.sum())

    cell_shape, cell_centre = _shape(_largest_component(cell)[0])
    values.update({f"cell_{key}": value for key, value in cell_shape.items()})
    values.update(nucleus_area_px=nuc_area, cytoplasm_area_px=cyto_area,
                  nucleus_cell_area_fraction=nuc_area / (nuc_area + cyto_area))
    if cyto_area > 0:
        values["cytoplasm_found"] = 1.0
        values.update({f"cytoplasm_{key}": value for key, value in _pixel_stats(rgb, grey, cyto).items()})
    if nuc_area > 0:
        values["nucleus_found"] = 1.0
        largest_nuc, values["nucleus_count"] = _largest_component(nuc)
        nuc_shape, nuc_centre = _shape(largest_nuc)
        values.update({f"nucleus_{key}": value for key, value in nuc_shape.items()})
        values.update({f"nucleus_{key}": value for key, value in _pixel_stats(rgb, grey, nuc).items()})
        values.update({f"nucleus_glcm_{key}": value for key, value in _chromatin_texture(grey, nuc).items()})
        cell_radius = np.sqrt(cell.sum() / np.pi)
        values["nucleus_position"] = float(np.linalg.norm(nuc_centre - cell_centre) / cell_radius)
    if nuc_area > 0 and cyto_area > 0:
        values["nc_ratio"] = nuc_area / cyto_area
        if values["cytoplasm_grey_mean"] > 0:
            values["nucleus_cytoplasm_grey_ratio"] = values["nucleus_grey_mean"] / values["cytoplasm_grey_mean"]

    # uint8 keeps a flat region exactly flat after blurring (float32 leaves ulp ripples = fake extrema)
    smoothed = cv2.GaussianBlur(grey, (0, 0), SMOOTH_SIGMA)
    values.update(_extrema_counts(smoothed, nuc, cyto))
    features = np.array([values[name] for name in FEATURE_NAMES], dtype=np.float32)
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)  # belt and braces: always finite


def measurements_table(cells: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Measure many cells.

    Args:
        cells: iterable of (image uint8 RGB [H, W, 3], cell_mask bool [H, W], nuc_mask bool [H, W]).

    Returns:
        float32 [N, len(FEATURE_NAMES)].
    """
    rows = [cell_measurements(image, cell_mask, nuc_mask) for image, cell_mask, nuc_mask in cells]
    return np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
