"""Field models that see as a threshold does, for tests of everything around the models (blocks, slides, resume,
clusters): a one-epoch network finds next to nothing, these find every dark nucleus of the demo's clusters and
the same ones on every machine, so what is compared is the code around them.

    field model    foreground where the grey value is under FOREGROUND_GREY, nuclei where it is under NUCLEUS_GREY
    instance model the window's foreground as the marked nucleus's cell, the marker as its nucleus
    classifier     'abnormal' the darker the nucleus's surroundings (so probabilities vary from cell to cell)
Install them in a process with install(spec): tools/fields/slide.loaded_models then returns them for that spec;
a Dask worker process does so through worker_preload.py (LocalCluster(preload=...)).
"""
from types import SimpleNamespace
from typing import List

import numpy as np

from tools.fields.models import FieldModels
from utils.preprocessing import IMAGENET_MEAN, IMAGENET_STD

FOREGROUND_GREY = 200
NUCLEUS_GREY = 110
SHARPNESS = 0.2  # logit per grey level
CLASS_NAMES = ["abnormal_cells", "normal_cells"]


def grey_of(normalised: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] ImageNet-normalised RGB -> [B, H, W] grey values 0..255."""
    rgb = normalised * IMAGENET_STD[None, :, None, None] + IMAGENET_MEAN[None, :, None, None]
    return rgb.mean(axis=1) * 255


def field_backend(batch: np.ndarray) -> np.ndarray:
    grey = grey_of(batch)
    return np.stack([(FOREGROUND_GREY - grey) * SHARPNESS, (NUCLEUS_GREY - grey) * SHARPNESS], axis=1).astype(np.float32)


def instance_backend(batch: np.ndarray) -> np.ndarray:
    grey = grey_of(batch[:, :3])
    marker = batch[:, 3]
    return np.stack([(FOREGROUND_GREY - grey) * SHARPNESS, (marker - 0.5) * 20], axis=1).astype(np.float32)


class FakeClassifier:
    class_names = CLASS_NAMES
    cell_window = 0  # cells cut by their box (tools/inference.CellPipeline.cell_window)

    def predict(self, images: List[np.ndarray], masks) -> list:
        predictions = []
        for image, (cell, nucleus) in zip(images, masks):
            darkness = 1 - image[cell].mean() / 255 if cell.any() else 0.0
            abnormal = float(np.clip(darkness * 1.5, 0, 1))
            predictions.append(SimpleNamespace(probs=np.array([abnormal, 1 - abnormal])))
        return predictions


def fake_field_models(mpp=None) -> FieldModels:
    return FieldModels(field_backend, instance_backend, scale=1.0, tile=64, window=96, instance_size=64, nucleus_px=12.0,
                       batch_size=8, mpp=mpp)


def install(spec, mpp=None, classify=True) -> None:
    """Make tools/fields/slide.loaded_models(spec) return the fake models in this process."""
    from tools.fields import slide

    slide._loaded[spec] = (fake_field_models(mpp), FakeClassifier() if classify else None)
