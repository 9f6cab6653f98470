"""Where a cell's masks come from: its annotation (ground truth) or the masks stage 1 exported.

A mask provider is a function (record, image shape) -> (cell mask, nucleus mask), bool [H, W], the cell
mask being the WHOLE cell (nucleus included). A provider whose masks may be cached (tools/cell_cache.py)
says where they come from in a `cache_key` string and, when it reads files other than the record's own,
lists them with `mask_files(record)`; a provider without cache_key (masks held in memory) is never cached.

Exported masks are checked against their source: masks.json beside them keeps the content hash of
each image they were predicted from, so an image changed since is refused, not trained on with its
old masks.
"""
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from tools.inference import batched
from tools.inputs import mark_output_dir
from tools.layouts.files import check_polygons_inside
from tools.layouts.record import CellRecord
from utils.errors import UserError
from utils.files import file_sha1, write_image, written_atomically
from utils.preprocessing import rasterize_polygons, read_mask

MaskProvider = Callable[[CellRecord, Tuple[int, int]], Tuple[np.ndarray, np.ndarray]]
MAX_CELL_COVER = 0.98  # share of the image a cell mask may cover; Herlev's largest cover 0.84
MIN_NUCLEUS_CONTACT = 0.1  # share of a nucleus's outline that must touch its cell (Herlev's lowest: 0.23)


def nucleus_contact(cyt_mask: np.ndarray, nuc_mask: np.ndarray) -> float:
    """Share of the 2-px ring around the nucleus that lies in the cytoplasm mask (1: inside its cell, 0: apart)."""
    nucleus = nuc_mask.astype(np.uint8)
    ring = cv2.dilate(nucleus, np.ones((5, 5), np.uint8)).astype(bool) & ~nuc_mask
    return float((ring & cyt_mask).sum() / max(ring.sum(), 1))


def check_plausible(cyt_mask: np.ndarray, nuc_mask: np.ndarray, cell_mask: np.ndarray, source: Path,
                    nuc_source: Optional[Path] = None) -> None:
    """Refuse masks that cannot be right: no cell, a cell that is the whole image, a nucleus outside its cell.

    source is the cell's (cytoplasm) file, nuc_source the nucleus's: a nucleus apart from its cell names both.

    An empty NUCLEUS mask is real data (a crop without a nuc file, an anucleate or out-of-focus nucleus). An
    empty CELL mask is not: a single-cell image always shows its cell, so the annotation was lost (a blank
    export, the wrong file), and training on it would teach "no cell here".
    """
    if not cell_mask.any():
        raise UserError(f"{source}: the cell mask is empty (no foreground pixel, nucleus included); outline the cell "
                        f"or remove it")
    if cell_mask.mean() > MAX_CELL_COVER:
        raise UserError(f"{source}: the cell mask covers {cell_mask.mean():.0%} of its image, a crop always shows background "
                        f"around its cell; the mask may be inverted or blank white: fix it or remove the cell")
    if nuc_mask.any() and nucleus_contact(cyt_mask, nuc_mask) < MIN_NUCLEUS_CONTACT:
        outline = f"the nucleus of {Path(nuc_source).name}" if nuc_source is not None else "its outline"
        raise UserError(f"{source}: the nucleus lies outside its cell ({outline} touches no cytoplasm); "
                        f"the two masks may belong to different cells: fix them or remove the cell")


