"""Stage 2: train the 5-channel cell classifier (run it through main_classify.py).

This module holds what is particular to classification (mask source, loss, metrics, model config);
the epoch loop, validation and checkpoints are the shared engine's (tools/engine.py).
"""
import argparse
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.classification_model import ConvNeXtAttentionClassifier
from tools import distributed
from tools.acceleration import resolve_acceleration, resolve_device
from tools.checkpoint import RunState, start_from
from tools.config import provenance
from tools.data_loader import (
    ClassificationDataset,
    DatasetSplit,
    make_loader,
    prepare_cells,
)
from tools.engine import Task, fit, seed_everything
from tools.inference import torch_pipeline
from tools.layouts.record import CellRecord
from tools.masks import (
    MaskProvider,
    PredictedMaskFiles,
    export_masks,
    ground_truth_masks,
)
from tools.measurement_model import fit_measurement_model
from tools.metrics import classification_metrics, default_class_order
from tools.morphometry import FEATURE_NAMES
from tools.optim import adamw, warmup_cosine
from tools.pretrained import build_with_pretrained
from tools.run_dir import RunPaths
from tools.splits import manifest_sha1
from utils.errors import UserError

ORDINAL_SHARPNESS = 2.0  # --ordinal-labels: a neighbouring grade gets e^-2 of the true grade's weight


