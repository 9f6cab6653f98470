"""PyTorch datasets over letterboxed cells that are decoded once, up front.

Decoding, polygon drawing and letterboxing happen in the main process before training (with a
progress bar), so a bad file stops the run at load time with its name, and workers only augment.
check_cells decodes every cell of a data root once more, up front, so that a bad file stops (or under
--skip-bad is left out of) a run before training, not at the mask export or evaluation after it.
prepare_cells keeps what it built in --cache-dir, so later runs on unchanged files read arrays instead.
"""
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from tools.config import say_once
from tools.data_loader import CellRecord, CellSample, MaskProvider, ground_truth_masks, load_sample, with_skip_hint
from tools.errors import UserError
from tools.files import written_atomically
from utils.preprocessing import build_augmentation, letterbox, normalize_image, seed_augmentation


@dataclass
class PreparedCells:
    """Letterboxed cells stacked into arrays; masks are absent when the records have none."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: Optional[np.ndarray]  # uint8 [N, 2, S, S]: cell, nucleus (0/1)
    records: List[CellRecord]


SKIPPED_CELLS_FILE = "skipped_cells.txt"
MAX_SKIPPED_SHOWN = 10  # on the console; the file lists them all


@dataclass
class SkippedCell:
    record: CellRecord
    error: str  # "<file>: <what is wrong>; <what to do>"

    def describe(self) -> str:
        """'<file> (<what is wrong>)': the advice is left out, it is the same for every skipped cell."""
        at_fault, _, what = self.error.split("; ")[0].partition(": ")
        return f"{at_fault} ({what})" if what else at_fault


def load_samples(records: Sequence[CellRecord], mask_provider: Optional[MaskProvider], desc: str,
                 skipped: Optional[List[SkippedCell]] = None) -> Iterator[Tuple[CellRecord, CellSample]]:
    """Decode cells one by one. A bad cell stops the run, or is added to `skipped` and left out when that is given."""
    for record in tqdm(records, desc=desc, unit="cell", leave=False):
        try:
            sample = load_sample(record, mask_provider)
        except UserError as error:
            if skipped is None:
                raise with_skip_hint(error) from None
            skipped.append(SkippedCell(record, str(error)))
            continue
        yield record, sample


def ground_truth_masks_if_any(record: CellRecord, shape: Tuple[int, int]):
    return ground_truth_masks(record, shape) if record.has_masks else (None, None)


def check_cells(records: Sequence[CellRecord], skip_bad: bool) -> Tuple[List[CellRecord], List[SkippedCell]]:
    """Decode every cell's image and ground-truth masks once. Returns (usable cells, skipped cells).

    Without skip_bad the first bad cell stops the run with its one-line error.
    """
    skipped: Optional[List[SkippedCell]] = [] if skip_bad else None
    usable = [record for record, _ in load_samples(records, ground_truth_masks_if_any, "checking cells", skipped)]
    return usable, skipped or []


def report_skipped(skipped: Sequence[SkippedCell], output_dir: Path) -> None:
    """Print `skipped N bad cells: ...` and list them all in <output-dir>/skipped_cells.txt."""
    path = Path(output_dir) / SKIPPED_CELLS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{cell.describe()}\n" for cell in skipped))  # even when empty: a stale list would mislead
    if skipped:
        shown = ", ".join(cell.describe() for cell in skipped[:MAX_SKIPPED_SHOWN])
        more = f", and {len(skipped) - MAX_SKIPPED_SHOWN} more" if len(skipped) > MAX_SKIPPED_SHOWN else ""
        print(f"skipped {len(skipped)} bad cells: {shown}{more} (list in {path})")


def decode_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider], desc: str) -> PreparedCells:
    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(records), 2, size, size), dtype=np.uint8) if mask_provider else None
    for index, (record, sample) in enumerate(load_samples(records, mask_provider, desc)):
        sample_masks = [sample.cell_mask, sample.nuc_mask] if mask_provider else []
        images[index], boxed_masks, _ = letterbox(sample.image, sample_masks, size)
        if masks is not None:
            masks[index] = np.stack(boxed_masks)
    return PreparedCells(images, masks, list(records))


# ---------------------------------------------------------------- cache of prepared cells

CACHE_FORMAT = 1  # bump when decoding, mask drawing or letterboxing changes, so that older cache files stop matching


def cell_files(record: CellRecord, mask_provider: Optional[MaskProvider]) -> List[Path]:
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


def cache_key(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider]) -> Optional[str]:
    """Short sha1 of all that the prepared arrays depend on; None when the mask source cannot be named (no caching)."""
    mask_source = "none" if mask_provider is None else getattr(mask_provider, "cache_key", None)
    if mask_source is None:
        return None
    digest = hashlib.sha1(f"format {CACHE_FORMAT}\nsize {size}\nmasks {mask_source}\n".encode())
    for record in records:
        stamps = "\t".join(file_stamp(path) for path in cell_files(record, mask_provider))
        digest.update(f"{record.sample_id}\t{record.label}\t{record.crop_box}\t{stamps}\n".encode())
    return digest.hexdigest()[:16]


def load_cached_cells(path: Path, key: str, records: Sequence[CellRecord], size: int,
                      with_masks: bool) -> Optional[PreparedCells]:
    """The cells stored at path, or None when it is absent, unreadable or holds something else."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            images = stored["images"]
            masks = stored["masks"] if with_masks else None
    except Exception:  # missing, truncated or foreign: the cache is only a shortcut, so the caller builds again
        return None
    if images.shape != (len(records), size, size, 3) or (with_masks and masks.shape != (len(records), 2, size, size)):
        return None
    return PreparedCells(images, masks, list(records))


