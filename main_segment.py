"""Stage 1 entry point: train the dual-head segmentation U-Net, then export masks for the whole data root.

    python main_segment.py --data-root data/demo --preset cpu

Writes <output-dir>/checkpoints/segmentation_{best,last}.pth, logs/segmentation/ (TensorBoard,
log.txt, args.json) and outputs/masks/<cell id>_{cyt,nuc}.png for every cell.
"""
import argparse
import time
from pathlib import Path

import train_segment
from tools import distributed
from tools.config import HelpFormatter, check_output_dir, resolve_args, stage_default, training_parser
from tools.errors import exit_on_user_error
from tools.inference import export_masks, load_model
from tools.splits import group_folds, open_split


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the dual-head (cytoplasm + nucleus) attention U-Net, then export masks for every cell.",
        parents=[training_parser("segmentation")], formatter_class=HelpFormatter)
    group = parser.add_argument_group("segmentation")
    group.add_argument("--decoder-channels", type=int, nargs=3, default=None, metavar=("D16", "D8", "D4"),
                       help=f"decoder widths at strides 16/8/4 {stage_default('segmentation', 'decoder_channels')}")
    group.add_argument("--skip-export", action="store_true", help="train only; do not write outputs/masks/")
    group.add_argument("--oof-folds", type=int, default=None,
                       help="masks of TRAIN cells come from K extra models that did not see them (out-of-fold), so the "
                            "classifier never trains on masks better than it gets at test time; 0 or 1: off "
                            f"{stage_default('segmentation', 'oof_folds')}")
    return resolve_args(parser, "segmentation", argv)


def export_out_of_fold_masks(args, train_records, val_records, masks_dir: Path, device) -> None:
    """Replace the train cells' masks with ones from fold models that never trained on them."""
    for fold, held_out in enumerate(group_folds(train_records, args.oof_folds, args.seed)):
        fold_dir = args.output_dir / "checkpoints" / "oof" / f"fold{fold}"
        print(f"out-of-fold masks: fold {fold + 1}/{args.oof_folds}, {len(held_out)} held-out train cells")
        held_out_ids = {r.sample_id for r in held_out}
        fold_train = [r for r in train_records if r.sample_id not in held_out_ids]
        train_segment.train(args, fold_train, val_records, fold_dir, args.output_dir / "logs" / "segmentation_oof" / f"fold{fold}")
        if distributed.is_main_process():
            model, _ = load_model(fold_dir / "segmentation_best.pth", "segmentation", device)
            export_masks(model, held_out, masks_dir, args.img_size, device, args.batch_size)


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    check_output_dir(args.output_dir)
    device = distributed.setup(args.device)
    args.device = str(device)  # under torchrun: this process's GPU
    started = time.time()

    # 1. Cells and split
    split = open_split(args)
    train_segment.check_has_masks(split.records, args.data_root)

    # 2. Train on the train split, keep the best model by validation Dice
    best = train_segment.train(args, split.by_split["train"], split.by_split["val"], args.output_dir / "checkpoints",
                               args.output_dir / "logs" / "segmentation", args.resume)
    print(f"segmentation trained in {time.time() - started:.0f}s; best val dice cyt {best.get('dice_cyt', float('nan')):.4f} "
          f"nuc {best.get('dice_nuc', float('nan')):.4f} (epoch {best.get('epoch')})")
    if not args.skip_export:
        export_all_masks(args, split, device, started)
    distributed.teardown()


def export_all_masks(args, split, device, started: float) -> None:
    """Masks for every cell of the data root, the train cells' out-of-fold when asked (written by rank 0)."""
    masks_dir = args.output_dir / "outputs" / "masks"
    if distributed.is_main_process():
        model, _ = load_model(args.output_dir / "checkpoints" / "segmentation_best.pth", "segmentation", device)
        export_masks(model, split.records, masks_dir, args.img_size, device, args.batch_size)
    if args.oof_folds and args.oof_folds > 1:
        export_out_of_fold_masks(args, split.by_split["train"], split.by_split["val"], masks_dir, device)
    print(f"wrote {len(split.records)} cytoplasm + nucleus mask pairs to {masks_dir} ({time.time() - started:.0f}s in all)")


if __name__ == "__main__":
    main()
