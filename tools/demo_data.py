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

Every cluster image is drawn from its own ``np.random.default_rng([seed, class_index, cluster_index])``, so
output is byte-identical per seed.

How a cell is drawn: tools/demo_cells.py; how cells are placed in sparse and crowded clusters:
tools/demo_clusters.py.

CLI: ``python -m tools.demo_data --out data/demo [--clusters-per-class N] [--seed S] [--force]``
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from tools.config import HelpFormatter
from tools.demo_cells import MORPHOLOGY
from tools.demo_clusters import render_cluster
from utils.errors import UserError, exit_on_user_error

SIPAKMED_CLASSES = ("im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic", "im_Parabasal",
                    "im_Superficial-Intermediate")
PARAMS_FILE = "demo_params.json"
GENERATOR_VERSION = 2  # bump whenever output changes, so the CLI does not keep a stale dataset
CROP_MARGIN = 10
DEFAULT_CELLS_PER_CLUSTER = (2, 4)
CROWDED_EVERY = 3  # every third cluster image (002, 005, ...) is a crowded clump
CROWDED_CELLS_PER_CLUSTER = (4, 7)  # a clump needs more cells than a sparse cluster to be worth separating
DEFAULT_CLUSTER_SIZE = (384, 288)  # width, height
MIN_CLUSTER_SIDE = 220  # the largest superficial cell needs about this much room


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
