"""Stage 1: train the dual-head segmentation U-Net (run it through main_segment.py).

This module holds what is particular to segmentation (loss, metrics, model config); the epoch
loop, validation and checkpoints are the shared engine's (tools/engine.py).
"""
import argparse
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from model.segmentation_model import HEADS, DualHeadAttConvNeXtUNet
from tools.acceleration import resolve_acceleration, resolve_device
from tools.checkpoint import RunState
from tools.config import provenance
from tools.data_loader import (
    DatasetSplit,
    SegmentationDataset,
    make_loader,
    prepare_cells,
)
from tools.engine import Task, fit, seed_everything
from tools.metrics import SegmentationMeter
from tools.optim import adamw, warmup_cosine
from tools.pretrained import build_with_pretrained
from tools.splits import manifest_sha1
from utils.errors import UserError


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """BCE plus soft Dice, Dice computed per image: logits and target [B, H, W].

    A negative target marks a pixel whose truth is unknown (a field whose cells are not outlined): it counts
    in neither term, and an image with no known pixel adds nothing to the Dice mean.
    """
    known = (target >= 0).float()
    target = target.clamp_min(0)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * known).sum() / known.sum().clamp_min(1)
    probs = (torch.sigmoid(logits) * known).flatten(1)
    target, known_per_image = target.flatten(1), known.flatten(1).sum(1) > 0
    dice = (2 * (probs * target).sum(1) + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return bce + ((1 - dice) * known_per_image).sum() / known_per_image.sum().clamp_min(1)


def segmentation_loss(outputs: Dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Mean over the heads of Dice + BCE; masks [B, 2, H, W] hold cell then nucleus."""
    return sum(dice_bce_loss(outputs[head][:, 0].float(), masks[:, i]) for i, head in enumerate(HEADS)) / len(HEADS)


class SegmentationBatchMeter:
    """Dice, IoU and pixel accuracy per head from logits thresholded at 0 (probability 0.5).

    An image whose target holds unknown (negative) pixels for a head is not scored for that head.
    """

    def __init__(self):
        self.meter = SegmentationMeter(HEADS)

    def update(self, outputs: Dict[str, torch.Tensor], masks: torch.Tensor) -> None:
        for i, head in enumerate(HEADS):
            known = (masks[:, i] >= 0).flatten(1).all(dim=1)
            if known.any():
                self.meter.update(head, outputs[head][known, 0] > 0, masks[known, i] > 0.5)

    def merge(self, other: "SegmentationBatchMeter") -> None:
        self.meter.merge(other.meter)

    def compute(self) -> Dict[str, float]:
        return self.meter.compute()


SEGMENTATION_TASK = Task("segmentation", segmentation_loss, SegmentationBatchMeter, monitor="dice_mean")


def model_config(args: argparse.Namespace) -> Dict:
    return dict(backbone=args.backbone, decoder_channels=list(args.decoder_channels))


def check_has_masks(split: DatasetSplit, data_root) -> None:
    if not split.records[0].has_masks:
        raise UserError(f"{data_root}: this layout has no masks to train segmentation on; train stage 1 on a data "
                        f"root with masks and give main_classify.py its checkpoint with --seg-checkpoint")


def train(args: argparse.Namespace, split: DatasetSplit, checkpoint_dir: Path, log_dir: Path,
          resume: Optional[Path] = None) -> Dict:
    """Train stage 1 on the split's train cells, validating on its val cells. Returns the best validation metrics."""
    seed_everything(args.seed, args.deterministic)
    device = resolve_device(args.device)

    # 1. Decode and letterbox once, then wrap in augmenting datasets
    train_cells = prepare_cells(split.by_split["train"], args.img_size, desc="loading train cells", cache_dir=args.cache_dir)
    val_cells = prepare_cells(split.by_split["val"], args.img_size, desc="loading val cells", cache_dir=args.cache_dir)
    train_loader = make_loader(SegmentationDataset(train_cells, train=True), args.batch_size, True, args.workers,
                               device, args.seed, drop_last=len(train_cells.images) > args.batch_size)
    val_loader = make_loader(SegmentationDataset(val_cells, train=False), args.batch_size, False, args.workers, device, args.seed)

    # 2. Model, optimiser, schedule
    config = model_config(args)
    model, origin = build_with_pretrained(DualHeadAttConvNeXtUNet, config, args.weights, args.pretrained)
    model.to(device)
    accel = resolve_acceleration(args, device)
    optimizer = adamw(model, args.lr, args.weight_decay, accel.fused_adamw)
    scheduler = warmup_cosine(optimizer, args.epochs * len(train_loader), int(args.warmup_epochs * len(train_loader)))
    print(f"segmentation: {args.backbone} ({origin}), {len(train_cells.images)} train / {len(val_cells.images)} val cells, "
          f"{args.img_size}px, {args.epochs} epochs on {device}")

    # 3. Train
    run = RunState("segmentation", vars(args), config, provenance=provenance(args, manifest_sha1(split.manifest_path)))
    return fit(model, SEGMENTATION_TASK, train_loader, val_loader, optimizer, scheduler, device, args.epochs, run,
               checkpoint_dir, log_dir, resume, accel, args.ema_decay)