def save_cached_cells(path: Path, key: str, cells: PreparedCells) -> None:
    """Write to a temporary name, then rename, so that a crash never leaves a broken file under the real name.

    A folder that cannot be written is said once, on stderr; the run goes on without the cache.
    """
    arrays = {"key": np.array(key), "images": cells.images}
    if cells.masks is not None:
        arrays["masks"] = cells.masks
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a file object, because np.savez appends .npz to a name
        with written_atomically(path) as tmp_path, open(tmp_path, "wb") as file:
            np.savez(file, **arrays)
    except OSError as error:
        say_once(f"warning: cell cache {path.parent} cannot be written ({error.strerror or error}); "
                 f"going on without it (pass --cache-dir to move it, or --cache-dir none)", file=sys.stderr)


def prepare_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider] = ground_truth_masks,
                  desc: str = "loading cells", cache_dir: Optional[Path] = None) -> PreparedCells:
    """Decode and letterbox every cell, or read the arrays from cache_dir when these very files were prepared before.

    Args:
        records: the cells, in the order of the arrays.
        size: side S of the letterboxed square.
        mask_provider: where the masks come from (None: images only). Cached only when it has a `cache_key`.
        desc: progress bar label, shown only when cells are decoded.
        cache_dir: folder of the .npz cache files (None: no cache). A file is keyed by size, mask source and
            every record's id, label and file stamps, so any change to the data builds a new one.

    Returns:
        PreparedCells: images uint8 [N, S, S, 3], masks uint8 [N, 2, S, S] (or None), the records.
    """
    key = cache_key(records, size, mask_provider) if cache_dir is not None else None
    if key is None:
        return decode_cells(records, size, mask_provider, desc)
    path = Path(cache_dir) / f"cells-{size}px-{key}.npz"
    cached = load_cached_cells(path, key, records, size, with_masks=mask_provider is not None)
    if cached is not None:
        return cached
    cells = decode_cells(records, size, mask_provider, desc)
    save_cached_cells(path, key, cells)
    return cells


class AugmentedCells(Dataset):
    """Applies one augmentation to image and masks together; subclasses shape the output.

    Items are requested as (index, seed) by the engine's SeededSampler, or by plain index.
    """

    takes_sample_seeds = True

    def __init__(self, cells: PreparedCells, train: bool):
        self.cells = cells
        self.augment = build_augmentation(train)

    def __len__(self) -> int:
        return len(self.cells.images)

    def augmented(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_augmentation(self.augment, seed)
        masks = list(self.cells.masks[index]) if self.cells.masks is not None else []
        out = self.augment(image=self.cells.images[index], masks=masks)
        image = torch.from_numpy(normalize_image(out["image"]))  # [3, S, S]
        mask_tensor = torch.from_numpy(np.stack(out["masks"]).astype(np.float32)) if masks else None  # [2, S, S]
        return image, mask_tensor


class SegmentationDataset(AugmentedCells):
    """Items: image [3, S, S] float, masks [2, S, S] float (cell, nucleus)."""

    def __getitem__(self, item):
        return self.augmented(item)


class ClassificationDataset(AugmentedCells):
    """Items: RGB + cell mask + nucleus mask [5, S, S] float, class index."""

    def __init__(self, cells: PreparedCells, class_names: Sequence[str], train: bool):
        super().__init__(cells, train)
        index_of = {name: i for i, name in enumerate(class_names)}
        self.labels = torch.tensor([index_of[r.label] for r in cells.records], dtype=torch.long)

    def __getitem__(self, item):
        image, masks = self.augmented(item)
        index = item[0] if isinstance(item, tuple) else item
        return torch.cat([image, masks], dim=0), self.labels[index]
