"""Export both trained models to ONNX with a dynamic batch axis, then check them against PyTorch with ONNX Runtime.

    python export_onnx.py --run-dir runs/demo       # -> runs/demo/outputs/onnx/{segmentation,classification}.onnx

The graphs, their inputs, outputs and metadata are described in tools/onnx_export.py. predict.py and
evaluate.py export into the same folder by themselves when the files are missing or older than the
checkpoints, so this script is for using the files elsewhere.
"""
import argparse
import sys
from pathlib import Path

from tools.config import (
    HelpFormatter,
    checkpoint_parser,
    positive_int,
    resolve_checkpoints,
)
from tools.inputs import mark_output_dir
from tools.onnx_export import CHECK_BATCH_SIZES, OPSET, TOLERANCE, export_run
from tools.run_dir import RunPaths
from utils.errors import exit_on_user_error


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="example: python export_onnx.py --run-dir runs/demo\n"
                                                 "Export the segmentation and classification checkpoints to ONNX.",
                                     parents=[checkpoint_parser()], formatter_class=HelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for segmentation.onnx and classification.onnx (default: RUN_DIR/outputs/onnx)")
    parser.add_argument("--opset", type=positive_int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help=f"run each file in onnxruntime on random batches of {' and '.join(map(str, CHECK_BATCH_SIZES))} "
                             f"and compare with PyTorch (tolerance {TOLERANCE:g})")
    args = parser.parse_args(argv)
    resolve_checkpoints(args)
    args.output_dir = args.output_dir or RunPaths(args.run_dir).onnx
    return args


@exit_on_user_error
def main(argv=None) -> int:
    args = get_args(argv)
    mark_output_dir(args.output_dir)
    written = export_run(args.seg_checkpoint, args.cls_checkpoint, args.output_dir, args.opset, args.check)
    for path, difference in written.values():
        print(f"wrote {path}" + (f" (onnxruntime vs PyTorch: max abs difference {difference:.2e})" if args.check else ""))
    worst = max(difference for _, difference in written.values())
    if args.check and worst > TOLERANCE:
        print(f"error: onnxruntime differs from PyTorch by {worst:.2e} > {TOLERANCE:g}; do not use these files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