class ClassificationBatchMeter:
    """Collects softmax probabilities and labels; reports accuracy, balanced accuracy and macro-F1."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.probs: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        self.labels.append(labels.cpu().numpy())

    def merge(self, other: "ClassificationBatchMeter") -> None:
        self.probs += other.probs
        self.labels += other.labels

    def compute(self) -> Dict[str, float]:
        report = classification_metrics(np.concatenate(self.labels), np.concatenate(self.probs), self.class_names)
        return {name: report[name] for name in ("accuracy", "balanced_accuracy", "macro_f1")}


def inverse_frequency_weights(records: Sequence[CellRecord], class_names: Sequence[str]) -> torch.Tensor:
    """Weights proportional to 1 / class count, scaled to average 1 over the classes."""
    counts = Counter(r.label for r in records)
    weights = torch.tensor([1.0 / max(counts[name], 1) for name in class_names])
    return weights * len(class_names) / weights.sum()


def ordinal_targets(class_names: Sequence[str], class_order: Sequence[str], sharpness: float = ORDINAL_SHARPNESS) -> torch.Tensor:
    """[K, K] distance-aware soft labels (SORD, Diaz and Marathe, CVPR 2019): row y is the target of a cell of
    class y, softmax(-sharpness * |grade - grade of y|), so a neighbouring grade costs less than a distant one."""
    grades = torch.tensor([float(class_order.index(name)) for name in class_names])
    return torch.softmax(-sharpness * (grades[None, :] - grades[:, None]).abs(), dim=1)


def classification_task(class_names: Sequence[str], class_weights: Optional[torch.Tensor], label_smoothing: float,
                        soft_targets: Optional[torch.Tensor] = None) -> Task:
    """Cross-entropy against the labels (smoothed), or against soft_targets[label] ([K, K]) when given; either way
    weighted by class_weights[label] when given."""
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = class_weights.to(logits.device) if class_weights is not None else None
        if soft_targets is None:
            return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
        per_cell = -(soft_targets.to(logits.device)[labels] * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        cell_weights = weight[labels] if weight is not None else torch.ones_like(per_cell)
        return (per_cell * cell_weights).sum() / cell_weights.sum()  # as F.cross_entropy weighs

    return Task("classification", loss, lambda: ClassificationBatchMeter(class_names), monitor="macro_f1")


def ordinal_soft_targets(args: argparse.Namespace, class_names: Sequence[str]) -> Optional[torch.Tensor]:
    if not args.ordinal_labels:
        return None
    order = default_class_order(class_names)
    if order is None:
        raise UserError(f"{args.data_root}: --ordinal-labels needs classes with a known grade order (Herlev's); "
                        f"{', '.join(class_names)} are not grades: drop the flag")
    return ordinal_targets(class_names, order)


def mask_provider(args: argparse.Namespace, paths: RunPaths, records: Sequence[CellRecord], device) -> MaskProvider:
    """Ground-truth masks, or the masks stage 1 predicts (exporting any that are missing first)."""
    if args.mask_source == "gt":
        if not records[0].has_masks:
            raise UserError(f"{args.data_root}: --mask-source gt needs a layout with masks; use --mask-source predicted")
        return ground_truth_masks
    masks_dir = args.masks_dir or paths.masks
    missing = PredictedMaskFiles(masks_dir).missing(records)
    if missing:
        seg_checkpoint = args.seg_checkpoint or paths.checkpoint("segmentation")
        print(f"{len(missing)} cells have no predicted masks in {masks_dir}; predicting them with {seg_checkpoint}")
        if distributed.is_main_process():
            pipeline, _, _ = torch_pipeline(seg_checkpoint, None, device)
            export_masks(pipeline, missing, masks_dir)
        distributed.barrier()
    return PredictedMaskFiles(masks_dir)


def balanced_sample_weights(records: Sequence[CellRecord]) -> np.ndarray:
    """Per-cell sampling weights 1 / (its class's count): every class is drawn equally often."""
    counts = Counter(r.label for r in records)
    return np.array([1.0 / counts[r.label] for r in records])


def model_config(args: argparse.Namespace, class_names: Sequence[str]) -> Dict:
    return dict(num_classes=len(class_names), in_chans=5, backbone=args.backbone,
                num_measurements=len(FEATURE_NAMES) if args.measurements else 0)


def check_trainable(split: DatasetSplit, data_root) -> None:
    """A classifier needs two classes and two training cells (BatchNorm cannot normalise one)."""
    if len(split.class_names) < 2:
        raise UserError(f"{data_root}: only one class ({split.class_names[0]}) found; a classifier needs at least two "
                        f"class folders")
    if len(split.by_split["train"]) < 2:
        raise UserError(f"{split.manifest_path}: the train split holds {len(split.by_split['train'])} cell; add data")


def train(args: argparse.Namespace, split: DatasetSplit, paths: RunPaths, resume: Optional[Path] = None) -> Dict:
    """Train stage 2 on the split's train cells, validating on its val cells. Returns the best validation metrics."""
    seed_everything(args.seed, args.deterministic)
    device = resolve_device(args.device)
    check_trainable(split, args.data_root)

    # 1. Class names and where the masks come from
    class_names = split.class_names
    provider = mask_provider(args, paths, split.by_split["train"] + split.by_split["val"], device)

    # 2. Decode and letterbox once (RGB + masks), then wrap in augmenting datasets
    train_cells = prepare_cells(split.by_split["train"], args.img_size, provider, "loading train cells", args.cache_dir, True)
    val_cells = prepare_cells(split.by_split["val"], args.img_size, provider, "loading val cells", args.cache_dir, True)
    train_measurements = train_cells.measurements
    if not args.measurements:  # the measurements then serve the measurement model only, not the CNN
        train_cells.measurements, val_cells.measurements = None, None
    sample_weights = balanced_sample_weights(split.by_split["train"]) if args.balanced_sampling else None
    train_loader = make_loader(ClassificationDataset(train_cells, class_names, train=True), args.batch_size, True,
                               args.workers, device, args.seed, drop_last=len(train_cells.images) > args.batch_size,
                               sample_weights=sample_weights)
    val_loader = make_loader(ClassificationDataset(val_cells, class_names, train=False), args.batch_size, False,
                             args.workers, device, args.seed)

    # 3. Model, loss, optimiser, schedule
    config = model_config(args, class_names)
    model, origin = build_with_pretrained(ConvNeXtAttentionClassifier, config, args.weights, args.pretrained)
    if model.measurements is not None:  # standardised with the training cells' statistics, kept in the checkpoint
        model.measurements.fit_statistics(torch.from_numpy(train_cells.measurements))
    if args.init_from is not None:  # after the statistics: a fine-tuned model keeps its own
        origin = start_from(model, args.init_from, class_names, config)
    model.to(device)
    weights = inverse_frequency_weights(split.by_split["train"], class_names) if args.class_weights else None
    task = classification_task(class_names, weights, args.label_smoothing, ordinal_soft_targets(args, class_names))
    accel = resolve_acceleration(args, device)
    optimizer = adamw(model, args.lr, args.weight_decay, accel.fused_adamw)
    scheduler = warmup_cosine(optimizer, args.epochs * len(train_loader), int(args.warmup_epochs * len(train_loader)))
    print(f"classification: {args.backbone} ({origin}), {len(class_names)} classes, {len(train_cells.images)} train / "
          f"{len(val_cells.images)} val cells, {args.mask_source} masks, {args.img_size}px, {args.epochs} epochs on {device}")

    # 4. The measurement model, whose probabilities the CNN's are averaged with (tools/measurement_model.py)
    extra = {}
    if args.measurement_model:
        labels = [class_names.index(r.label) for r in split.by_split["train"]]
        extra["measurement_model"] = fit_measurement_model(train_measurements, labels, len(class_names))

    # 5. Train
    settings = provenance(args, manifest_sha1(split.manifest_path), {"mask_source": args.mask_source})
    run = RunState("classification", vars(args), config, class_names, settings, extra)
    return fit(model, task, train_loader, val_loader, optimizer, scheduler, device, args.epochs, run,
               paths.checkpoints, paths.logs("classification"), resume, accel, args.ema_decay)
