"""Procedurally generated stand-in for the SIPaKMeD Pap-smear dataset, so demos and tests need no download.

Layout (the same as SIPaKMeD as distributed; ``NNN`` = cluster id from 001, ``CC`` = cell number from 01)::

    <out>/im_<Class>/im_<Class>/NNN.bmp                  cluster image (3-channel BMP)
    <out>/im_<Class>/im_<Class>/NNN_cytCC.dat            whole-cell (cytoplasm) boundary, cluster coordinates
    <out>/im_<Class>/im_<Class>/NNN_nucCC.dat            nucleus boundary, cluster coordinates
    <out>/im_<Class>/im_<Class>/CROPPED/NNN_CC.bmp       the cell's bounding box + ~10 px margin, clipped
    <out>/im_<Class>/im_<Class>/CROPPED/NNN_CC_cyt.dat   the same polygons relative to the crop's top-left
    <out>/im_<Class>/im_<Class>/CROPPED/NNN_CC_nuc.dat
    <out>/demo_params.json                               generation parameters; written last

A ``.dat`` file holds one ``x,y`` point per line (x = column, y = row). Most are plain ``123.45,67.89``;
a seeded minority use scientific notation, a space after the comma and/or a trailing blank line, so
readers are exercised on the variations found in the wild.

Class morphology (radii in cluster pixels; ranges overlap on purpose so the task is not trivial):

- Superficial-Intermediate: large flat polygonal cell (45-60), translucent pink/orange or light cyan
  cytoplasm, tiny dark pyknotic nucleus (4-6): lowest N/C ratio.
- Parabasal: small round cell (18-26), dense blue-green cytoplasm, large round nucleus (8-11): high N/C.
- Metaplastic: medium cell (28-38) with an irregular, angular outline, darker cytoplasm, nucleus 7-10.
- Koilocytotic: medium-large cell (35-48), dark slightly irregular nucleus (7-10) inside a bright
  perinuclear cavity (halo) with a dense rim: the defining feature.
- Dyskeratotic: small-medium, often elongated cell (20-30), dense orange cytoplasm, small dark
  irregular nucleus (5-8).

Sparse and crowded clusters: most cluster images are sparse, 2-4 cells that never overlap (their
bounding disks keep a gap). Every ``crowded_every``-th cluster image (default 3) is crowded instead, for the
field-of-view mode that must separate touching and overlapping cells: cluster ids 002, 002 + n, 002 + 2n, ...
for n = crowded_every (every cluster for n = 1, none for n = 0), so with 2 or more clusters per class every
class has one. A crowded image holds one clump of 4-7 cells grown from a cell near the image centre: each
new cell joins a random cell of the clump at a centre distance of 0.6-1.0 times the sum of their mean radii
(and no closer than 0.6 to any other cell), so its outline overlaps or touches (within TOUCH_PX) that cell's.
Nuclei stay visible: a position is rejected when a nucleus (or koilocyte halo) would come within
NUCLEUS_CLEARANCE px of another cell's outline, so every nucleus lies in its own cell only and no two nuclei
touch; a cell with no such position after CLUMP_PLACEMENT_TRIES is dropped. Cells are painted one over the
other with translucent cytoplasm, so overlaps look darker. Every cell keeps its whole polygon in its
``_cytCC.dat`` (polygons of overlapping cells overlap) and its CROPPED crop may show parts of a neighbour.

Every cluster image is drawn from its own ``np.random.default_rng([seed, class_index, cluster_index])``, so
output is byte-identical per seed.

CLI: ``python -m tools.demo_data --out data/demo [--clusters-per-class N] [--seed S] [--force]``
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from tools.config import HelpFormatter
from utils.errors import UserError, exit_on_user_error

SIPAKMED_CLASSES = ("im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic", "im_Parabasal",
                    "im_Superficial-Intermediate")
PARAMS_FILE = "demo_params.json"
GENERATOR_VERSION = 2  # bump whenever output changes, so the CLI does not keep a stale dataset
CROP_MARGIN = 10
EDGE_MARGIN = 6  # px between a cell and the image border
CELL_GAP = 4  # px between neighbouring cells' bounding disks (each widened by EDGE_MARGIN) in a sparse cluster
PLACEMENT_TRIES = 10
DEFAULT_CELLS_PER_CLUSTER = (2, 4)
CROWDED_EVERY = 3  # every third cluster image (002, 005, ...) is a crowded clump
CROWDED_CELLS_PER_CLUSTER = (4, 7)  # a clump needs more cells than a sparse cluster to be worth separating
CLUMP_DISTANCE = (0.6, 1.0)  # centre distance of neighbours in a clump / sum of their mean radii
TOUCH_PX = 2.0  # a clump cell comes at least this close to (or overlaps) the cell it joins
NUCLEUS_CLEARANCE = 2.0  # px between a nucleus (or halo) and any other cell's outline, so none is hidden
CLUMP_PLACEMENT_TRIES = 40  # clump positions are rejected more often than sparse ones
DEFAULT_CLUSTER_SIZE = (384, 288)  # width, height
MIN_CLUSTER_SIDE = 220  # the largest superficial cell needs about this much room
HALO_RGB = np.array([246, 246, 240], np.float32)


@dataclass(frozen=True)
class Morphology:
    cell_radius: tuple[float, float]
    cell_elongation: tuple[float, float]
    cell_irregularity: float  # amplitude of smooth lumps on the outline
    cell_polygonality: tuple[float, float]  # 0 = smooth ellipse, 1 = straight sides and corners
    nuc_radius: tuple[float, float]
    nuc_elongation: tuple[float, float]
    nuc_irregularity: float
    cyt_colours: tuple[tuple[int, int, int], ...]  # RGB, one picked per cell
    cyt_alpha: tuple[float, float]  # thin mature cells are translucent, immature ones dense
    nuc_colour: tuple[int, int, int]
    halo_scale: tuple[float, float] | None = None  # koilocyte cavity radius / nucleus radius


MORPHOLOGY = {
    "im_Superficial-Intermediate": Morphology(
        (45, 60), (1.0, 1.4), 0.04, (0.5, 0.9), (4, 6), (1.0, 1.2), 0.03,
        ((236, 160, 150), (238, 188, 140), (160, 212, 212)), (0.45, 0.6), (45, 35, 70)),
    "im_Parabasal": Morphology(
        (18, 26), (1.0, 1.15), 0.03, (0.0, 0.1), (8, 11), (1.0, 1.15), 0.03,
        ((70, 145, 150), (80, 150, 165)), (0.8, 0.9), (85, 70, 135)),
    "im_Metaplastic": Morphology(
        (28, 38), (1.0, 1.3), 0.10, (0.3, 0.6), (7, 10), (1.0, 1.25), 0.05,
        ((95, 130, 150), (110, 140, 135)), (0.75, 0.88), (70, 55, 115)),
    "im_Koilocytotic": Morphology(
        (35, 48), (1.0, 1.3), 0.06, (0.2, 0.5), (7, 10), (1.0, 1.35), 0.12,
        ((150, 180, 190), (205, 165, 175)), (0.6, 0.75), (40, 30, 70), halo_scale=(1.8, 2.3)),
    "im_Dyskeratotic": Morphology(
        (20, 30), (1.15, 1.7), 0.06, (0.1, 0.3), (5, 8), (1.2, 1.8), 0.12,
        ((225, 120, 70), (215, 100, 65)), (0.82, 0.92), (35, 25, 45)),
}


@dataclass
class Cell:
    cyt_polygon: np.ndarray  # (N, 2) x, y in cluster coordinates
    nuc_polygon: np.ndarray
    halo_polygon: np.ndarray | None
    cyt_colour: np.ndarray
    cyt_alpha: float
    nuc_colour: np.ndarray
    centre: np.ndarray = field(default_factory=lambda: np.zeros(2))  # x, y the polygons were drawn around

    @property
    def radius(self) -> float:
        """Mean distance of the outline from the centre."""
        return float(np.linalg.norm(self.cyt_polygon - self.centre, axis=1).mean())

    @property
    def extent(self) -> float:
        """Radius of the bounding disk around the centre."""
        return float(np.linalg.norm(self.cyt_polygon - self.centre, axis=1).max())


def random_polygon(rng, mean_radius, elongation=1.0, irregularity=0.05, polygonality=0.0):
    """Star-shaped polygon around (0, 0), 24-64 points. r(theta) is sampled at strictly increasing
    theta within one turn, which is what guarantees the polygon is simple."""
    n_points = int(rng.integers(24, 65))
    step = 2 * np.pi / n_points
    theta = rng.uniform(0, 2 * np.pi) + step * (np.arange(n_points) + rng.uniform(-0.35, 0.35, n_points))
    tilted = theta - rng.uniform(0, np.pi)
    stretch = np.sqrt(elongation)  # major/minor = elongation at roughly constant area
    radius = 1 / np.sqrt((np.cos(tilted) / stretch) ** 2 + (np.sin(tilted) * stretch) ** 2)
    n_sides = int(rng.integers(5, 8))
    sector = 2 * np.pi / n_sides
    corners = np.cos(np.pi / n_sides) / np.cos(np.mod(tilted, sector) - np.pi / n_sides)
    radius *= 1 - polygonality + polygonality * corners / corners.mean()
    for k in range(2, 6):  # few low harmonics: lumpy like a real membrane, not jagged
        radius *= 1 + rng.normal(0, irregularity) * 2 / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = mean_radius * np.clip(radius, 0.5, None)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


def fit_nucleus(rng, morph, cyt_polygon, centre):
    """Nucleus (and koilocyte halo) polygons placed off-centre but provably inside the cell."""
    nuc_shape = random_polygon(rng, rng.uniform(*morph.nuc_radius), rng.uniform(*morph.nuc_elongation),
                               morph.nuc_irregularity)
    halo_shape = None
    if morph.halo_scale is not None:
        halo_shape = random_polygon(rng, rng.uniform(*morph.halo_scale) * np.linalg.norm(nuc_shape, axis=1).max(), 1.1, 0.05)
    extent = max(np.linalg.norm(s, axis=1).max() for s in (nuc_shape, halo_shape) if s is not None)
    # Disk of radius `inner` around the centre lies in the cell; keep the nucleus' bounding disk inside it.
    inner = cv2.pointPolygonTest(cyt_polygon.astype(np.float32), tuple(map(float, centre)), True) - 2
    scale = min(1.0, inner / extent)
    offset = rng.uniform(0, 0.6) * max(inner - extent * scale, 0)
    angle = rng.uniform(0, 2 * np.pi)
    nuc_centre = centre + offset * np.array([np.cos(angle), np.sin(angle)])
    halo = None if halo_shape is None else np.round(halo_shape * scale + nuc_centre, 2)
    return np.round(nuc_shape * scale + nuc_centre, 2), halo


def sample_cell(rng, morph):
    """A cell of this morphology around (0, 0), nucleus (and halo) inside it; moved() puts it in place."""
    cyt_shape = random_polygon(rng, rng.uniform(*morph.cell_radius), rng.uniform(*morph.cell_elongation),
                               morph.cell_irregularity, rng.uniform(*morph.cell_polygonality))
    nuc_shape, halo_shape = fit_nucleus(rng, morph, cyt_shape, np.zeros(2))
    colour = np.array(morph.cyt_colours[rng.integers(len(morph.cyt_colours))], np.float32)
    return Cell(cyt_shape, nuc_shape, halo_shape, colour + rng.uniform(-12, 12, 3), rng.uniform(*morph.cyt_alpha),
                np.array(morph.nuc_colour) + rng.uniform(-8, 8, 3))


def moved(cell, centre):
    """The cell drawn around (0, 0) shifted to `centre`, polygons rounded to the 2 decimals the .dat files keep."""
    def shift(polygon):
        return None if polygon is None else np.round(polygon + centre, 2)
    return replace(cell, cyt_polygon=shift(cell.cyt_polygon), nuc_polygon=shift(cell.nuc_polygon),
                   halo_polygon=shift(cell.halo_polygon), centre=np.asarray(centre, np.float64))


def centre_bounds(cell, cluster_size):
    """(low, high) x, y of the centres that keep the cell EDGE_MARGIN inside the image."""
    width, height = cluster_size
    extent = cell.extent + EDGE_MARGIN
    return np.array([extent, extent]), np.array([width - extent, height - extent])


def sparse_position(rng, cell, placed, cluster_size):
    """The cell anywhere in the image, clear of the others' bounding disks; None if no room was found."""
    low, high = centre_bounds(cell, cluster_size)
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(low, high)
        if all(np.linalg.norm(centre - other.centre) >= cell.extent + other.extent + 2 * EDGE_MARGIN + CELL_GAP
               for other in placed):
            return moved(cell, centre)
    return None


