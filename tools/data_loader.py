"""The data path, from a data root to training batches, top to bottom:

  open_dataset    folder layout (tools/layouts/) -> records -> split manifest (tools/splits.py) -> every
                  cell decoded once up front, so a bad file stops the run (or, under --skip-bad, is left out)
                  before training and not at the mask export after it
  prepare_cells   decode + letterbox every cell of a split into arrays, or read them from the cell cache
                  (tools/cell_cache.py); masks come from a mask provider (tools/masks.py)
  *Dataset        augment image and masks together (workers only augment: decoding is done)
  make_loader     a DataLoader whose SeededSampler makes every item's augmentation a function of (seed, epoch)
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from tools import cell_cache, distributed
from tools.cell_cache import PreparedCells
from tools.layouts.cells import read_records
from tools.layouts.files import with_skip_hint
from tools.layouts.record import CellRecord
from tools.masks import MaskProvider, ground_truth_masks, ground_truth_masks_if_any
from tools.morphometry import FEATURE_NAMES, MEASUREMENTS_VERSION, cell_measurements
from tools.splits import SPLITS, chosen_manifest, load_split
from utils.errors import UserError
from utils.preprocessing import PAD_RGB, cell_channels, letterbox, normalize_image

# ---------------------------------------------------------------- decoding one cell


@dataclass
class CellSample:
    image: np.ndarray  # uint8 RGB [H, W, 3]
    cell_mask: Optional[np.ndarray]  # bool [H, W], cytoplasm + nucleus
    nuc_mask: Optional[np.ndarray]  # bool [H, W]


def load_sample(record: CellRecord, mask_provider: Optional[MaskProvider] = ground_truth_masks) -> CellSample:
    """Decode one cell at its own resolution; polygons are drawn at these coordinates, before any resize."""
    if record.problem is not None:
        raise UserError(record.problem)
    image = record.load_image()
    if mask_provider is None:
        return CellSample(image, None, None)
    return CellSample(image, *mask_provider(record, image.shape[:2]))


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


def check_cells(records: Sequence[CellRecord], skip_bad: bool) -> Tuple[List[CellRecord], List[SkippedCell]]:
    """Decode every cell's image and ground-truth masks once. Returns (usable cells, skipped cells)."""
    skipped: Optional[List[SkippedCell]] = [] if skip_bad else None
    usable = [record for record, _ in load_samples(records, ground_truth_masks_if_any, "checking cells", skipped)]
    return usable, skipped or []


