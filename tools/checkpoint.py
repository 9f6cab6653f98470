"""Checkpoints: what a run saves, how it is written safely, and what it must match to be resumed or reused.

A checkpoint is a dict: stage, model (weights validated and kept; the EMA when there is one), raw_model
(with EMA: the trained weights, to resume), optimizer, scheduler, scaler, epoch, best_metric, monitor,
args, model_config (keyword arguments that rebuild the model), class_names, provenance (what it was
trained on) and the RNG states. Classification checkpoints also get a fitted temperature.
"""
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from model.classification_model import ConvNeXtAttentionClassifier
from model.segmentation_model import DualHeadAttConvNeXtUNet
from tools.config import check_named_file, unknown_name
from utils.errors import UserError
from utils.files import written_atomically


@dataclass
class RunState:
    """What a checkpoint holds besides weights, so that a run can resume or be rebuilt."""

    stage: str
    args: Dict[str, Any]
    model_config: Dict[str, Any]  # keyword arguments that rebuild the model
    class_names: Optional[list] = None
    provenance: Dict[str, Any] = field(default_factory=dict)  # data root, split manifest hash, settings that matter
    extra: Dict[str, Any] = field(default_factory=dict)  # more keys for every checkpoint (the measurement model)


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a kill or a full disk during the save never breaks the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        kept, advice = "the previous one is kept", "free disk space, then resume with --resume"
    else:
        kept, advice = "no earlier one existed", "free disk space, then run again"
    try:
        with written_atomically(path) as tmp_path:
            torch.save(state, tmp_path)
    except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError from its zip writer
        reason = " ".join(str(error).split())[:120]
        raise UserError(f"{path}: checkpoint could not be written ({reason}); {kept}; {advice}") from None


def load_checkpoint(path: Path, stage: str) -> Dict[str, Any]:
    """Load a checkpoint of `stage` onto the CPU, with a clear error for a missing or wrong file."""
    path = Path(path)
    check_named_file(path, "checkpoint", f"train the {stage} stage first or pass its path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"{path}: not a readable checkpoint ({type(error).__name__}); retrain or pass another file")
    if not isinstance(checkpoint, dict) or checkpoint.get("stage") != stage:
        found = checkpoint.get("stage", "unknown") if isinstance(checkpoint, dict) else "unknown"
        raise UserError(f"{path}: is a {found} checkpoint, expected {stage}; pass the {stage} checkpoint")
    return checkpoint


# What the users of a checkpoint read from it: the keys, and the entries of its args
REQUIRED_KEYS = ("model", "model_config", "args")
REQUIRED_ARGS = {"segmentation": ("img_size",), "classification": ("img_size",),
                 "fields": ("tile_size", "field_scale", "cell_window", "instance_size"),
                 "instances": ("tile_size", "field_scale", "cell_window", "instance_size")}


def check_complete(path: Path, checkpoint: Dict[str, Any], stage: str) -> None:
    """A checkpoint missing what its users read, or naming a backbone timm does not know, fails here and not
    as a KeyError or timm's error halfway through a run."""
    import timm

    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint] + [f"args.{key}" for key in REQUIRED_ARGS[stage]
                                                                          if key not in args]
    if stage == "classification" and not isinstance(checkpoint.get("class_names"), list):
        missing.append("class_names")
    if missing:
        raise UserError(f"{path}: the checkpoint lacks {', '.join(missing)}; retrain, or pass a checkpoint this "
                        f"project's training wrote")
    backbone = str(checkpoint["model_config"].get("backbone", ""))
    if not timm.is_model(backbone):
        raise UserError(f"{path}: {unknown_name(backbone, timm.list_models(), 'backbone', 'timm.list_models()')} in "
                        f"its model_config; retrain, or use the timm version it was trained with")


def rng_states() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def differences(saved: Dict[str, Any], wanted: Dict[str, Any]) -> Dict[str, tuple]:
    """{key: (saved value, wanted value)} for every key whose values differ."""
    return {key: (saved.get(key), wanted.get(key)) for key in sorted(saved.keys() | wanted.keys())
            if saved.get(key) != wanted.get(key)}


def check_resume_compatible(path: Path, checkpoint: Dict[str, Any], run: RunState) -> None:
    """A resumed run must rebuild the model it saved, on the same data and split: say what differs.

    Resuming on another data root would go on training on other cells while keeping the old data's best
    score (so best.pth would stay the old model); other class names would make every label mean another class.
    """
    saved = {**checkpoint.get("model_config", {}), "class_names": checkpoint.get("class_names"),
             **checkpoint.get("provenance", {})}
    wanted = {**run.model_config, "class_names": run.class_names, **run.provenance}
    if "provenance" not in checkpoint:  # made before checkpoints remembered their data: compare what they hold
        wanted = {key: value for key, value in wanted.items() if key in saved}
    differing = differences(saved, wanted)
    if differing:
        made = ", ".join(f"{key} {old}" for key, (old, _) in differing.items())
        asked = ", ".join(f"{key} {new}" for key, (_, new) in differing.items())
        raise UserError(f"{path}: cannot resume: the checkpoint was made with {made}, this run has {asked}; "
                        f"resume with the checkpoint's settings, or drop --resume to start a new run")


def load_model(path: Path, stage: str, device):
    """Rebuild a model from its checkpoint. Returns (model in eval mode on device, checkpoint dict)."""
    checkpoint = load_checkpoint(path, stage)
    check_complete(path, checkpoint, stage)
    factory = ConvNeXtAttentionClassifier if stage == "classification" else DualHeadAttConvNeXtUNet  # stage 1: any U-Net
    model = factory(**checkpoint["model_config"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]  # the first line is only a header; the keys follow it
        raise UserError(f"{path}: weights do not fit the model described in the checkpoint ({detail}); retrain")
    return model.to(device).eval(), checkpoint


def start_from(model: torch.nn.Module, path: Path, class_names: Sequence[str], config: Dict[str, Any]) -> str:
    """Load a classification checkpoint's weights into a new model, to fine-tune it on other cells (--init-from).

    The classes and the model config must be the checkpoint's: a head for other classes, or another backbone, would
    load nothing meaningful. Returns where the weights came from, for the training's first line.
    """
    checkpoint = load_checkpoint(path, "classification")
    check_complete(path, checkpoint, "classification")
    if list(checkpoint["class_names"]) != list(class_names):
        raise UserError(f"{path}: its classifier knows {', '.join(checkpoint['class_names'])}, this data "
                        f"{', '.join(class_names)}; fine-tune it on cells of the same classes, or train without --init-from")
    changed = differences(checkpoint["model_config"], config)
    if changed:
        name, (saved, wanted) = next(iter(changed.items()))
        raise UserError(f"{path}: its model has {name} {saved}, this run asks {wanted}; pass the same flags "
                        f"(e.g. --backbone {checkpoint['model_config'].get('backbone')}) or train without --init-from")
    model.load_state_dict(checkpoint["model"])
    return f"fine-tuned from {path}"