def signed_distances(polygon, points):
    """Distance of each point from the polygon's outline: positive inside, negative outside."""
    contour = polygon.astype(np.float32)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points])


def touches(cell, other):
    """Whether the outlines overlap or come within TOUCH_PX of each other (vertex distances)."""
    return max(signed_distances(other.cyt_polygon, cell.cyt_polygon).max(),
               signed_distances(cell.cyt_polygon, other.cyt_polygon).max()) >= -TOUCH_PX


def nucleus_uncovered(cell, other):
    """Whether cell's nucleus and halo keep NUCLEUS_CLEARANCE px outside other's outline."""
    if np.linalg.norm(cell.centre - other.centre) > cell.extent + other.extent + NUCLEUS_CLEARANCE:
        return True  # bounding disks apart: nothing to test
    for core in (cell.nuc_polygon, cell.halo_polygon):
        # Both directions: a sharp corner of the other cell could poke between two nucleus vertices.
        if core is not None and (signed_distances(other.cyt_polygon, core).max() > -NUCLEUS_CLEARANCE
                                 or signed_distances(core, other.cyt_polygon).max() >= 0):
            return False
    return True


def clump_position(rng, cell, placed, cluster_size):
    """The cell overlapping or touching a random cell of the clump, every nucleus left uncovered; None if no room."""
    low, high = centre_bounds(cell, cluster_size)
    if not placed:  # the clump starts in the middle half of the image, so it has room to grow on every side
        return moved(cell, rng.uniform(low + (high - low) / 4, high - (high - low) / 4))
    for _ in range(CLUMP_PLACEMENT_TRIES):
        anchor = placed[rng.integers(len(placed))]
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(*CLUMP_DISTANCE) * (anchor.radius + cell.radius)
        centre = anchor.centre + distance * np.array([np.cos(angle), np.sin(angle)])
        if (centre < low).any() or (centre > high).any() or any(
                np.linalg.norm(centre - other.centre) < CLUMP_DISTANCE[0] * (other.radius + cell.radius)
                for other in placed):
            continue
        candidate = moved(cell, centre)
        if touches(candidate, anchor) and all(
                nucleus_uncovered(candidate, other) and nucleus_uncovered(other, candidate) for other in placed):
            return candidate
    return None


