"""PyTorch datasets over letterboxed cells that are decoded once, up front.

Decoding, polygon drawing and letterboxing happen in the main process before training (with a
progress bar), so a bad file stops the run at load time with its name, and workers only augment.
check_cells decodes every cell of a data root once more, up front, so that a bad file stops (or under
--skip-bad is left out of) a run before training, not at the mask export or evaluation after it.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from tools.data_loader import CellRecord, CellSample, MaskProvider, ground_truth_masks, load_sample, with_skip_hint
from tools.errors import UserError
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


def prepare_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider] = ground_truth_masks,
                  desc: str = "loading cells") -> PreparedCells:
    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(records), 2, size, size), dtype=np.uint8) if mask_provider else None
    for index, (record, sample) in enumerate(load_samples(records, mask_provider, desc)):
        sample_masks = [sample.cell_mask, sample.nuc_mask] if mask_provider else []
        images[index], boxed_masks, _ = letterbox(sample.image, sample_masks, size)
        if masks is not None:
            masks[index] = np.stack(boxed_masks)
    return PreparedCells(images, masks, list(records))


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
