"""Stage 2 entry point: train the classifier on RGB + cytoplasm mask + nucleus mask.

    python main_classify.py --data-root data/demo --preset cpu

Masks come from stage 1 by default (outputs/masks/, predicted first where missing, using
checkpoints/segmentation_best.pth); --mask-source gt trains on the ground-truth masks instead.
Writes <output-dir>/checkpoints/classification_{best,last}.pth and logs/classification/; after training, a
temperature fitted on the val split (tools/calibration.py) is stored in both checkpoints.
"""
import argparse
import time
from pathlib import Path

import train_classify
from tools import distributed
from tools.calibration import calibrate_checkpoints, describe_fit
from tools.config import HelpFormatter, check_output_dir, resolve_args, stage_default, training_parser
from tools.errors import exit_on_user_error


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the 5-channel ConvNeXt cell classifier on RGB + predicted (or ground-truth) masks.",
        parents=[training_parser("classification")], formatter_class=HelpFormatter)
    group = parser.add_argument_group("classification")
    group.add_argument("--mask-source", default="predicted", choices=["predicted", "gt"],
                       help="masks given to the classifier: stage 1's predictions, or the ground truth")
    group.add_argument("--seg-checkpoint", type=Path, default=None,
                       help="stage 1 checkpoint for missing masks (default: <output-dir>/checkpoints/segmentation_best.pth)")
    group.add_argument("--masks-dir", type=Path, default=None,
                       help="predicted masks to train on (default: <output-dir>/outputs/masks, where main_segment.py writes them)")
    group.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=True,
                       help="weight the loss by inverse class frequency")
    group.add_argument("--balanced-sampling", action=argparse.BooleanOptionalAction, default=None,
                       help=f"draw training cells so that every class is seen equally often (with replacement; "
                            f"usually with --no-class-weights, as both together over-correct) "
                            f"{stage_default('classification', 'balanced_sampling')}")
    group.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    return resolve_args(parser, "classification", argv)


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    check_output_dir(args.output_dir)
    args.device = str(distributed.setup(args.device))  # under torchrun: this process's GPU
    started = time.time()
    best = train_classify.train(args)
    print(f"classification trained in {time.time() - started:.0f}s; best val macro-F1 {best.get('macro_f1', float('nan')):.4f} "
          f"accuracy {best.get('accuracy', float('nan')):.4f} (epoch {best.get('epoch')})")
    if distributed.is_main_process():
        print(describe_fit(calibrate_checkpoints(args, train_classify.mask_provider)))
    distributed.teardown()


if __name__ == "__main__":
    main()
