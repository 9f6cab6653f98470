"""Run both trained stages on new cell images: masks, class, class probabilities and morphometrics.

    python predict.py cells/ --run-dir runs/demo                    # -> runs/demo/outputs/predictions/
    python predict.py 'slides/**/*.tif' cell.png --explain --output-dir preds

Per image, at the image's own size: <name>_cyt.png (whole cell) and <name>_nuc.png (nucleus) masks (0/255),
<name>_overlay.png (outlines: cell green, nucleus red) and, with --explain, <name>_gradcam.png. <name> is
the image's path below the common folder of all images, without extension, so that equal file names in
different folders do not collide. For the run: predictions.csv and predictions.json.
An image that cannot be read is named on stderr and skipped; the exit code is then 1 (0 when every image
was predicted, 2 for a usage error or a bad checkpoint).
"""
import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import List, Sequence

from tools.config import (
    HelpFormatter,
    check_named_file,
    checked,
    checkpoint_parser,
    device_name,
    name_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_checkpoints,
    unit_fraction,
)
from tools.fields.predict import fields_only, predict_fields
from tools.fields.readers import SLIDE_EXTENSIONS
from tools.inputs import OUTPUT_MARKER, input_files, mark_output_dir, split_pattern
from tools.layouts.files import IMAGE_EXTENSIONS
from tools.layouts.paired import paired_mask_files
from tools.predict_cells import predict_cells
from tools.run_dir import RunLock, RunPaths
from utils.errors import UserError, exit_on_user_error

