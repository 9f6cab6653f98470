"""Stage 2 entry point: train the classifier on RGB + cytoplasm mask + nucleus mask.

    python main_classify.py --data-root data/demo --run-dir runs/demo --preset cpu

Masks come from stage 1 by default (outputs/masks/, predicted first where missing, using
checkpoints/segmentation_best.pth); --mask-source gt trains on the ground-truth masks instead. Layouts
without masks (labels, cric) take theirs from another run's stage 1:

    python main_classify.py --data-root CRIC --layout cric --run-dir runs/cric_cells \
        --seg-checkpoint runs/herlev/checkpoints/segmentation_best.pth --preset cpu

Class imbalance (CRIC: 77 % NILM) is met by weighting the loss by inverse class frequency (--class-weights, on)
or, instead, by --balanced-sampling.
Writes <run-dir>/checkpoints/classification_{best,last}.pth and logs/classification/; after training, a
temperature fitted on the val split (tools/calibration.py) is stored in both checkpoints.
"""
import argparse
import time
from pathlib import Path

import train_classify
from tools import distributed
from tools.acceleration import resolve_device
from tools.calibration import calibrate_checkpoints, describe_fit
from tools.config import (
    HelpFormatter,
    check_named_file,
    name_flag,
    parse_stage_args,
    stage_default,
    training_parser,
    unit_fraction,
)
from tools.data_loader import open_dataset, prepare_cells
from tools.run_dir import open_run
from utils.errors import exit_on_user_error


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python main_classify.py --data-root data/demo --run-dir runs/demo --preset cpu\n"
                    "Train the 5-channel ConvNeXt cell classifier on RGB + predicted (or ground-truth) masks.",
        parents=[training_parser("classification")], formatter_class=HelpFormatter)
    group = parser.add_argument_group("classification")
    group.add_argument("--mask-source", default="predicted", **name_flag(["predicted", "gt"]),
                       help="masks given to the classifier: stage 1's predictions, or the ground truth")
    group.add_argument("--seg-checkpoint", type=Path, default=None,
                       help="stage 1 checkpoint for missing masks (default: <run-dir>/checkpoints/segmentation_best.pth)")
    group.add_argument("--init-from", type=Path, default=None,
                       help="fine-tune: start from this classification checkpoint's weights instead of ImageNet's (another "
                            "run's classifier, e.g. to train it on a lab's reviewed cells: --layout review); its classes "
                            "and architecture must be this run's")
    group.add_argument("--masks-dir", type=Path, default=None,
                       help="predicted masks to train on (default: <run-dir>/outputs/masks, where main_segment.py writes them)")
    group.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=True,
                       help="weight the loss by the inverse class frequency of the train cells, so that rare classes "
                            "count as much as common ones (CRIC's NILM cells outnumber its SCC cells about 64 to 1); "
                            "the best epoch is chosen by val macro-F1, which weighs every class alike")
    group.add_argument("--balanced-sampling", action=argparse.BooleanOptionalAction,
                       help=f"draw training cells so that every class is seen equally often (with replacement; "
                            f"usually with --no-class-weights, as both together over-correct) "
                            f"{stage_default('classification', 'balanced_sampling')}")
    group.add_argument("--label-smoothing", type=unit_fraction, default=0.1, help="cross-entropy label smoothing")
    group.add_argument("--ordinal-labels", action="store_true",
                       help="train on distance-aware soft labels for graded classes (Herlev's): the target spreads over the "
                            "neighbouring grades, exp(-2 x grade distance), instead of label smoothing")
    group.add_argument("--measurement-model", action=argparse.BooleanOptionalAction,
                       help="average the CNN's probabilities with those of a logistic regression on the cell's "
                            f"measurements (tools/measurement_model.py) {stage_default('classification', 'measurement_model')}")
    group.add_argument("--measurements", action=argparse.BooleanOptionalAction,
                       help="give the classifier head the cell's measurements (tools/morphometry.py: size, shape, N/C ratio, "
                            f"chromatin texture, ...) beside the image {stage_default('classification', 'measurements')}")
    args = parse_stage_args(parser, "classification", argv)
    if args.batch_size < 2:
        parser.error("--batch-size 1: the classifier's BatchNorm layers need at least 2 cells per training batch")
    if args.seg_checkpoint is not None:  # read only when masks are missing, after the cells are decoded: check it now
        check_named_file(args.seg_checkpoint, "checkpoint", "pass the segmentation checkpoint, or leave the flag out")
    return args


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    with open_run(args.run_dir, args.data_root, args.run_dir_flag) as paths:
        device = distributed.setup(resolve_device(args.device))
        args.device = str(device)  # under torchrun: this process's GPU
        started = time.time()

        # 1. Cells and split, 2. train (tools/engine.fit keeps the best checkpoint by val macro-F1)
        split = open_dataset(args, paths)
        best = train_classify.train(args, split, paths, args.resume)
        print(f"classification trained in {time.time() - started:.0f}s; best val macro-F1 "
              f"{best.get('macro_f1', float('nan')):.4f} accuracy {best.get('accuracy', float('nan')):.4f} "
              f"(epoch {best.get('epoch')})")

        # 3. Calibrate the probabilities on the val split, with the masks the classifier trained on
        if distributed.is_main_process():
            provider = train_classify.mask_provider(args, paths, split.by_split["val"], device)
            val_cells = prepare_cells(split.by_split["val"], args.img_size, provider, "loading val cells", args.cache_dir,
                                      args.measurements)
            print(describe_fit(calibrate_checkpoints(paths, val_cells, device, args.batch_size)))
        distributed.teardown()


if __name__ == "__main__":
    main()
