"""The data path of stage 1 on fields of view (train_fields.py), top to bottom:

  prepare_fields  every field decoded once and brought to the model's scale: image, foreground (any cell),
                  nucleus instances, each cell's own mask and the nucleus that belongs to it
  FieldTiles      random tiles of the fields for the field model (foreground + nuclei, tiled at inference)
  CellWindows     one window per annotated cell, centred on its nucleus, for the instance model, whose fourth
                  input channel marks that nucleus and whose targets are that cell and that nucleus: cells that
                  overlap each get their whole outline, which one label image per field could not give

Items are requested as (index, seed) by tools/data_loader.SeededSampler, so a crop, its augmentation and
a marker's jitter are functions of (seed, epoch) alone and resume exactly.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.utils.data import Dataset
from tqdm import tqdm

from tools.data_loader import DatasetSplit, seed_augmentation
from tools.fields.geometry import crop_padded, grid_corners, window_crop, window_input
from tools.fields.layouts import (
    FieldRecord,
    detect_field_layout,
    load_field,
    read_fields,
)
from tools.layouts.points import read_cric_cells
from tools.splits import chosen_manifest, load_split
from utils.errors import UserError
from utils.preprocessing import PAD_RGB, normalize_image

UNKNOWN = 255  # foreground value of a field whose cells are not outlined (ISBI EDF): the loss skips those pixels
# Nuclei are brought to about this diameter (never by enlarging a field): ISBI 2014's median nucleus, so ISBI runs at
# its native scale. At 16 px (scale 0.7, the earlier default) both the outlines and EDF nucleus detection were worse:
# four test fields 0.871 vs 0.896 (docs/experiments-fields.md, "How the field mode got here").
NUCLEUS_TARGET_PX = 22.0


# --layout -> tools/fields/layouts.py's name
FIELD_LAYOUT_NAMES = {"isbi2014": "isbi2014", "sipakmed-fields": "sipakmed", "cric-fields": "cric"}


def is_field_layout(layout: str, data_root) -> bool:
    """Whether the data are whole fields: named by --layout, or an ISBI 2014 folder found by auto-detection.

    (A SIPaKMeD root holds both cells and fields: auto reads its cells; --layout sipakmed-fields, its fields.)
    """
    if layout in FIELD_LAYOUT_NAMES:
        return True
    return layout == "auto" and Path(data_root).is_dir() and detect_field_layout(data_root) == "isbi2014"


def open_fields(args, paths) -> DatasetSplit:
    """The fields of the data root named by the data flags, every one decoded once, split by the manifest."""
    manifest_path = chosen_manifest(args.split_file, paths.manifest(args.data_root, "fields"))  # before decoding them
    records, layout = read_fields(args.data_root, FIELD_LAYOUT_NAMES.get(args.layout, "auto"))
    # a CRIC root's fields are split as its cells are (main_classify.py --layout cric): no test field trains stage 1
    cells = read_cric_cells(args.data_root) if layout == "cric" else None
    by_split = load_split(records, manifest_path, args.data_root, layout, seed=args.split_seed, split_by=cells)
    for name in ("train", "val"):
        if not by_split[name]:
            raise UserError(f"{manifest_path}: the {name} split holds no field ({len(records)} fields in all); add fields")
    return DatasetSplit(records, layout, by_split, manifest_path)


@dataclass
class PreparedField:
    """One field at the model's scale."""

    field_id: str
    image: np.ndarray  # uint8 RGB [H, W, 3]
    foreground: np.ndarray  # uint8 [H, W]: 1 inside any cell, 0 outside, UNKNOWN where cells are not outlined
    nuclei: np.ndarray  # int32 [H, W] nucleus instances, 0 = background
    cells: List[np.ndarray]  # bool [H, W] per outlined cell, whole cell; cells may overlap
    cell_nucleus: List[Optional[int]]  # the nucleus label of each cell (None: no nucleus found in it)
    nuc_unsure: Optional[np.ndarray] = None  # bool [H, W]: the nucleus target is unknown here (grown from points)


