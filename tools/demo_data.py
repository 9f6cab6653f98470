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

Cells in one cluster image never overlap. Every cluster image is drawn from its own
``np.random.default_rng([seed, class_index, cluster_index])``, so output is byte-identical per seed.

CLI: ``python -m tools.demo_data --out data/demo [--clusters-per-class N] [--seed S] [--force]``
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tools.errors import UserError, exit_on_user_error

SIPAKMED_CLASSES = ("im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic", "im_Parabasal",
                    "im_Superficial-Intermediate")
PARAMS_FILE = "demo_params.json"
GENERATOR_VERSION = 1  # bump whenever output changes, so the CLI does not keep a stale dataset
CROP_MARGIN = 10
EDGE_MARGIN = 6  # px between a cell and the image border
CELL_GAP = 4  # px between neighbouring cells
PLACEMENT_TRIES = 10
DEFAULT_CELLS_PER_CLUSTER = (2, 4)
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


def place_cells(rng, morph, n_cells, cluster_size):
    """Rejection-sample non-overlapping cell positions; a cell with no room after a few tries is dropped."""
    width, height = cluster_size
    cells, placed = [], []  # placed: (centre, radius of the cell's bounding disk)
    for _ in range(n_cells):
        cyt_shape = random_polygon(rng, rng.uniform(*morph.cell_radius), rng.uniform(*morph.cell_elongation),
                                   morph.cell_irregularity, rng.uniform(*morph.cell_polygonality))
        extent = np.linalg.norm(cyt_shape, axis=1).max() + EDGE_MARGIN
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform([extent, extent], [width - extent, height - extent])
            if all(np.linalg.norm(centre - c) >= extent + e + CELL_GAP for c, e in placed):
                break
        else:
            continue
        placed.append((centre, extent))
        cyt_polygon = np.round(cyt_shape + centre, 2)
        nuc_polygon, halo_polygon = fit_nucleus(rng, morph, cyt_polygon, centre)
        colour = np.array(morph.cyt_colours[rng.integers(len(morph.cyt_colours))], np.float32)
        cells.append(Cell(cyt_polygon, nuc_polygon, halo_polygon, colour + rng.uniform(-12, 12, 3),
                          rng.uniform(*morph.cyt_alpha), np.array(morph.nuc_colour) + rng.uniform(-8, 8, 3)))
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


def render_cluster(rng, morph, cluster_size, n_cells):
    """Return (uint8 RGB image of shape (height, width, 3), list of Cell)."""
    width, height = cluster_size
    shape = (height, width)
    background = np.array([228, 225, 216]) + rng.uniform(-6, 6, 3)
    image = (background + smooth_noise(rng, shape, 48)[..., None] * rng.uniform(3, 7)
             + smooth_noise(rng, shape, 64)[..., None] * np.array([2, -1, 1])).astype(np.float32)
    cells = place_cells(rng, morph, n_cells, cluster_size)
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


def dataset_params(clusters_per_class, cells_per_cluster, cluster_size, seed):
    """Everything that determines the output, JSON-shaped so it compares equal after a round trip."""
    if not 1 <= clusters_per_class <= 999:  # cluster ids have three digits
        raise UserError(f"clusters_per_class must be 1-999, got {clusters_per_class}")
    if not 1 <= cells_per_cluster[0] <= cells_per_cluster[1] <= 99:
        raise UserError(f"cells_per_cluster must be (min, max) with 1 <= min <= max <= 99, got {cells_per_cluster}")
    if min(cluster_size) < MIN_CLUSTER_SIDE:
        raise UserError(f"cluster_size sides must be >= {MIN_CLUSTER_SIDE} px to fit the largest cells")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    return {"generator_version": GENERATOR_VERSION, "clusters_per_class": int(clusters_per_class),
            "cells_per_cluster": [int(n) for n in cells_per_cluster],
            "cluster_size": [int(n) for n in cluster_size], "seed": int(seed)}


def read_summary(out_dir):
    """The demo_params.json contents, or None where out_dir holds no finished demo dataset."""
    try:
        return json.loads((Path(out_dir) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def make_demo_dataset(out_dir, clusters_per_class=6, cells_per_cluster=DEFAULT_CELLS_PER_CLUSTER,
                      cluster_size=DEFAULT_CLUSTER_SIZE, seed=0) -> Path:
    """Write the dataset under out_dir; return out_dir as Path. Deterministic: same args -> byte-identical files.

    cells_per_cluster is an inclusive (min, max); a cluster gets fewer cells when they do not fit.
    cluster_size is (width, height). An existing out_dir is replaced only if it is empty or a demo dataset.
    """
    out_dir = Path(out_dir)
    params = dataset_params(clusters_per_class, cells_per_cluster, cluster_size, seed)
    if out_dir.is_dir() and any(out_dir.iterdir()) and read_summary(out_dir) is None:
        raise UserError(f"{out_dir} is not empty and holds no {PARAMS_FILE}; refusing to overwrite it "
                        "(choose another --out or delete it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to out_dir and swap it in at the end, so an interrupted run never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        n_cells = 0
        for class_index, class_name in enumerate(SIPAKMED_CLASSES):
            class_dir = staging / class_name / class_name
            (class_dir / "CROPPED").mkdir(parents=True)
            for cluster_index in range(clusters_per_class):
                rng = np.random.default_rng([seed, class_index, cluster_index])
                n_wanted = int(rng.integers(cells_per_cluster[0], cells_per_cluster[1] + 1))
                image, cells = render_cluster(rng, MORPHOLOGY[class_name], cluster_size, n_wanted)
                write_cluster(class_dir, cluster_index + 1, image, cells, rng)
                n_cells += len(cells)
        counts = {"classes": len(SIPAKMED_CLASSES), "cluster_images": len(SIPAKMED_CLASSES) * clusters_per_class,
                  "cells": n_cells}
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
    parser = argparse.ArgumentParser(description="Generate a small synthetic Pap-smear dataset in the SIPaKMeD layout.")
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
