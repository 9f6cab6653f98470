"""Stage 1 entry point: train the dual-head segmentation U-Net, then export masks for the whole data root.

    python main_segment.py --data-root data/demo --preset cpu

Writes <output-dir>/checkpoints/segmentation_{best,last}.pth, logs/segmentation/ (TensorBoard,
log.txt, args.json) and outputs/masks/<cell id>_{cyt,nuc}.png for every cell.
"""
import argparse
import time

import train_segment
from tools.config import HelpFormatter, check_output_dir, resolve_args, stage_default, training_parser
from tools.engine import resolve_device
from tools.errors import exit_on_user_error
from tools.inference import export_masks, load_model
from tools.splits import open_split


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the dual-head (cytoplasm + nucleus) attention U-Net, then export masks for every cell.",
        parents=[training_parser("segmentation")], formatter_class=HelpFormatter)
    group = parser.add_argument_group("segmentation")
    group.add_argument("--decoder-channels", type=int, nargs=3, default=None, metavar=("D16", "D8", "D4"),
                       help=f"decoder widths at strides 16/8/4 {stage_default('segmentation', 'decoder_channels')}")
    group.add_argument("--skip-export", action="store_true", help="train only; do not write outputs/masks/")
    return resolve_args(parser, "segmentation", argv)


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    check_output_dir(args.output_dir)
    started = time.time()
    best = train_segment.train(args)
    print(f"segmentation trained in {time.time() - started:.0f}s; best val dice cyt {best.get('dice_cyt', float('nan')):.4f} "
          f"nuc {best.get('dice_nuc', float('nan')):.4f} (epoch {best.get('epoch')})")
    if args.skip_export:
        return
    device = resolve_device(args.device)
    model, _ = load_model(args.output_dir / "checkpoints" / "segmentation_best.pth", "segmentation", device)
    records = open_split(args).records
    masks_dir = args.output_dir / "outputs" / "masks"
    count = export_masks(model, records, masks_dir, args.img_size, device, args.batch_size)
    print(f"wrote {count} cytoplasm + nucleus mask pairs to {masks_dir}")


if __name__ == "__main__":
    main()