CELL_BATCH_SIZE, FIELD_BATCH_SIZE = 16, 4  # --batch-size's defaults (its help says why they differ)
block_side = checked(int, lambda v: v >= 256, "a whole number >= 256 (px)")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python predict.py cells/ --run-dir runs/demo\n"
                    "Segment and classify single-cell images with the trained checkpoints. Writes, per image, "
                    "<name>_cyt.png (whole cell) and <name>_nuc.png masks (0/255, the image's size), <name>_overlay.png "
                    "and with --explain <name>_gradcam.png (<name>: the image's path below the inputs' common folder, "
                    "without extension), and predictions.csv/.json for the run. Exit code 0: every "
                    "image predicted; 1: some image could not be read (named on stderr); 2: usage error or bad checkpoint.",
        parents=[checkpoint_parser()], formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or glob patterns, quoted ('cells/**/*.png'); "
                             f"folders and globs yield {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files, each once, leaving "
                             f"out hidden files, the masks of a paired layout (<n>N.png, <n>C.png beside <n>.bmp) and "
                             f"what this project wrote (folders holding {OUTPUT_MARKER}, earlier masks and overlays); "
                             f"with --fields also the slides {', '.join(e[1:] for e in SLIDE_EXTENSIONS)}")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the masks, overlays and tables (default: RUN_DIR/outputs/predictions; with --fields "
                             "RUN_DIR/outputs/fields)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per forward pass of each stage (default: 16 cells; --fields: 4 tiles or cell "
                             "windows: two blocks at once then peak near 0.7 GB where 16 took 1.4 GB, at the same "
                             "speed)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--explain", action="store_true",
                        help="also write <name>_gradcam.png: Grad-CAM of the predicted class on the classifier's last stage "
                             "(runs the models in PyTorch)")
    parser.add_argument("--backend", default="auto", **name_flag(["auto", "onnx", "torch"]),
                        help="onnx: ONNX Runtime on the CPU, exported once into RUN_DIR/outputs/onnx and reused; torch: "
                             "PyTorch; auto: PyTorch on a CUDA machine (or --device cuda) and for --explain, else ONNX "
                             "(cells and --fields alike)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="cells: batches predicted at once, each in its own thread (ONNX Runtime only; measured "
                             "1.26x the cells/s of one batch on 2 threads); --fields: blocks screened at once "
                             "(default: the cores this process may use)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime threads of each batch (default: the cores this process may use, shared "
                             "among --workers)")
    fields = parser.add_argument_group(
        "fields of view and whole slides (--fields): every INPUT is a whole field or slide (PNG, BMP, JPEG, TIFF, and "
        "every scanner format OpenSlide reads: .svs, .ndpi, .mrxs, .scn, DICOM, ...); per input <name>.geojson (QuPath "
        "cell objects), <name>_cells.csv, <name>_summary.json (counts, the call, the most suspicious cells) and "
        "<name>_report.html, and for images up to 25 megapixels <name>_cells.png, <name>_nuclei.png (uint16 instance "
        "labels) and <name>_overlay.png; for the run cells.csv and summary.json. A killed run continues from its last "
        "finished block when run again; an input already finished is not screened again")
    fields.add_argument("--fields", action="store_true",
                        help="find, separate and classify every cell of whole fields or slides (main_segment.py's field models)")
    fields.add_argument("--field-checkpoint", type=Path, default=None,
                        help="the field model (default: RUN_DIR/checkpoints/fields_best.pth)")
    fields.add_argument("--instance-checkpoint", type=Path, default=None,
                        help="the instance model (default: RUN_DIR/checkpoints/instances_best.pth)")
    fields.add_argument("--block-size", type=block_side, default=2048,
                        help="inputs are screened in blocks of this many px a side, at least 256 (memory follows it, "
                             "not the slide; smaller blocks repeat more of the halo around them)")
    fields.add_argument("--keep-edge-cells", action="store_true",
                        help="also keep the cells whose nucleus the image's border cuts (dropped by default: their "
                             "nuclear size and grade cannot be measured)")
    fields.add_argument("--mpp", type=positive_float, default=None,
                        help="microns per pixel of the inputs, instead of what their metadata say (slides are brought "
                             "to the training data's scale when both are known; unknown: read at their own pixel size)")
    fields.add_argument("--tissue-threshold", type=non_negative_float, default=None,
                        help="grey levels from the glass colour that count as cells on the low-resolution overview; "
                             "blocks and tiles without any are skipped; 0: screen everything (default: 10, or 6 times "
                             "the glass's noise when larger)")
    fields.add_argument("--labels", default="auto", choices=["auto", "tiff", "none"],
                        help="instance label images: auto: PNG (and an overlay) for inputs up to 25 megapixels, none "
                             "above; tiff: uint32 tiled TIFF <name>_cells.tif and <name>_nuclei.tif for any size")
    fields.add_argument("--force", action="store_true",
                        help="screen inputs again that an earlier run finished with the same models and settings "
                             "(without it they are skipped and only their call and report are made again)")
    fields.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                        help="the two field models on ONNX Runtime: fp32, or int8, quantised once per checkpoint on the "
                             "run's training fields (float32 where they are not at hand): 1.15-1.8x the speed, nucleus "
                             "F1 within 0.01 of float32 on the 8 ISBI 2014 EDF fields (docs/speed.md: whole slides)")
    fields.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the blocks on a running Dask cluster (e.g. tcp://10.0.0.5:8786) whose scheduler and "
                             "workers have this repository on their PYTHONPATH (README: many slides, many machines); "
                             "default: in this process, --workers blocks at once")
    call = parser.add_argument_group("the call per slide (<name>_summary.json, <name>_report.html)")
    call.add_argument("--abnormal-probability", type=unit_fraction, default=0.5,
                      help="a cell counts as abnormal from this summed probability of the abnormal classes")
    call.add_argument("--abnormal-per-1000", type=non_negative_float, default=5.0,
                      help="a slide is called abnormal from this many abnormal cells per 1000 cells")
    call.add_argument("--min-cells", type=non_negative_int, default=5000,
                      help="fewer cells: 'unsatisfactory', too few to call (The Bethesda System's 5000 squamous cells "
                           "for a liquid-based slide)")
    call.add_argument("--gallery", type=non_negative_int, default=50,
                      help="most suspicious cells listed in the summary and shown in the report")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (FIELD_BATCH_SIZE if args.fields else CELL_BATCH_SIZE)
    for flag in ("seg_checkpoint", "cls_checkpoint", "field_checkpoint", "instance_checkpoint"):
        if getattr(args, flag) is not None:  # given: a typo must not pass for "no classifier" (--fields runs without one)
            check_named_file(getattr(args, flag), "checkpoint", f"pass the checkpoint's path to --{flag.replace('_', '-')}")
    resolve_checkpoints(args)
    run = RunPaths(args.run_dir)
    args.output_dir = args.output_dir or (run.field_predictions if args.fields else run.predictions)
    args.field_checkpoint = args.field_checkpoint or run.checkpoint("fields")
    args.instance_checkpoint = args.instance_checkpoint or run.checkpoint("instances")
    return args


