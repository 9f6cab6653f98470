"""Behaviour of tools/data_loader.py: decoding cells, a data root opened and split, the datasets, augmentation,
the seeded sampler and the loader."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import tools.data_loader as data_loader
from tools.data_loader import (
    ClassificationDataset,
    SeededSampler,
    SegmentationDataset,
    build_augmentation,
    load_sample,
    make_loader,
    open_dataset,
    prepare_cells,
    report_skipped,
)
from tools.layouts.cells import read_records
from tools.run_dir import RunPaths
from utils.errors import UserError
from utils.preprocessing import PAD_RGB, cell_channels, normalize_image

CPU = torch.device("cpu")
SIZE = 32


# ---------------------------------------------------------------- decoding one cell

def test_custom_mask_provider_gets_the_image_shape(tmp_path):
    root = tmp_path / "labels"
    (root / "a").mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "x.png"), np.zeros((9, 13, 3), np.uint8))
    seen = []

    def provider(record, shape):
        seen.append(shape)
        return np.ones(shape, bool), np.zeros(shape, bool)

    sample = load_sample(read_records(root)[0][0], mask_provider=provider)
    assert seen == [(9, 13)] and sample.cell_mask.all() and not sample.nuc_mask.any()


def test_labels_only_cell_decodes_without_masks_and_refuses_ground_truth(tmp_path):
    root = tmp_path / "labels"
    (root / "a").mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "x.png"), np.zeros((9, 13, 3), np.uint8))
    record = read_records(root)[0][0]
    sample = load_sample(record, mask_provider=None)
    assert sample.image.shape == (9, 13, 3) and sample.cell_mask is None and sample.nuc_mask is None
    with pytest.raises(UserError, match="no ground-truth masks.*--mask-source predicted"):
        load_sample(record)


def test_report_skipped_lists_every_cell_and_prints_the_first_ten(tmp_path, capsys):
    from tools.data_loader import SkippedCell

    skipped = [SkippedCell(None, f"/data/{i}.bmp: cannot read this image, empty file; replace or remove it") for i in range(12)]
    path = tmp_path / "run" / "skipped_cells.txt"
    report_skipped(skipped, path)
    assert path.read_text().splitlines() == [f"/data/{i}.bmp (cannot read this image, empty file)" for i in range(12)]
    printed = capsys.readouterr().out
    assert printed.startswith("skipped 12 bad cells: /data/0.bmp (cannot read") and "and 2 more" in printed
    assert "/data/10.bmp" not in printed and str(path) in printed
    report_skipped([], path)  # none skipped this time: the old list would mislead
    assert path.read_text() == "" and capsys.readouterr().out == ""


# ---------------------------------------------------------------- a data root, split and checked

def data_args(data_root, **chosen):
    flags = dict(data_root=data_root, layout="auto", sipakmed_source="cropped", nuc_suffix="N.png", cyt_suffix="C.png",
                 split_file=None, split_seed=0, skip_bad=False)
    return SimpleNamespace(**{**flags, **chosen})


def test_open_split_on_the_demo_data(tmp_path, demo_root):
    split = open_dataset(data_args(demo_root), RunPaths(tmp_path))
    assert split.layout == "sipakmed"
    assert sum(len(v) for v in split.by_split.values()) == len(split.records)
    assert split.by_split["train"] and split.by_split["val"]
    group_split = {}
    for name, records in split.by_split.items():
        for record in records:
            assert group_split.setdefault(record.group, name) == name  # no cluster image in two splits
    assert RunPaths(tmp_path).manifest(demo_root).exists()


def test_open_dataset_leaves_bad_cells_out_under_skip_bad_and_keeps_the_split(paired_root, tmp_path):
    root = Path(shutil.copytree(paired_root, tmp_path / "herlev"))
    paths = RunPaths(tmp_path / "run")
    whole = open_dataset(data_args(root), paths)
    bad = whole.by_split["train"][0]
    bad.image_path.write_bytes(b"")
    with pytest.raises(UserError, match=rf"{bad.image_path.name}: cannot read this image.*--skip-bad"):
        open_dataset(data_args(root), paths)
    split = open_dataset(data_args(root, skip_bad=True), paths)
    assert [r.sample_id for r in split.records] == [r.sample_id for r in whole.records if r.sample_id != bad.sample_id]
    for name in ("val", "test"):
        assert [r.sample_id for r in split.by_split[name]] == [r.sample_id for r in whole.by_split[name]]
    assert paths.skipped_cells.read_text().startswith(str(bad.image_path))


# ---------------------------------------------------------------- datasets

def test_datasets_give_normalised_images_with_their_masks_and_labels(paired_root):
    records, _ = read_records(paired_root)
    cells = prepare_cells(records, SIZE)
    assert cells.images.shape == (len(records), SIZE, SIZE, 3) and cells.masks.shape == (len(records), 2, SIZE, SIZE)
    image, masks = SegmentationDataset(cells, train=False)[3]
    assert image.dtype == masks.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(normalize_image(cells.images[3])))
    assert torch.equal(masks, torch.from_numpy(cells.masks[3].astype(np.float32)))
    class_names = sorted({r.label for r in records})
    dataset = ClassificationDataset(cells, class_names, train=False)
    for index in (0, len(records) - 1):
        channels, label = dataset[index]
        assert torch.equal(channels, torch.from_numpy(cell_channels(cells.images[index], cells.masks[index])))
        assert class_names[int(label)] == records[index].label


def test_an_item_seed_fixes_its_augmentation(paired_root):
    cells = prepare_cells(read_records(paired_root)[0], SIZE)
    dataset = SegmentationDataset(cells, train=True)
    draws = [dataset[(2, seed)] for seed in (7, 7, 8)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])


# ---------------------------------------------------------------- augmentation

def coloured_cell(height, width):
    """Grey background with a red rectangle; returns (image, mask of exactly the red pixels)."""
    image = np.full((height, width, 3), 200, np.uint8)
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 3: width // 3 + width // 4] = True
    image[mask] = (220, 30, 30)
    return image, mask


def seed_each_transform(augment, seed):
    """Reproducible but independent draws per transform (Compose.set_random_seed gives them all one stream)."""
    for index, transform in enumerate(augment.transforms):
        transform.set_random_seed(seed * 100 + index)


def test_eval_augmentation_is_identity():
    image, mask = coloured_cell(64, 64)
    out = build_augmentation(train=False)(image=image, masks=[mask.astype(np.uint8)])
    assert np.array_equal(out["image"], image)
    assert np.array_equal(out["masks"][0], mask)


def test_train_augmentation_moves_masks_with_the_image():
    """Whatever geometric transform is drawn, the mask still marks the coloured pixels afterwards."""
    size = 64
    image = np.full((size, size, 3), PAD_RGB, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (22, 38), (12, 7), 30, 0, 360, 1, -1)  # off-centre and asymmetric: flips show
    mask[8:16, 40:52] = 1
    image[mask > 0] = (200, 40, 160)
    augment = build_augmentation(train=True)
    moved = 0
    for seed in range(25):
        seed_each_transform(augment, seed)
        out = augment(image=image, masks=[mask, 1 - mask])
        out_image, (out_mask, out_inverse) = out["image"], out["masks"]
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= {0, 1}
        colour = out_image.astype(int)
        # the grey background has no saturation, whatever the colour jitter; blur smears the edge, so the
        # coloured region is where saturation is above half of the cell's
        saturation = colour.max(axis=2) - colour.min(axis=2)
        coloured = saturation > 0.5 * np.percentile(saturation, 99)
        marked = out_mask > 0
        iou = (coloured & marked).sum() / (coloured | marked).sum()
        assert iou > 0.9, (seed, iou)
        moved += not np.array_equal(out_mask, mask)
        # masks are padded with 0, not with their own edge: the inverse mask shows no padded "cell"
        assert (out_mask & out_inverse).sum() == 0
    assert moved >= 20  # the transforms really are geometric most of the time


def test_train_augmentation_changes_colour_only_in_the_image():
    image = np.full((32, 32, 3), (180, 120, 90), np.uint8)
    mask = np.ones((32, 32), np.uint8)
    augment = build_augmentation(train=True)
    changed = 0
    for seed in range(10):
        seed_each_transform(augment, seed)
        out = augment(image=image, masks=[mask])
        changed += not np.array_equal(out["image"], image)
        assert set(np.unique(out["masks"][0])) <= {0, 1}
    assert changed >= 5


# ---------------------------------------------------------------- sampler and loader

def test_balanced_sampler_draws_every_class_about_equally():
    labels = np.array([0] * 90 + [1] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    sampler = SeededSampler(len(labels), shuffle=True, seed=0, sample_weights=weights)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[index] for index, _ in sampler]
    assert len(drawn) == 20 * 100
    assert 0.4 < np.mean(drawn) < 0.6  # the 10 % class fills about half of every epoch
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # drawn from (seed, epoch) alone


def worker_augment(monkeypatch, seed=123456789):
    """Run seed_worker as a loader worker would, and return the augmentation it seeded."""
    augment = build_augmentation(train=True)
    info = SimpleNamespace(seed=seed, dataset=SimpleNamespace(augment=augment))
    monkeypatch.setattr(data_loader, "get_worker_info", lambda: info)
    data_loader.seed_worker(0)
    augment.save_applied_params = True
    return augment


def applied(augment, calls=200):
    image = np.zeros((16, 16, 3), np.uint8)
    return [{name for name, _ in augment(image=image)["applied_transforms"]} for _ in range(calls)]


def test_seed_worker_makes_augmentation_reproducible(monkeypatch):
    a, b = applied(worker_augment(monkeypatch), 30), applied(worker_augment(monkeypatch), 30)
    assert a == b
    assert applied(worker_augment(monkeypatch, seed=1), 30) != a


def test_seed_worker_keeps_transforms_independent(monkeypatch):
    draws = applied(worker_augment(monkeypatch))
    horizontal = np.array(["HorizontalFlip" in d for d in draws])
    vertical = np.array(["VerticalFlip" in d for d in draws])
    # independent p=0.5 flips: exactly one of them fires about half of the time
    assert 0.3 < (horizontal != vertical).mean() < 0.7


def test_make_loader_makes_main_process_augmentation_repeatable():
    # with --workers 0 seed_worker never runs; make_loader seeds the augmentation itself
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    class Augmented(torch.utils.data.Dataset):
        def __init__(self):
            self.augment = build_augmentation(train=True)

        def __len__(self):
            return 6

        def __getitem__(self, index):
            return torch.from_numpy(self.augment(image=image)["image"])

    batches = [torch.cat(list(make_loader(Augmented(), 3, False, 0, CPU, seed))) for seed in (0, 0, 1)]
    assert torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])


def test_make_loader_is_seeded():
    dataset = TensorDataset(torch.arange(20))

    def order(seed):
        return [int(x) for (batch,) in make_loader(dataset, 4, True, 0, CPU, seed) for x in batch]

    assert order(3) == order(3) and sorted(order(3)) == list(range(20))
    assert order(3) != order(4)
    loader = make_loader(dataset, 6, False, 0, CPU, 0, drop_last=True)
    assert [len(b[0]) for b in loader] == [6, 6, 6]
