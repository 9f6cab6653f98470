"""PyTorch datasets over letterboxed cells that are decoded once, up front.

Decoding, polygon drawing and letterboxing happen in the main process before training (with a
progress bar), so a bad file stops the run at load time with its name, and workers only augment.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from tools.data_loader import CellRecord, MaskProvider, ground_truth_masks, load_sample
from utils.preprocessing import build_augmentation, letterbox, normalize_image, seed_augmentation


@dataclass
class PreparedCells:
    """Letterboxed cells stacked into arrays; masks are absent when the records have none."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: Optional[np.ndarray]  # uint8 [N, 2, S, S]: cell, nucleus (0/1)
    records: List[CellRecord]


def prepare_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider] = ground_truth_masks,
                  desc: str = "loading cells") -> PreparedCells:
    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(records), 2, size, size), dtype=np.uint8) if mask_provider else None
    for index, record in enumerate(tqdm(records, desc=desc, unit="cell", leave=False)):
        sample = load_sample(record, mask_provider)
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