def link_nuclei(cells: Sequence[np.ndarray], nuclei: np.ndarray) -> List[Optional[int]]:
    """The nucleus of each cell: a one-to-one matching that maximises the share of each nucleus inside its cell.

    A nucleus in the overlap of two cells lies inside both, so containment alone is ambiguous; matching all
    cells and nuclei of a field at once resolves it (each cell has one nucleus, each nucleus one cell).
    """
    labels = [label for label in np.unique(nuclei) if label > 0]
    if not cells or not labels:
        return [None] * len(cells)
    areas = np.array([np.count_nonzero(nuclei == label) for label in labels], dtype=float)
    inside = np.array([[np.count_nonzero(cell[nuclei == label]) for label in labels] for cell in cells]) / areas
    rows, cols = linear_sum_assignment(-inside)
    linked: List[Optional[int]] = [None] * len(cells)
    for row, col in zip(rows, cols):
        if inside[row, col] >= 0.5:  # a nucleus mostly outside the cell is not its nucleus
            linked[row] = int(labels[col])
    return linked


def median_nucleus_diameter(records: Sequence[FieldRecord], max_fields: int = 8) -> Optional[float]:
    """Median diameter (of the disc of equal area, field px) of the labelled nuclei in the first fields; None if none."""
    diameters = []
    for record in records[:max_fields]:
        labels = load_field(record).nuc_labels
        if labels is not None:
            _, counts = np.unique(labels[labels > 0], return_counts=True)
            diameters += list(2 * np.sqrt(counts / np.pi))
    return float(np.median(diameters)) if diameters else None


def field_scale(nucleus_diameter: Optional[float]) -> float:
    """Scale that brings a nucleus of this diameter to about NUCLEUS_TARGET_PX across (never above the native size)."""
    if nucleus_diameter is None:
        return 1.0
    return float(np.clip(round(NUCLEUS_TARGET_PX / nucleus_diameter * 20) / 20, 0.25, 1.0))


def resized(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    if scale == 1.0:
        return array
    height, width = array.shape[:2]
    return cv2.resize(array, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=interpolation)


def prepare_field(record: FieldRecord, scale: float) -> PreparedField:
    sample = load_field(record)
    image = resized(sample.image, scale, cv2.INTER_AREA)
    shape = image.shape[:2]
    nuclei = np.zeros(shape, np.int32) if sample.nuc_labels is None else resized(sample.nuc_labels, scale, cv2.INTER_NEAREST)
    cells = [resized(mask.astype(np.uint8), scale, cv2.INTER_NEAREST).astype(bool) for mask in sample.cell_masks or []]
    if sample.foreground is not None:  # grown from points: cell k holds nucleus k + 1
        foreground = resized(sample.foreground, scale, cv2.INTER_NEAREST)
        unsure = resized(sample.nuc_unsure.astype(np.uint8), scale, cv2.INTER_NEAREST).astype(bool)
        return PreparedField(record.field_id, image, foreground, nuclei, cells, list(range(1, len(cells) + 1)), unsure)
    foreground = np.full(shape, UNKNOWN, np.uint8)
    if sample.cell_masks is not None:
        foreground = np.any(cells, axis=0).astype(np.uint8) if cells else np.zeros(shape, np.uint8)
    return PreparedField(record.field_id, image, foreground, nuclei, cells, link_nuclei(cells, nuclei))


def prepare_fields(records: Sequence[FieldRecord], scale: float, desc: str = "loading fields") -> List[PreparedField]:
    return [prepare_field(record, scale) for record in tqdm(records, desc=desc, unit="field", leave=False)]


def cell_window(fields: Sequence[PreparedField], quantile: float = 0.95, margin: float = 1.15) -> int:
    """Side (px, at the model scale, a multiple of 32) of the square around a nucleus that holds its whole cell."""
    reaches = []
    for prepared in fields:
        for cell, label in zip(prepared.cells, prepared.cell_nucleus):
            if label is None:
                continue
            centre = np.argwhere(prepared.nuclei == label).mean(axis=0)
            reaches.append(np.sqrt(((np.argwhere(cell) - centre) ** 2).sum(axis=1)).max())
    reach = np.quantile(reaches, quantile) if reaches else 64.0
    return int(np.ceil(2 * reach * margin / 32) * 32)


def field_augmentation(train: bool) -> A.Compose:
    """Fields have no orientation; stains, focus and exposure vary between slides."""
    if not train:
        return A.Compose([])
    return A.Compose([
        A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.04, p=0.7),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ])


def tiles_by_area(shapes: Sequence[Tuple[int, int]], tiles_per_field: int) -> List[int]:
    """Training tiles per field: tiles_per_field * len(shapes) in all, in proportion to area, at least one each."""
    areas = np.array([height * width for height, width in shapes], dtype=float)
    return [max(1, int(round(count))) for count in tiles_per_field * len(shapes) * areas / areas.sum()]