def place_cells(rng, morph, n_cells, cluster_size, crowded=False):
    """Up to n_cells cells, each at a rejection-sampled position (see the module docstring); a cell with no room
    is dropped. Sparse cells never overlap; crowded ones grow one clump of touching and overlapping cells."""
    find_position = clump_position if crowded else sparse_position
    cells = []
    for _ in range(n_cells):
        cell = find_position(rng, sample_cell(rng, morph), cells, cluster_size)
        if cell is not None:
            cells.append(cell)
    return cells


def smooth_noise(rng, shape, feature_px):
    """Zero-mean, unit-std noise with blobs about feature_px wide (cheap stand-in for Perlin noise)."""
    height, width = shape
    grid = rng.standard_normal((height // feature_px + 2, width // feature_px + 2)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def polygon_mask(polygon, shape, origin):
    """Anti-aliased float mask in [0, 1]; 4 fractional bits keep sub-pixel vertex positions."""
    mask = np.zeros(shape, np.uint8)
    points = np.round((polygon - origin) * 16).astype(np.int32)
    cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255


def blend(dst, colour, alpha):
    dst[:] = dst * (1 - alpha[..., None]) + colour * alpha[..., None]


def draw_cell(image, cell, rng):
    """Paint cytoplasm, optional koilocyte halo, then nucleus, in place on a float RGB image."""
    height, width = image.shape[:2]
    (x0, y0), (x1, y1) = np.floor(cell.cyt_polygon.min(0)) - 2, np.ceil(cell.cyt_polygon.max(0)) + 3
    x0, y0, x1, y1 = int(max(x0, 0)), int(max(y0, 0)), int(min(x1, width)), int(min(y1, height))
    roi, origin = image[y0:y1, x0:x1], np.array([x0, y0])
    shape = roi.shape[:2]
    cell_mask = polygon_mask(cell.cyt_polygon, shape, origin)
    depth = cv2.distanceTransform((cell_mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    shade = (1 - 0.25 * np.exp(-depth / 2.5)) * (1 + 0.07 * smooth_noise(rng, shape, 6))  # rim stains darker
    blend(roi, cell.cyt_colour * shade[..., None], cell.cyt_alpha * cell_mask)
    if cell.halo_polygon is not None:
        halo_mask = polygon_mask(cell.halo_polygon, shape, origin) * cell_mask
        outside = cv2.distanceTransform((halo_mask < 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        # Cytoplasm pushed aside by the cavity condenses into a dense ring around it.
        rim = np.exp(-outside / 2.0) * cell_mask * (1 - halo_mask)
        roi *= (1 - 0.3 * rim)[..., None]
        blend(roi, HALO_RGB, 0.85 * halo_mask)
    nuc_mask = polygon_mask(cell.nuc_polygon, shape, origin)
    grain = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
    chromatin = 1 + 0.18 * grain / (grain.std() + 1e-6)
    blend(roi, cell.nuc_colour * chromatin[..., None], 0.92 * nuc_mask)


def render_cluster(rng, morph, cluster_size, n_cells, crowded=False):
    """Return (uint8 RGB image of shape (height, width, 3), list of Cell); later cells are painted over earlier ones."""
    width, height = cluster_size
    shape = (height, width)
    background = np.array([228, 225, 216]) + rng.uniform(-6, 6, 3)
    image = (background + smooth_noise(rng, shape, 48)[..., None] * rng.uniform(3, 7)
             + smooth_noise(rng, shape, 64)[..., None] * np.array([2, -1, 1])).astype(np.float32)
    cells = place_cells(rng, morph, n_cells, cluster_size, crowded)
    for cell in cells:
        draw_cell(image, cell, rng)
    image = image * rng.uniform(0.95, 1.05, 3) + rng.uniform(-8, 8)  # per-slide stain and exposure
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.8)  # slight defocus
    image += rng.normal(0, 2, image.shape)  # sensor noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8), cells


def crop_cell(image, cyt_polygon):
    """Crop the cell's bounding box plus CROP_MARGIN, clipped to the image; return (crop, (x0, y0))."""
    height, width = image.shape[:2]
    x0, y0 = np.maximum(np.floor(cyt_polygon.min(0)).astype(int) - CROP_MARGIN, 0)
    x1, y1 = np.minimum(np.ceil(cyt_polygon.max(0)).astype(int) + CROP_MARGIN + 1, [width, height])
    return image[y0:y1, x0:x1], (int(x0), int(y0))


def dat_style(rng):
    """(scientific, spaced, trailing_blank): about 3 in 4 files are plain, the rest mix the quirks."""
    if rng.random() >= 0.25:
        return False, False, False
    quirks = rng.random(3) < 0.5
    quirks[rng.integers(3)] = True  # a quirky file has at least one quirk
    return tuple(bool(q) for q in quirks)


def write_dat(path, polygon, style):
    scientific, spaced, trailing_blank = style
    number = "{:.6e}" if scientific else "{:.2f}"
    separator = ", " if spaced else ","
    lines = [number.format(x) + separator + number.format(y) for x, y in polygon]
    Path(path).write_text("\n".join(lines) + "\n" + ("\n" if trailing_blank else ""))


def write_bmp(path, rgb_image):
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb_image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_cluster(class_dir, cluster_id, image, cells, rng):
    write_bmp(class_dir / f"{cluster_id:03d}.bmp", image)
    for cell_no, cell in enumerate(cells, start=1):
        write_dat(class_dir / f"{cluster_id:03d}_cyt{cell_no:02d}.dat", cell.cyt_polygon, dat_style(rng))
        write_dat(class_dir / f"{cluster_id:03d}_nuc{cell_no:02d}.dat", cell.nuc_polygon, dat_style(rng))
        crop, crop_origin = crop_cell(image, cell.cyt_polygon)
        stem = class_dir / "CROPPED" / f"{cluster_id:03d}_{cell_no:02d}"
        write_bmp(stem.with_suffix(".bmp"), crop)
        write_dat(f"{stem}_cyt.dat", cell.cyt_polygon - crop_origin, dat_style(rng))
        write_dat(f"{stem}_nuc.dat", cell.nuc_polygon - crop_origin, dat_style(rng))


def is_crowded(cluster_index, crowded_every=CROWDED_EVERY):
    """Whether the cluster with 0-based index cluster_index is crowded: ids 002, 002 + n, ... for n = crowded_every."""
    return crowded_every > 0 and cluster_index % crowded_every == min(1, crowded_every - 1)


def dataset_params(clusters_per_class, cells_per_cluster, cluster_size, seed, crowded_every=CROWDED_EVERY):
    """Everything that determines the output, JSON-shaped so it compares equal after a round trip."""
    if not 1 <= clusters_per_class <= 999:  # cluster ids have three digits
        raise UserError(f"clusters_per_class must be 1-999, got {clusters_per_class}")
    if not 1 <= cells_per_cluster[0] <= cells_per_cluster[1] <= 99:
        raise UserError(f"cells_per_cluster must be (min, max) with 1 <= min <= max <= 99, got {cells_per_cluster}")
    if min(cluster_size) < MIN_CLUSTER_SIDE:
        raise UserError(f"cluster_size sides must be >= {MIN_CLUSTER_SIDE} px to fit the largest cells")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    if crowded_every < 0:
        raise UserError(f"crowded_every must be >= 0 (0: no crowded clusters), got {crowded_every}")
    return {"generator_version": GENERATOR_VERSION, "clusters_per_class": int(clusters_per_class),
            "cells_per_cluster": [int(n) for n in cells_per_cluster],
            "cluster_size": [int(n) for n in cluster_size], "seed": int(seed), "crowded_every": int(crowded_every)}


def read_summary(out_dir):
    """The demo_params.json contents, or None where out_dir holds no finished demo dataset."""
    try:
        return json.loads((Path(out_dir) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def make_demo_dataset(out_dir, clusters_per_class=6, cells_per_cluster=DEFAULT_CELLS_PER_CLUSTER,
                      cluster_size=DEFAULT_CLUSTER_SIZE, seed=0, crowded_every=CROWDED_EVERY) -> Path:
    """Write the dataset under out_dir; return out_dir as Path. Deterministic: same args -> byte-identical files.

    cells_per_cluster is an inclusive (min, max) for sparse clusters; crowded ones (see is_crowded; 0 = none)
    draw CROWDED_CELLS_PER_CLUSTER. A cluster gets fewer cells when they do not fit.
    cluster_size is (width, height). An existing out_dir is replaced only if it is empty or a demo dataset.
    """
    out_dir = Path(out_dir)
    params = dataset_params(clusters_per_class, cells_per_cluster, cluster_size, seed, crowded_every)
    if out_dir.is_dir() and any(out_dir.iterdir()) and read_summary(out_dir) is None:
        raise UserError(f"{out_dir} is not empty and holds no {PARAMS_FILE}; refusing to overwrite it "
                        "(choose another --out or delete it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to out_dir and swap it in at the end, so an interrupted run never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        n_cells = n_crowded = 0
        for class_index, class_name in enumerate(SIPAKMED_CLASSES):
            class_dir = staging / class_name / class_name
            (class_dir / "CROPPED").mkdir(parents=True)
            for cluster_index in range(clusters_per_class):
                rng = np.random.default_rng([seed, class_index, cluster_index])
                crowded = is_crowded(cluster_index, crowded_every)
                n_min, n_max = CROWDED_CELLS_PER_CLUSTER if crowded else cells_per_cluster
                image, cells = render_cluster(rng, MORPHOLOGY[class_name], cluster_size,
                                              int(rng.integers(n_min, n_max + 1)), crowded)
                write_cluster(class_dir, cluster_index + 1, image, cells, rng)
                n_cells += len(cells)
                n_crowded += crowded
        counts = {"classes": len(SIPAKMED_CLASSES), "cluster_images": len(SIPAKMED_CLASSES) * clusters_per_class,
                  "crowded_cluster_images": n_crowded, "cells": n_cells}
        (staging / PARAMS_FILE).write_text(json.dumps({"params": params, "counts": counts}, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(
        description="example: python -m tools.demo_data --out data/demo --clusters-per-class 6\n"
                    "Generate a small synthetic Pap-smear dataset in the SIPaKMeD layout.",
        formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"),
                        help="output folder; replaced if it already holds a demo dataset (default: data/demo)")
    parser.add_argument("--clusters-per-class", type=int, default=6, help="cluster images per class (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if --out already holds a dataset made with these parameters")
    args = parser.parse_args(argv)
    params = dataset_params(args.clusters_per_class, DEFAULT_CELLS_PER_CLUSTER, DEFAULT_CLUSTER_SIZE, args.seed)
    summary = read_summary(args.out)
    if not args.force and summary is not None and summary.get("params") == params:
        print(f"{args.out} already holds a demo dataset with these parameters; skipping (--force regenerates)")
        return 0
    make_demo_dataset(args.out, args.clusters_per_class, seed=args.seed)
    counts = read_summary(args.out)["counts"]
    print(f"wrote {counts['classes']} classes, {counts['cluster_images']} cluster images, "
          f"{counts['cells']} cells to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
