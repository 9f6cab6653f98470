"""Untrained checkpoints in the training scripts' format (the keys load_model needs), for tests of trained-model users."""
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from model.classification_model import ConvNeXtAttentionClassifier
from model.segmentation_model import DualHeadAttConvNeXtUNet
from tools.checkpoint import save_checkpoint

DEMO_CLASSES = ["im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic", "im_Parabasal", "im_Superficial-Intermediate"]


def save_untrained_segmentation(path: Path, backbone: str = "test_convnext", img_size: int = 64,
                                decoder_channels=(32, 16, 16), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = dict(backbone=backbone, decoder_channels=list(decoder_channels))
    save_checkpoint(Path(path), {"stage": "segmentation", "model": DualHeadAttConvNeXtUNet(**config).state_dict(),
                                 "model_config": config, "epoch": 1, "args": {"img_size": img_size, "backbone": backbone},
                                 "class_names": None})
    return Path(path)


def save_untrained_classification(path: Path, class_names: Sequence[str] = DEMO_CLASSES, backbone: str = "test_convnext",
                                  img_size: int = 64, temperature: Optional[float] = None, seed: int = 0) -> Path:
    """temperature None leaves the key out, as in checkpoints made before calibration."""
    torch.manual_seed(seed)
    config = dict(num_classes=len(class_names), in_chans=5, backbone=backbone)
    state = {"stage": "classification", "model": ConvNeXtAttentionClassifier(**config).state_dict(), "model_config": config,
             "epoch": 1, "args": {"img_size": img_size, "backbone": backbone}, "class_names": list(class_names)}
    if temperature is not None:
        state["temperature"] = temperature
    save_checkpoint(Path(path), state)
    return Path(path)


def save_untrained_checkpoints(checkpoint_dir: Path, temperature: Optional[float] = None, **settings) -> Tuple[Path, Path]:
    """segmentation_best.pth and classification_best.pth in checkpoint_dir; settings: backbone, img_size."""
    checkpoint_dir = Path(checkpoint_dir)
    return (save_untrained_segmentation(checkpoint_dir / "segmentation_best.pth", **settings),
            save_untrained_classification(checkpoint_dir / "classification_best.pth", temperature=temperature, **settings))


def save_untrained_field_models(checkpoint_dir: Path, tile_size: int = 64, instance_size: int = 64, cell_window: int = 64,
                                field_scale: float = 1.0, nucleus_px: Optional[float] = 16.0,
                                backbone: str = "test_convnext", decoder_channels=(16, 16, 16),
                                seed: int = 0) -> Tuple[Path, Path]:
    """fields_best.pth (3 input channels) and instances_best.pth (4) in checkpoint_dir, with the args train_fields.py
    records (both checkpoints get all of them, as there; nucleus_px None: left out, as by older runs)."""
    args = {"img_size": tile_size, "tile_size": tile_size, "instance_size": instance_size, "cell_window": cell_window,
            "field_scale": field_scale, "backbone": backbone}
    if nucleus_px is not None:
        args["nucleus_px"] = nucleus_px
    paths = []
    for stage, in_chans in (("fields", 3), ("instances", 4)):
        torch.manual_seed(seed)
        config = dict(backbone=backbone, decoder_channels=list(decoder_channels), in_chans=in_chans)
        path = Path(checkpoint_dir) / f"{stage}_best.pth"
        save_checkpoint(path, {"stage": stage, "model": DualHeadAttConvNeXtUNet(**config).state_dict(), "model_config": config,
                               "epoch": 1, "args": args, "class_names": None})
        paths.append(path)
    return paths[0], paths[1]
