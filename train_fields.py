"""Stage 1 on whole fields of view (run it through main_segment.py with a field layout: isbi2014, sipakmed-fields).

Two models, both the seed's dual-head attention U-Net, trained one after the other by the shared engine:
1. the field model, on tiles: head `cyt` = any cell (foreground), head `nuc` = nuclei. At inference it is
   tiled over the field and its nuclei, split into instances, seed the cells (tools/fields/segment.py).
2. the instance model, with a 4th input channel: a window around one nucleus with that nucleus marked;
   head `cyt` = that nucleus's whole cell, head `nuc` = that nucleus. Each cell is predicted on its own, so
   cells that overlap keep their whole outlines and every nucleus is linked to its cell.
Writes checkpoints/fields_{best,last}.pth and instances_{best,last}.pth (fields_best.pth is the field model's last
epoch, FIELD_TASK); their args hold field_scale (field pixels -> model pixels), nucleus_px (the median nucleus's
diameter at the model scale), tile_size and cell_window (the window side at the model scale).
"""
import argparse
from typing import Dict, List

from model.segmentation_model import DualHeadAttConvNeXtUNet
from tools.acceleration import resolve_acceleration, resolve_device
from tools.checkpoint import RunState
from tools.config import provenance
from tools.data_loader import DatasetSplit, make_loader
from tools.engine import Task, fit, seed_everything
from tools.fields.data import (
    NUCLEUS_TARGET_PX,
    CellWindows,
    FieldTiles,
    PreparedField,
    cell_window,
    field_scale,
    median_nucleus_diameter,
    prepare_fields,
)
from tools.optim import adamw, warmup_cosine
from tools.pretrained import build_with_pretrained
from tools.run_dir import RunPaths
from tools.splits import manifest_sha1
from train_segment import SegmentationBatchMeter, segmentation_loss
from utils.errors import UserError

# The field model keeps its last epoch (the cosine schedule has ended): its validation tiles are mostly synthetic, and
# the epoch best on them found the EDF nuclei worse (7 field models x 2 EDF splits: of the 14 test fields' nucleus F1,
# 8 rose at the last epoch, 4 stayed, 2 fell; docs/experiments-fields.md).
FIELD_TASK = Task("fields", segmentation_loss, SegmentationBatchMeter, monitor="dice_mean", keep_final=True)
INSTANCE_TASK = Task("instances", segmentation_loss, SegmentationBatchMeter, monitor="dice_mean")


def fit_model(args, task: Task, train_set, val_set, epochs: int, in_chans: int, paths: RunPaths, provenance_: Dict) -> Dict:
    """Train one dual-head U-Net on a dataset pair with the shared engine; returns the kept model's val metrics."""
    device = resolve_device(args.device)
    train_loader = make_loader(train_set, args.batch_size, True, args.workers, device, args.seed,
                               drop_last=len(train_set) > args.batch_size)
    val_loader = make_loader(val_set, args.batch_size, False, args.workers, device, args.seed)
    config = dict(backbone=args.backbone, decoder_channels=list(args.decoder_channels), in_chans=in_chans)
    model, origin = build_with_pretrained(DualHeadAttConvNeXtUNet, config, args.weights, args.pretrained)
    model.to(device)
    accel = resolve_acceleration(args, device)
    optimizer = adamw(model, args.lr, args.weight_decay, accel.fused_adamw)
    scheduler = warmup_cosine(optimizer, epochs * len(train_loader), int(args.warmup_epochs * len(train_loader)))
    print(f"{task.name}: {args.backbone} ({origin}), {len(train_set)} train / {len(val_set)} val items per epoch, "
          f"{epochs} epochs on {device}")
    run = RunState(task.name, vars(args), config, provenance=provenance_)
    last = paths.checkpoint(task.name, "last")
    resume = last if args.resume is not None and last.exists() else None
    return fit(model, task, train_loader, val_loader, optimizer, scheduler, device, epochs, run, paths.checkpoints,
               paths.logs(task.name), resume, accel, args.ema_decay)


def check_trainable(fields: List[PreparedField], split_name: str) -> None:
    if not any(cell is not None for prepared in fields for cell in prepared.cell_nucleus):
        raise UserError(f"the {split_name} split holds no outlined cell with a nucleus; fields need per-cell masks "
                        f"(ISBI _cellKK.png, SIPaKMeD _cytMM.dat) and nuclei to train the instance model")


def train(args: argparse.Namespace, split: DatasetSplit, paths: RunPaths) -> Dict[str, Dict]:
    """Train the field model, then the instance model, on the split's train fields; returns their val metrics."""
    seed_everything(args.seed, args.deterministic)

    # 1. Fields at the model's scale (nuclei about NUCLEUS_TARGET_PX across, or smaller if they are so natively)
    nucleus_diameter = median_nucleus_diameter(split.by_split["train"])
    args.field_scale = field_scale(nucleus_diameter)
    args.nucleus_px = round((nucleus_diameter or NUCLEUS_TARGET_PX) * args.field_scale, 1)
    train_fields = prepare_fields(split.by_split["train"], args.field_scale, "loading train fields")
    val_fields = prepare_fields(split.by_split["val"], args.field_scale, "loading val fields")
    check_trainable(train_fields, "train")
    args.tile_size = args.img_size
    args.cell_window = cell_window(train_fields)
    settings = provenance(args, manifest_sha1(split.manifest_path), {"field_scale": args.field_scale})
    print(f"fields: scale {args.field_scale}, nuclei {args.nucleus_px}px, tiles {args.tile_size}px, "
          f"cell windows {args.cell_window}px -> {args.instance_size}px")

    # 2. The field model on tiles (foreground + nuclei)
    field_best = fit_model(args, FIELD_TASK, FieldTiles(train_fields, args.tile_size, train=True),
                           FieldTiles(val_fields, args.tile_size, train=False), args.epochs, 3, paths, settings)

    # 3. The instance model on windows around each nucleus
    max_cells = args.instance_cells
    instance_best = fit_model(args, INSTANCE_TASK,
                              CellWindows(train_fields, args.cell_window, args.instance_size, train=True, max_cells=max_cells),
                              CellWindows(val_fields, args.cell_window, args.instance_size, train=False, max_cells=max_cells),
                              args.instance_epochs, 4, paths, settings)
    return {"fields": field_best, "instances": instance_best}