class FieldTiles(Dataset):
    """Tiles [3, S, S] of the fields with targets [2, S, S]: foreground (-1 where unknown), nuclei.

    Training draws `tiles_per_field` random tiles per field and epoch on average, shared out in proportion to
    the fields' areas so that every pixel is seen as often (ISBI 2014's real EDF fields have 4x the area of its
    synthetic ones: with as many tiles per field they got 19 % of the tiles for half the pixels); validation
    covers every field with a fixed grid of tiles.
    """

    takes_sample_seeds = True

    def __init__(self, fields: Sequence[PreparedField], tile: int, train: bool, tiles_per_field: int = 4):
        self.fields, self.tile, self.train = list(fields), tile, train
        self.augment = field_augmentation(train)
        if train:
            counts = tiles_by_area([prepared.image.shape[:2] for prepared in self.fields], tiles_per_field)
            self.items = [(index, None) for index, count in enumerate(counts) for _ in range(count)]
        else:
            self.items = [(index, corner) for index, prepared in enumerate(self.fields)
                          for corner in grid_corners(prepared.image.shape[:2], tile)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item):
        position, seed = item if isinstance(item, tuple) else (item, 0)
        index, corner = self.items[position]
        prepared = self.fields[index]
        rng = np.random.default_rng(seed)
        if corner is None:
            height, width = prepared.image.shape[:2]
            corner = (int(rng.integers(0, max(height - self.tile, 0) + 1)), int(rng.integers(0, max(width - self.tile, 0) + 1)))
        nuclei = (prepared.nuclei > 0).astype(np.uint8)
        if prepared.nuc_unsure is not None:
            nuclei[prepared.nuc_unsure] = UNKNOWN
        crops = [crop_padded(array, *corner, self.tile, fill) for array, fill in
                 ((prepared.image, PAD_RGB), (prepared.foreground, 0), (nuclei, 0))]
        seed_augmentation(self.augment, int(rng.integers(2**31)))
        out = self.augment(image=crops[0], masks=crops[1:])
        foreground, nuclei = (mask.astype(np.float32) for mask in out["masks"])
        foreground[foreground == UNKNOWN] = -1.0
        nuclei[nuclei == UNKNOWN] = -1.0
        return torch.from_numpy(normalize_image(out["image"])), torch.from_numpy(np.stack([foreground, nuclei]))


class CellWindows(Dataset):
    """One item per cell with a nucleus: input [4, S, S] (window_input), targets [2, S, S]: that cell, that nucleus.

    Training jitters the window's centre and the marker's outline (predicted nuclei are never exact) and
    augments like the tiles.
    """

    takes_sample_seeds = True

    def __init__(self, fields: Sequence[PreparedField], window: int, size: int, train: bool, max_cells: int = 0):
        self.fields, self.window, self.size, self.train = list(fields), window, size, train
        self.augment = field_augmentation(train)
        self.items = [(index, cell) for index, prepared in enumerate(self.fields)
                      for cell, label in enumerate(prepared.cell_nucleus) if label is not None]
        if 0 < max_cells < len(self.items):  # one fixed draw, the same in every epoch and run
            chosen = np.random.default_rng(0).choice(len(self.items), max_cells, replace=False)
            self.items = [self.items[i] for i in sorted(chosen)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item):
        position, seed = item if isinstance(item, tuple) else (item, 0)
        index, cell = self.items[position]
        prepared = self.fields[index]
        nucleus = prepared.nuclei == prepared.cell_nucleus[cell]
        centre = np.argwhere(nucleus).mean(axis=0)
        rng = np.random.default_rng(seed)
        marker = nucleus.astype(np.uint8)
        if self.train:
            centre = centre + rng.uniform(-0.05, 0.05, 2) * self.window
            marker = [cv2.erode, cv2.dilate, lambda m, k: m][int(rng.integers(3))](marker, np.ones((3, 3), np.uint8))
        rgb, marker = window_crop(prepared.image, marker, centre, self.window, self.size)
        top, left = int(round(centre[0])) - self.window // 2, int(round(centre[1])) - self.window // 2
        targets = [cv2.resize(crop_padded(mask.astype(np.uint8), top, left, self.window, 0), (self.size, self.size),
                              interpolation=cv2.INTER_NEAREST) for mask in (prepared.cells[cell], nucleus)]
        seed_augmentation(self.augment, int(rng.integers(2**31)))
        out = self.augment(image=rgb, masks=[marker, *targets])
        marker, *targets = out["masks"]
        return torch.from_numpy(window_input(out["image"], marker)), torch.from_numpy(np.stack(targets).astype(np.float32))