def report_skipped(skipped: Sequence[SkippedCell], path: Path) -> None:
    """Print `skipped N bad cells: ...` and list them all in `path` (even when none: a stale list would mislead)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{cell.describe()}\n" for cell in skipped))
    if skipped:
        shown = ", ".join(cell.describe() for cell in skipped[:10])
        more = f", and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        print(f"skipped {len(skipped)} bad cells: {shown}{more} (list in {path})")


# ---------------------------------------------------------------- a data root, split and checked

@dataclass
class DatasetSplit:
    records: List[CellRecord]  # every usable cell of the data root (under --skip-bad the bad ones are left out)
    layout: str
    by_split: Dict[str, List[CellRecord]]  # "train" / "val" / "test" -> usable cells
    manifest_path: Path

    @property
    def class_names(self) -> List[str]:
        return sorted({r.label for r in self.records})


def usable_cells(records: Sequence[CellRecord], args, skipped_path: Path) -> List[CellRecord]:
    """Decode every cell once, up front: the first bad one stops the run, or under --skip-bad is left out and reported."""
    usable, skipped = check_cells(records, args.skip_bad)
    if args.skip_bad:
        report_skipped(skipped, skipped_path)
    return usable


def open_dataset(args, paths) -> DatasetSplit:
    """The data root named by the data flags, split by its manifest (made on first use), every cell checked.

    The manifest is about the files present, bad cells included: skipping one does not move the others to
    another split, and once it is fixed it comes back in the split it had.
    """
    records, layout = read_records(args.data_root, args.layout, args.sipakmed_source, args.nuc_suffix, args.cyt_suffix,
                                   args.skip_bad)
    manifest_path = chosen_manifest(args.split_file, paths.manifest(args.data_root))
    by_split = load_split(records, manifest_path, args.data_root, layout, seed=args.split_seed)
    usable = usable_cells(records, args, paths.skipped_cells)
    kept = {r.sample_id for r in usable}
    by_split = {name: [r for r in by_split[name] if r.sample_id in kept] for name in SPLITS}
    for name in ("train", "val"):
        if not by_split[name]:
            skipped = f", {len(records) - len(usable)} skipped as bad" if len(usable) < len(records) else ""
            raise UserError(f"{manifest_path}: the {name} split is empty ({len(usable)} usable cells in all{skipped}); add data")
    return DatasetSplit(usable, layout, by_split, manifest_path)


# ---------------------------------------------------------------- cells as arrays

def decode_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider], desc: str,
                 measure: bool = False) -> PreparedCells:
    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(records), 2, size, size), dtype=np.uint8) if mask_provider else None
    measurements = np.empty((len(records), len(FEATURE_NAMES)), dtype=np.float32) if measure else None
    for index, (record, sample) in enumerate(load_samples(records, mask_provider, desc)):
        sample_masks = [sample.cell_mask, sample.nuc_mask] if mask_provider else []
        images[index], boxed_masks, _ = letterbox(sample.image, sample_masks, size)
        if masks is not None:
            masks[index] = np.stack(boxed_masks)
        if measurements is not None:  # at the cell's own scale, before the letterbox resizes it
            measurements[index] = cell_measurements(sample.image, sample.cell_mask, sample.nuc_mask)
    return PreparedCells(images, masks, list(records), measurements)


def prepare_cells(records: Sequence[CellRecord], size: int, mask_provider: Optional[MaskProvider] = ground_truth_masks,
                  desc: str = "loading cells", cache_dir: Optional[Path] = None, measure: bool = False) -> PreparedCells:
    """Decode and letterbox every cell, or read the arrays from cache_dir when these very files were prepared before.

    Args:
        records: the cells, in the order of the arrays.
        size: side S of the letterboxed square.
        mask_provider: where the masks come from (None: images only). Cached only when it has a `cache_key`.
        desc: progress bar label, shown only when cells are decoded.
        cache_dir: folder of the .npz cache files (None: no cache).
        measure: also measure every cell (tools/morphometry.py) from its image and masks; needs a mask provider.

    Returns:
        PreparedCells: images uint8 [N, S, S, 3], masks uint8 [N, 2, S, S] (or None), the records, measurements
        float32 [N, F] (or None).
    """
    measurement_set = f"{len(FEATURE_NAMES)} v{MEASUREMENTS_VERSION}" if measure else ""
    key = cell_cache.cache_key(records, size, mask_provider, measurement_set) if cache_dir is not None else None
    if key is None:
        return decode_cells(records, size, mask_provider, desc, measure)
    path = cell_cache.cache_path(cache_dir, size, key)
    cached = cell_cache.load_cached_cells(path, key, records, size, mask_provider is not None, measure)
    if cached is not None:
        return cached
    cells = decode_cells(records, size, mask_provider, desc, measure)
    cell_cache.save_cached_cells(path, key, cells)
    return cells


# ---------------------------------------------------------------- augmentation and datasets

def build_augmentation(train: bool) -> A.Compose:
    """Augmentations for cytology on letterboxed squares: orientation is arbitrary, stains vary, focus varies."""
    if not train:
        return A.Compose([])
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.85, 1.15), rotate=(-15, 15), translate_percent=(-0.05, 0.05),
                 border_mode=cv2.BORDER_CONSTANT, fill=PAD_RGB, fill_mask=0, p=0.7),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.04, p=0.7),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ])


def seed_augmentation(augment: A.Compose, seed: int) -> None:
    """Seed a pipeline so that its transforms draw independent streams.

    Compose.set_random_seed gives every transform the SAME seed, which makes e.g. the horizontal
    and vertical flips always fire together; each transform gets a seed of its own here.
    """
    augment.set_random_seed(seed)
    for index, transform in enumerate(augment.transforms):
        transform.set_random_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


class AugmentedCells(Dataset):
    """Applies one augmentation to image and masks together; subclasses shape the output.

    Items are requested as (index, seed) by SeededSampler, or by plain index.
    """

    takes_sample_seeds = True

    def __init__(self, cells: PreparedCells, train: bool):
        self.cells = cells
        self.augment = build_augmentation(train)

    def __len__(self) -> int:
        return len(self.cells.images)

    def augmented(self, item) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(uint8 RGB [S, S, 3], 0/1 masks [2, S, S] or None), augmented together when training."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_augmentation(self.augment, seed)
        masks = list(self.cells.masks[index]) if self.cells.masks is not None else []
        out = self.augment(image=self.cells.images[index], masks=masks)
        return out["image"], np.stack(out["masks"]) if masks else None


class SegmentationDataset(AugmentedCells):
    """Items: image [3, S, S] float, masks [2, S, S] float (cell, nucleus)."""

    def __getitem__(self, item):
        image, masks = self.augmented(item)
        return torch.from_numpy(normalize_image(image)), torch.from_numpy(masks.astype(np.float32))


class ClassificationDataset(AugmentedCells):
    """Items: (RGB + cell mask + nucleus mask [5, S, S] float, class index), or with measurements
    ((that image, measurements [F]), class index)."""

    def __init__(self, cells: PreparedCells, class_names: Sequence[str], train: bool):
        super().__init__(cells, train)
        index_of = {name: i for i, name in enumerate(class_names)}
        self.labels = torch.tensor([index_of[r.label] for r in cells.records], dtype=torch.long)

    def __getitem__(self, item):
        image, masks = self.augmented(item)
        index = item[0] if isinstance(item, tuple) else item
        cell = torch.from_numpy(cell_channels(image, masks))
        if self.cells.measurements is not None:
            return (cell, torch.from_numpy(self.cells.measurements[index])), self.labels[index]
        return cell, self.labels[index]


# ---------------------------------------------------------------- sampler and loader

def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own reproducible numpy/random/albumentations stream."""
    import random

    info = get_worker_info()
    seed = info.seed % 2**32  # torch derives it from the main process RNG, so it follows --seed
    random.seed(seed)
    np.random.seed(seed)
    augment = getattr(info.dataset, "augment", None)
    if augment is not None:
        seed_augmentation(augment, seed)


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed) pairs drawn from (seed, epoch) alone.

    An item's augmentation then depends on neither the worker that loads it nor the run's history,
    so a run resumed at epoch k sees exactly the batches an uninterrupted run sees. fit() calls
    set_epoch() before every epoch, as with DistributedSampler. Under torchrun each rank takes its
    shard of the one global order (tools/distributed.shard). With sample_weights, an epoch draws
    as many items with replacement, item i with probability proportional to sample_weights[i].
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int, sample_weights: Optional[np.ndarray] = None):
        self.num_samples, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0
        self.sample_weights = sample_weights

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._global_order())

    def _global_order(self) -> list:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.sample_weights is not None:
            order = rng.choice(self.num_samples, self.num_samples, p=self.sample_weights / self.sample_weights.sum())
        else:
            order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        sample_seeds = rng.integers(0, 2**31, self.num_samples)
        return distributed.shard(list(zip(order.tolist(), sample_seeds.tolist())), pad=self.shuffle)

    def __iter__(self):
        return iter(self._global_order())


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device, seed: int,
                drop_last: bool = False, sample_weights: Optional[np.ndarray] = None) -> DataLoader:
    """A DataLoader; datasets with `takes_sample_seeds` get a SeededSampler (exactly reproducible augmentation).

    batch_size is per process: under torchrun the global batch is batch_size * world size.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if getattr(dataset, "takes_sample_seeds", False):
        sampler = SeededSampler(len(dataset), shuffle, seed, sample_weights)
    elif workers == 0 and hasattr(dataset, "augment"):
        seed_augmentation(dataset.augment, seed)  # seed_worker only runs in worker processes
    if workers > 0:
        # Workers are processes already; an OpenCV thread pool inherited through fork can deadlock in the
        # child and otherwise only fights the main process for the cores. Set it before the fork.
        cv2.setNumThreads(1)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=seed_worker, generator=generator, drop_last=drop_last,
    )