def ground_truth_masks(record: CellRecord, shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(cell mask, nucleus mask) as bool [H, W] for a record with masks or polygons."""
    if record.cyt_mask_path is not None:
        nuc_mask = read_mask(record.nuc_mask_path, shape)
        cyt_mask, source, nuc_source = read_mask(record.cyt_mask_path, shape), record.cyt_mask_path, record.nuc_mask_path
    elif record.cyt_polygons:
        check_polygons_inside(record.cyt_polygons + record.nuc_polygons, record.polygon_files, shape)
        nuc_mask = rasterize_polygons(record.nuc_polygons, shape)
        cyt_mask, source = rasterize_polygons(record.cyt_polygons, shape), record.polygon_files[0]
        nuc_source = record.polygon_files[1] if len(record.polygon_files) > 1 else None  # (cyt file, nucleus files...)
    else:
        raise UserError(f"{record.image_path}: this cell has no ground-truth masks; use --mask-source predicted")
    cell_mask = cyt_mask | nuc_mask  # Herlev's cytoplasm masks leave the nucleus out
    check_plausible(cyt_mask, nuc_mask, cell_mask, source, nuc_source)
    return cell_mask, nuc_mask


ground_truth_masks.cache_key = "gt"  # its files are the record's own


def ground_truth_masks_if_any(record: CellRecord, shape: Tuple[int, int]):
    return ground_truth_masks(record, shape) if record.has_masks else (None, None)


# ---------------------------------------------------------------- exported masks

MASKS_MANIFEST = "masks.json"


def mask_paths(masks_dir: Path, record: CellRecord) -> Tuple[Path, Path]:
    return masks_dir / f"{record.sample_id}_cyt.png", masks_dir / f"{record.sample_id}_nuc.png"


def read_masks_manifest(masks_dir: Path) -> Dict[str, str]:
    """sample id -> sha1 of the image its masks were predicted from ({} when absent or unreadable)."""
    try:
        return json.loads((Path(masks_dir) / MASKS_MANIFEST).read_text())["image_sha1"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_mask_pairs(masks_dir: Path, predictions: Sequence[Tuple[CellRecord, np.ndarray, np.ndarray]]) -> None:
    """Write <id>_cyt.png and <id>_nuc.png (0/255, the image's own size) per cell and note each image's hash."""
    masks_dir = Path(masks_dir)
    hashes = read_masks_manifest(masks_dir)
    for record, cell_mask, nuc_mask in predictions:
        cyt_path, nuc_path = mask_paths(masks_dir, record)
        cyt_path.parent.mkdir(parents=True, exist_ok=True)
        for path, mask in ((cyt_path, cell_mask), (nuc_path, nuc_mask)):
            write_image(path, mask.astype(np.uint8) * 255)
        hashes[record.sample_id] = file_sha1(record.image_path)
    masks_dir.mkdir(parents=True, exist_ok=True)
    with written_atomically(masks_dir / MASKS_MANIFEST) as tmp_path:
        tmp_path.write_text(json.dumps({"image_sha1": hashes}, indent=0))


class PredictedMaskFiles:
    """Mask provider reading the masks that main_segment.py exported, refusing any made from an older image."""

    def __init__(self, masks_dir: Path):
        self.masks_dir = Path(masks_dir)
        self.image_sha1 = read_masks_manifest(self.masks_dir)

    @property
    def cache_key(self) -> str:
        """Where the masks come from, for the cell cache; the files' own stamps come from mask_files."""
        return f"predicted:{self.masks_dir.resolve()}"

    def mask_files(self, record: CellRecord) -> Tuple[Path, Path]:
        return mask_paths(self.masks_dir, record)

    def missing(self, records: Sequence[CellRecord]) -> List[CellRecord]:
        """Cells without both mask files, or (masks from before masks.json) without a recorded source."""
        return [r for r in records if r.sample_id not in self.image_sha1
                or not all(p.exists() for p in mask_paths(self.masks_dir, r))]

    def __call__(self, record: CellRecord, shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        if file_sha1(record.image_path) != self.image_sha1.get(record.sample_id):
            raise UserError(f"{record.image_path}: the image changed after its masks in {self.masks_dir} were predicted; "
                            f"run main_segment.py again to predict them from the new image")
        cyt_path, nuc_path = mask_paths(self.masks_dir, record)
        return read_mask(cyt_path, shape), read_mask(nuc_path, shape)


def export_masks(pipeline, records: Sequence[CellRecord], masks_dir: Path, batch_size: int = 16) -> int:
    """Predict and write the masks of every record with `pipeline` (tools/inference.CellPipeline). Returns the count."""
    mark_output_dir(masks_dir)
    with tqdm(total=len(records), desc="exporting masks", unit="cell") as progress:
        for chunk in batched(list(records), batch_size):
            masks = pipeline.masks([record.load_image() for record in chunk])
            write_mask_pairs(masks_dir, [(record, *pair) for record, pair in zip(chunk, masks)])
            progress.update(len(chunk))
    return len(records)