# ---------------------------------------------------------------- which images, under which names

def find_images(inputs: Sequence[str], slides: bool = False) -> List[Path]:
    """Expand files, folders and globs into image paths, each once (tools/inputs.input_files), in the order given,
    leaving out the masks of a paired layout (<n>N.png, <n>C.png beside <n>.bmp).

    A named file is taken whatever its extension (OpenCV reads the bytes, not the name); an input that yields
    nothing is a usage error: it is most likely a typo. With `slides` (--fields), folders and globs also yield
    whole-slide files (SLIDE_EXTENSIONS), and the .dcm files of one folder are one DICOM slide.
    """
    images = input_files(inputs, IMAGE_EXTENSIONS + (SLIDE_EXTENSIONS if slides else ()))
    masks = paired_mask_files(images)  # each beside its image, which stays: never all of them
    return one_per_dicom_folder([image for image in images if image not in masks])


def one_per_dicom_folder(paths: Sequence[Path]) -> List[Path]:
    """A DICOM whole-slide image is a folder of .dcm files, one per level; OpenSlide opens it from any of them."""
    seen, kept = set(), []
    for path in paths:
        if path.suffix.lower() == ".dcm":
            if path.parent in seen:
                continue
            seen.add(path.parent)
        kept.append(path)
    return kept


def check_outputs_apart(inputs: Sequence[str], output_dir: Path) -> None:
    """The masks and overlays must not land among the input images, where a later run would take them as cells."""
    output = Path(output_dir).resolve()
    for text in inputs:
        if Path(text).is_file():
            continue  # a named file stays where it is, whatever is written beside it
        folder = Path(text) if Path(text).is_dir() else split_pattern(text)[0]  # find_images took it: a folder or a glob
        if folder.resolve().is_relative_to(output):
            raise UserError(f"--output-dir {output_dir}: it holds the input folder {folder}, so the masks and overlays "
                            f"would land among the images; pass an --output-dir outside the inputs")


def output_names(images: Sequence[Path]) -> List[str]:
    """Each image's path below the images' common folder, without extension (with it where two would clash)."""
    absolute = [Path(os.path.abspath(p)) for p in images]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    names = [p.relative_to(root).with_suffix("").as_posix() for p in absolute]
    clashes = Counter(names)
    return [p.relative_to(root).as_posix() if clashes[name] > 1 else name for p, name in zip(absolute, names)]


# ---------------------------------------------------------------- the run

@exit_on_user_error
def main(argv=None) -> int:
    """Returns the exit code: 0 when every image was predicted, 1 when some could not be read."""
    args = get_args(argv)
    paths = find_images(args.inputs, slides=args.fields)
    check_outputs_apart(args.inputs, args.output_dir)
    names = output_names(paths)
    if args.fields:
        paths, names = fields_only(args.inputs, paths, names)
        mark_output_dir(args.output_dir)
        with RunLock(args.output_dir, "--output-dir"):
            return predict_fields(args, paths, names)
    return predict_cells(args, paths, names)

if __name__ == "__main__":
    sys.exit(main())
