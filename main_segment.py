"""Stage 1 entry point: train the dual-head segmentation U-Net, then export masks for the whole data root.

    python main_segment.py --data-root data/demo --run-dir runs/demo --preset cpu

Writes <run-dir>/checkpoints/segmentation_{best,last}.pth, logs/segmentation/ (TensorBoard, log.txt,
args.json) and outputs/masks/<cell id>_{cyt,nuc}.png for every cell (with masks.json: the image each
was predicted from).
"""
import argparse
import time

import train_fields
import train_segment
from tools import distributed
from tools.acceleration import resolve_device
from tools.config import (
    HelpFormatter,
    img_size,
    non_negative_int,
    parse_stage_args,
    positive_int,
    stage_default,
    training_parser,
)
from tools.data_loader import DatasetSplit, open_dataset
from tools.fields.data import is_field_layout, open_fields
from tools.inference import torch_pipeline
from tools.masks import export_masks
from tools.run_dir import RunPaths, open_run
from tools.splits import group_folds
from utils.errors import exit_on_user_error, note_kept


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python main_segment.py --data-root data/demo --run-dir runs/demo --preset cpu\n"
                    "Train the dual-head (cytoplasm + nucleus) attention U-Net, then export masks for every cell.",
        parents=[training_parser("segmentation")], formatter_class=HelpFormatter)
    group = parser.add_argument_group("segmentation")
    group.add_argument("--decoder-channels", type=int, nargs=3, metavar=("D16", "D8", "D4"),
                       help=f"decoder widths at strides 16/8/4 {stage_default('segmentation', 'decoder_channels')}")
    group.add_argument("--skip-export", action="store_true", help="train only; do not write outputs/masks/")
    group.add_argument("--oof-folds", type=non_negative_int,
                       help="masks of TRAIN cells come from K extra models that did not see them (out-of-fold), so the "
                            "classifier never trains on masks better than it gets at test time; 0 or 1: off "
                            f"{stage_default('segmentation', 'oof_folds')}")
    fields = parser.add_argument_group(
        "fields of view (--layout isbi2014, sipakmed-fields or cric-fields; the training flags above then default to "
        f"backbone {stage_default('fields', 'backbone')}, tile side --img-size {stage_default('fields', 'img_size')}, "
        f"--epochs {stage_default('fields', 'epochs')} for the field model)")
    fields.add_argument("--instance-size", type=img_size,
                        help=f"input side of the instance model (one cell around its nucleus) "
                             f"{stage_default('fields', 'instance_size')}")
    fields.add_argument("--instance-epochs", type=positive_int,
                        help=f"epochs of the instance model {stage_default('fields', 'instance_epochs')}")
    fields.add_argument("--instance-cells", type=non_negative_int,
                        help="train the instance model on at most this many cells, one fixed random draw, and validate "
                             "on as many (CRIC's 3,000 point-marked cells cost an hour an epoch on 2 cores); 0: every "
                             f"cell {stage_default('fields', 'instance_cells')}")
    known, _ = parser.parse_known_args(argv)
    args = parse_stage_args(parser, "fields" if is_field_layout(known.layout, known.data_root) else "segmentation", argv)
    if min(args.decoder_channels) < 4:
        parser.error(f"--decoder-channels {' '.join(map(str, args.decoder_channels))}: each width must be at least 4")
    return args


def export_out_of_fold_masks(args, paths: RunPaths, split: DatasetSplit, device) -> None:
    """Replace the train cells' masks with ones from fold models that never trained on them."""
    train_records = split.by_split["train"]
    for fold, held_out in enumerate(group_folds(train_records, args.oof_folds, args.seed)):
        print(f"out-of-fold masks: fold {fold + 1}/{args.oof_folds}, {len(held_out)} held-out train cells")
        held_out_ids = {r.sample_id for r in held_out}
        fold_train = [r for r in train_records if r.sample_id not in held_out_ids]
        fold_split = DatasetSplit(fold_train, split.layout, {**split.by_split, "train": fold_train}, split.manifest_path)
        train_segment.train(args, fold_split, paths.oof_checkpoints(fold), paths.oof_logs(fold))
        if distributed.is_main_process():
            pipeline, _, _ = torch_pipeline(paths.oof_checkpoints(fold) / "segmentation_best.pth", None, device)
            export_masks(pipeline, held_out, paths.masks, args.batch_size)


def export_all_masks(args, paths: RunPaths, split: DatasetSplit, device, started: float) -> None:
    """Masks for every cell of the data root, the train cells' out-of-fold when asked (written by rank 0)."""
    if distributed.is_main_process():
        pipeline, _, _ = torch_pipeline(paths.checkpoint("segmentation"), None, device)
        export_masks(pipeline, split.records, paths.masks, args.batch_size)
    if args.oof_folds > 1:
        export_out_of_fold_masks(args, paths, split, device)
    print(f"wrote {len(split.records)} cytoplasm + nucleus mask pairs to {paths.masks} ({time.time() - started:.0f}s in all)")


def train_on_fields(args, paths: RunPaths, started: float) -> None:
    split = open_fields(args, paths)
    kept = train_fields.train(args, split, paths)
    print(f"fields trained in {time.time() - started:.0f}s; val dice of the kept models: field model nuclei "
          f"{kept['fields'].get('dice_nuc', float('nan')):.4f} (epoch {kept['fields'].get('epoch')}), instance model cells "
          f"{kept['instances'].get('dice_cyt', float('nan')):.4f} (epoch {kept['instances'].get('epoch')})")


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    with open_run(args.run_dir, args.data_root, args.run_dir_flag) as paths:
        if is_field_layout(args.layout, args.data_root):
            args.device = str(resolve_device(args.device))
            return train_on_fields(args, paths, time.time())
        device = distributed.setup(resolve_device(args.device))
        args.device = str(device)  # under torchrun: this process's GPU
        started = time.time()

        # 1. Cells and split
        split = open_dataset(args, paths)
        train_segment.check_has_masks(split, args.data_root)

        # 2. Train on the train split, keep the best model by validation Dice
        best = train_segment.train(args, split, paths.checkpoints, paths.logs("segmentation"), args.resume)
        print(f"segmentation trained in {time.time() - started:.0f}s; best val dice cyt {best.get('dice_cyt', float('nan')):.4f} "
              f"nuc {best.get('dice_nuc', float('nan')):.4f} (epoch {best.get('epoch')})")

        # 3. Masks for every cell, for the classifier
        if not args.skip_export:
            note_kept(f"the segmentation checkpoints in {paths.checkpoints} are kept; masks in {paths.masks} may be "
                      f"incomplete: main_classify.py predicts any that are missing")
            export_all_masks(args, paths, split, device, started)
        distributed.teardown()


if __name__ == "__main__":
    main()
