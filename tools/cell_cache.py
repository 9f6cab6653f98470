"""The cell cache: letterboxed cells kept as .npz files in --cache-dir, so later runs on unchanged files
read arrays instead of decoding images, masks and polygons again.

A file is named by a key over everything the arrays depend on (format version, image size, mask
source, and every cell's id, label, crop and file stamps), so a changed, added or removed file builds a
new one. tools/data_loader.prepare_cells decides when to read and write here.
"""
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from tools.layouts.record import CellRecord
from utils.console import say_once
from utils.files import written_atomically

CACHE_FORMAT = 2  # bump when decoding, mask drawing or letterboxing changes, so that older cache files stop matching


@dataclass
class PreparedCells:
    """Letterboxed cells stacked into arrays; masks are absent when the records have none."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: Optional[np.ndarray]  # uint8 [N, 2, S, S]: cell, nucleus (0/1)
    records: List[CellRecord]
    measurements: Optional[np.ndarray] = None  # float32 [N, F]: tools/morphometry.py at the cells' own scale


def cell_files(record: CellRecord, mask_provider) -> List[Path]:
    """Every file a cell is built from: its image, mask PNGs and boundary .dat files, and the provider's own masks."""
    provided = mask_provider.mask_files(record) if hasattr(mask_provider, "mask_files") else ()
    files = (record.image_path, record.cyt_mask_path, record.nuc_mask_path, *record.polygon_files, *provided)
    return [Path(path) for path in files if path is not None]


def file_stamp(path: Path) -> str:
    """'<absolute path> <bytes> <mtime ns>': changes when the file is rewritten, appears or disappears."""
    try:
        stat = path.stat()
    except OSError:
        return f"{path.absolute()} missing"  # decoding will raise the error that names it
    return f"{path.absolute()} {stat.st_size} {stat.st_mtime_ns}"


def cache_key(records: Sequence[CellRecord], size: int, mask_provider, measurements: str = "") -> Optional[str]:
    """Short sha1 of all that the prepared arrays depend on; None when the mask source cannot be named (no caching).

    measurements names the measurement set stored with the cells ("" for none).
    """
    mask_source = "none" if mask_provider is None else getattr(mask_provider, "cache_key", None)
    if mask_source is None:
        return None
    digest = hashlib.sha1(f"format {CACHE_FORMAT}\nsize {size}\nmasks {mask_source}\nmeasurements {measurements}\n".encode())
    for record in records:
        stamps = "\t".join(file_stamp(path) for path in cell_files(record, mask_provider))
        digest.update(f"{record.sample_id}\t{record.label}\t{record.crop_box}\t{stamps}\n".encode())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: Path, size: int, key: str) -> Path:
    return Path(cache_dir) / f"cells-{size}px-{key}.npz"


def load_cached_cells(path: Path, key: str, records: Sequence[CellRecord], size: int, with_masks: bool,
                      with_measurements: bool = False) -> Optional[PreparedCells]:
    """The cells stored at path, or None when it is absent, unreadable or holds something else."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            images = stored["images"]
            masks = stored["masks"] if with_masks else None
            measurements = stored["measurements"] if with_measurements else None
    except Exception:  # missing, truncated or foreign: the cache is only a shortcut, so the caller builds again
        return None
    if images.shape != (len(records), size, size, 3) or (with_masks and masks.shape != (len(records), 2, size, size)) \
            or (with_measurements and len(measurements) != len(records)):
        return None
    return PreparedCells(images, masks, list(records), measurements)


def save_cached_cells(path: Path, key: str, cells: PreparedCells) -> None:
    """Write to a temporary name, then rename, so that a crash never leaves a broken file under the real name.

    A folder that cannot be written is said once, on stderr; the run goes on without the cache.
    """
    arrays = {"key": np.array(key), "images": cells.images}
    if cells.masks is not None:
        arrays["masks"] = cells.masks
    if cells.measurements is not None:
        arrays["measurements"] = cells.measurements
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a file object, because np.savez appends .npz to a name
        with written_atomically(path) as tmp_path, open(tmp_path, "wb") as file:
            np.savez(file, **arrays)
    except OSError as error:
        say_once(f"warning: cell cache {path.parent} cannot be written ({error.strerror or error}); "
                 f"going on without it (pass --cache-dir to move it, or --cache-dir none)", file=sys.stderr)
