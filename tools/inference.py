"""Inference: both trained stages as one pipeline, used by predict.py, evaluate.py, main_segment.py's mask
export, calibration and the field mode.

A `CellPipeline` holds two backends, functions from a float32 batch to logits:
  segmenter   image [B, 3, S, S] (letterboxed, ImageNet-normalised)   -> [B, 2, S, S] logits (cyt, nuc)
  classifier  cell [B, 5, S, S] (that image + cell and nucleus masks)  -> [B, K] logits
run either by PyTorch (TorchBackend, from the checkpoints) or by ONNX Runtime (OnnxBackend, from the
files tools/onnx_export.py writes). Around them the pipeline letterboxes, averages the flips (the
identity and the two mirror images, batched into one call), undoes the letterbox, cleans the masks,
builds the classifier's input as training does and scales the logits by the fitted temperature.
torch is imported only where a TorchBackend is built: the ONNX path never loads it.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tools.layouts.points import classifier_window
from tools.onnx_format import EXPORT_FORMAT
from utils.errors import UserError
from utils.files import file_sha1
from utils.preprocessing import (
    LetterboxBox,
    cell_channels,
    fill_holes,
    largest_component,
    letterbox,
    normalize_image,
    unletterbox,
)

MASK_THRESHOLD = 0.5
FLIPS = ((), (-1,), (-2,))  # identity, horizontal, vertical: cells have no preferred orientation
# The classifier averages the three (test accuracy +0.07 on Herlev, docs/experiments-cells.md); the segmenter sees
# the identity only: on Herlev's 197 val + test cells the flips moved Dice by 0.002 (0.9457 vs 0.9438) for 2x the time
# of a cell
SEGMENTATION_FLIPS = ((),)
GRAPH_OPTIMIZATIONS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}  # ONNX Runtime's levels, each including the one before
Backend = Callable[[np.ndarray], np.ndarray]


def batched(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def flip_views(batch: np.ndarray, flips=FLIPS) -> np.ndarray:
    """[B, C, S, S] -> [V * B, C, S, S]: every flip of the batch, stacked for one backend call."""
    return np.concatenate([np.flip(batch, dims) if dims else batch for dims in flips])


def split_views(outputs: np.ndarray, spatial: bool, flips=FLIPS) -> np.ndarray:
    """[V * B, ...] -> [V, B, ...], each spatial view flipped back to the identity's orientation."""
    views = outputs.reshape(len(flips), -1, *outputs.shape[1:])
    if spatial:
        views = np.stack([np.flip(view, dims) if dims else view for view, dims in zip(views, flips)])
    return views


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return scaled / scaled.sum(axis=-1, keepdims=True)


def combined(cnn_probs: np.ndarray, measurement_probs: Optional[np.ndarray]) -> np.ndarray:
    """The classifier's probabilities: the CNN's, averaged with the measurement model's when there is one."""
    return cnn_probs if measurement_probs is None else (cnn_probs + measurement_probs) / 2


def masks_from_probs(cell_prob: np.ndarray, nuc_prob: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Threshold, then shape priors of a single-cell image: one solid cell, solid nuclei inside it.

    Only the cell keeps its largest component: some cells have two nuclei (on Herlev's test split keeping
    one nucleus lowered nucleus Dice from 0.929 to 0.924).
    """
    cell_mask = fill_holes(largest_component(cell_prob > MASK_THRESHOLD))
    nuc_mask = fill_holes((nuc_prob > MASK_THRESHOLD) & cell_mask)
    return cell_mask | nuc_mask, nuc_mask


@dataclass
class CellPrediction:
    cell_mask: np.ndarray  # bool [H, W], whole cell
    nuc_mask: np.ndarray  # bool [H, W]
    probs: Optional[np.ndarray] = None  # [K] calibrated class probabilities (None without a classifier)
    view_logits: Optional[np.ndarray] = None  # [V, K] logits of the flips, for other temperatures
    measurement_probs: Optional[np.ndarray] = None  # [K] the measurement model's share of `probs`, when there is one
    measurements: Optional[np.ndarray] = None  # [F] tools/morphometry.py's, when the classifier used them
    box: Optional[LetterboxBox] = None  # where the cell sits in the classifier's square


@dataclass
class CellPipeline:
    segmenter: Backend
    seg_size: int  # the segmentation checkpoint's img_size
    classifier: Optional[Backend] = None
    cls_size: int = 0  # the classification checkpoint's img_size
    class_names: Optional[List[str]] = None
    temperature: float = 1.0  # fitted after training; 1.0 for checkpoints made before calibration
    measures: bool = False  # the classifier takes cell measurements (tools/morphometry.py) beside the image
    measurement_model: Optional[dict] = None  # its probabilities are averaged with the CNN's (tools/measurement_model.py)
    seg_flips: Tuple = SEGMENTATION_FLIPS  # views the segmenter's probabilities are averaged over
    cell_window: int = 0  # on fields: cells cut as a square of this side around the nucleus (a classifier trained on
    # CRIC-style points, tools/layouts/points.classifier_window); 0: by the cell's box

    # ------------------------------------------------------------ stage 1

    def segmenter_inputs(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[LetterboxBox]]:
        """The segmenter's input [B, 3, S, S] (each image letterboxed into its square, normalised) and the boxes."""
        boxed = [letterbox(image, [], self.seg_size) for image in images]
        return np.stack([normalize_image(canvas) for canvas, _, _ in boxed]), [box for _, _, box in boxed]

    def mask_probs(self, images: Sequence[np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Flip-averaged cell and nucleus probabilities [H, W], each at its image's own size."""
        batch, boxes = self.segmenter_inputs(images)
        views = self.segmenter(flip_views(batch, self.seg_flips))
        probs = sigmoid(split_views(views, True, self.seg_flips)).mean(axis=0)  # [B, 2, S, S]
        return [(unletterbox(p[0], box, image.shape[:2]), unletterbox(p[1], box, image.shape[:2]))
                for p, image, box in zip(probs, images, boxes)]

    def masks(self, images: Sequence[np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(whole-cell mask, nucleus mask), bool [H, W], per image."""
        return [masks_from_probs(*probs) for probs in self.mask_probs(images)]

    # ------------------------------------------------------------ stage 2

    def classifier_inputs(self, images: Sequence[np.ndarray],
                          masks: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[Tuple[np.ndarray, ...], List[LetterboxBox]]:
        """The classifier's inputs, built as ClassificationDataset builds them (without augmentation), and the boxes.

        Returns ((cells [B, 5, S, S],) or (cells, measurements [B, F]) when the classifier takes measurements,
        where each image sits in its square).
        """
        channels, boxes = [], []
        for image, (cell_mask, nuc_mask) in zip(images, masks):
            canvas, boxed_masks, box = letterbox(image, [cell_mask, nuc_mask], self.cls_size)
            channels.append(cell_channels(canvas, np.stack(boxed_masks)))
            boxes.append(box)
        if not (self.measures or self.measurement_model):
            return (np.stack(channels),), boxes
        from tools.morphometry import cell_measurements

        measurements = np.stack([cell_measurements(image, *pair) for image, pair in zip(images, masks)])
        return (np.stack(channels), measurements), boxes

    def view_logits(self, *inputs: np.ndarray) -> np.ndarray:
        """Classifier logits [V, B, K] of every flip of the cells (calibration fits its temperature on these).

        inputs: cells [B, 5, S, S], and measurements [B, F] for a classifier that takes them (a flip changes no
        measurement, so they are repeated for every view).
        """
        if self.classifier is None:
            raise UserError("no classifier checkpoint was loaded; train stage 2 (main_classify.py) or pass --cls-checkpoint")
        cells, *rest = inputs
        repeated = [np.concatenate([values] * len(FLIPS)) for values in rest] if self.measures else []
        return split_views(self.classifier(flip_views(cells), *repeated), spatial=False)

    def class_probs(self, *inputs: np.ndarray, temperature: Optional[float] = None) -> np.ndarray:
        """[B, K]: softmax(logits / T) averaged over the flips (T: the fitted temperature unless given), then
        averaged with the measurement model's probabilities when there is one."""
        cnn_probs = softmax(self.view_logits(*inputs), self.temperature if temperature is None else temperature).mean(axis=0)
        return combined(cnn_probs, self.measurement_probs(inputs))

    def measurement_probs(self, inputs: Sequence[np.ndarray]) -> Optional[np.ndarray]:
        """[B, K] probabilities of the measurement model (None without one); inputs as classifier_inputs returns them."""
        if not self.measurement_model:
            return None
        from tools.measurement_model import measurement_probs

        return measurement_probs(self.measurement_model, inputs[1])

    # ------------------------------------------------------------ both

    def predict(self, images: Sequence[np.ndarray],
                masks: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]] = None) -> List[CellPrediction]:
        """Masks (stage 1, unless given), then, with a classifier, class probabilities on RGB + masks (stage 2)."""
        masks = self.masks(images) if masks is None else masks
        if self.classifier is None:
            return [CellPrediction(cell, nuc) for cell, nuc in masks]
        inputs, boxes = self.classifier_inputs(images, masks)
        view_logits = self.view_logits(*inputs)  # [V, B, K]
        extra = self.measurement_probs(inputs)
        probs = combined(softmax(view_logits, self.temperature).mean(axis=0), extra)
        extra = [None] * len(masks) if extra is None else extra
        measured = inputs[1] if len(inputs) > 1 else [None] * len(masks)
        return [CellPrediction(cell, nuc, p, v, m, x, box) for (cell, nuc), p, v, m, x, box
                in zip(masks, probs, view_logits.transpose(1, 0, 2), extra, measured, boxes)]


# ---------------------------------------------------------------- backends

class TorchBackend:
    """A model as a function of numpy batches, in eval mode and without gradients (autocast on CUDA)."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def __call__(self, *batch: np.ndarray) -> np.ndarray:
        import torch

        from model.segmentation_model import HEADS
        from tools.acceleration import autocast, autocast_dtype

        tensors = [torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for array in batch]
        with torch.no_grad(), autocast(self.device, autocast_dtype(self.device)):
            outputs = self.model(*tensors)
        if isinstance(outputs, dict):  # the segmenter's {'cyt', 'nuc'}
            outputs = torch.cat([outputs[head] for head in HEADS], dim=1)
        return outputs.float().cpu().numpy()


def torch_pipeline(seg_checkpoint: Optional[Path], cls_checkpoint: Optional[Path],
                   device) -> Tuple[CellPipeline, Optional[dict], Optional[dict]]:
    """The pipeline of two checkpoints (either may be None) run by PyTorch. Returns (pipeline, seg and cls checkpoints)."""
    from tools.checkpoint import load_model

    pipeline, seg, cls = CellPipeline(None, 0), None, None
    if seg_checkpoint is not None:
        seg_model, seg = load_model(seg_checkpoint, "segmentation", device)
        pipeline.segmenter, pipeline.seg_size = TorchBackend(seg_model, device), seg["args"]["img_size"]
    if cls_checkpoint is not None:
        cls_model, cls = load_model(cls_checkpoint, "classification", device)
        pipeline.classifier, pipeline.cls_size = TorchBackend(cls_model, device), cls["args"]["img_size"]
        pipeline.class_names = list(cls["class_names"])
        pipeline.cell_window = classifier_window(pipeline.class_names)
        pipeline.temperature = float(cls.get("temperature", 1.0))
        pipeline.measures = bool(cls["model_config"].get("num_measurements"))
        pipeline.measurement_model = cls.get("measurement_model")
    return pipeline, seg, cls


class OnnxBackend:
    """An exported model run by ONNX Runtime on the CPU, as a function of numpy batches."""

    def __init__(self, path: Path, threads: Optional[int] = None, graph_optimization: str = "all"):
        """threads: ONNX Runtime's intra-op threads (default: the cores this process may use);
        graph_optimization: 'disable', 'basic' (constant folding, BatchNorm folded into convolutions), 'extended'
        (fused operators) or 'all' (also CPU memory layouts); benchmarks/onnx_steps.py measures each."""
        import os

        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, GRAPH_OPTIMIZATIONS[graph_optimization])
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, *batch: np.ndarray) -> np.ndarray:
        feed = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in zip(self.input_names, batch)}
        outputs = self.session.run(None, feed)
        return np.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]  # U-Nets: [B, 2, S, S]


def onnx_backend(onnx_dir: Path, stage: str, checkpoint: Path, threads: Optional[int] = None,
                 calibration: Optional[Callable[[], Sequence[dict]]] = None) -> OnnxBackend:
    """The session of <onnx_dir>/<stage>.onnx, exported from `checkpoint` first when absent, unreadable, made from
    another checkpoint (its metadata `source` is the checkpoint file's sha1) or in an older EXPORT_FORMAT.

    With `calibration` (a function returning batches of typical inputs, {input name: array}), the int8 graph
    <onnx_dir>/<stage>.int8.onnx instead, quantised from the float one once per checkpoint
    (tools/onnx_export.quantize_graph)."""
    if not Path(checkpoint).is_file():
        from tools.checkpoint import load_checkpoint

        load_checkpoint(checkpoint, stage)  # raises the one-line error that names it
    source = file_sha1(checkpoint)
    int8_path = Path(onnx_dir) / f"{stage}.int8.onnx"
    if calibration is not None:
        quantized = current_export(int8_path, source, threads)
        if quantized is not None:
            return quantized
    path = Path(onnx_dir) / f"{stage}.onnx"
    backend = current_export(path, source, threads)
    if backend is None:
        from tools.onnx_export import TOLERANCE, export_stage

        print(f"exporting {checkpoint} to {path} (once per checkpoint)")
        _, difference = export_stage(stage, checkpoint, path)
        if difference > TOLERANCE:
            print(f"warning: {path} differs from PyTorch by up to {difference:.2e} (> {TOLERANCE:g}) on random inputs")
        backend = current_export(path, source, threads)
        if backend is None:
            raise UserError(f"{path}: the ONNX export does not match {checkpoint}; delete the file and run again")
    if calibration is None:
        return backend
    from tools.onnx_export import quantize_graph

    print(f"quantising {path} to {int8_path} (int8, once per checkpoint)")
    quantize_graph(path, int8_path, calibration())
    return current_export(int8_path, source, threads)


def current_export(path: Path, source: str, threads: Optional[int]) -> Optional[OnnxBackend]:
    """The session of an exported graph made from the checkpoint whose sha1 is `source` in this EXPORT_FORMAT, or None."""
    try:
        backend = OnnxBackend(path, threads)
    except Exception:  # absent or unreadable
        return None
    metadata = backend.metadata
    return backend if metadata.get("source") == source and metadata.get("export_format", "1") == EXPORT_FORMAT else None


def onnx_pipeline(onnx_dir: Path, seg_checkpoint: Optional[Path], cls_checkpoint: Optional[Path],
                  threads: Optional[int] = None) -> CellPipeline:
    """The stages of the checkpoints given (either may be None) run by ONNX Runtime (no torch); the exported files
    carry sizes, class names and temperature."""
    pipeline = CellPipeline(None, 0)
    if seg_checkpoint is not None:
        pipeline.segmenter = onnx_backend(onnx_dir, "segmentation", seg_checkpoint, threads)
        pipeline.seg_size = int(pipeline.segmenter.metadata["img_size"])
    if cls_checkpoint is not None:
        classifier = onnx_backend(onnx_dir, "classification", cls_checkpoint, threads)
        meta = classifier.metadata
        pipeline.classifier, pipeline.cls_size = classifier, int(meta["img_size"])
        pipeline.class_names = json.loads(meta["class_names"])
        pipeline.cell_window = classifier_window(pipeline.class_names)
        pipeline.temperature = float(meta["temperature"])
        pipeline.measures = len(classifier.input_names) > 1
        pipeline.measurement_model = json.loads(meta.get("measurement_model", "null"))
    return pipeline


def machine_has_cuda() -> bool:
    """Whether an NVIDIA driver is loaded, without importing torch (predict.py's start-up)."""
    return Path("/proc/driver/nvidia").exists()


def resolve_backend(backend: str, device_name: str = "auto") -> str:
    """'onnx' or 'torch'; 'auto' is PyTorch where a CUDA device is asked for or present, else ONNX Runtime."""
    if backend != "auto":
        return backend
    return "torch" if device_name.startswith("cuda") or (device_name == "auto" and machine_has_cuda()) else "onnx"


def load_pipeline(seg_checkpoint: Optional[Path], cls_checkpoint: Optional[Path], onnx_dir: Path, backend: str = "auto",
                  device_name: str = "auto", threads: Optional[int] = None) -> CellPipeline:
    """The stages of the checkpoints given (either may be None), run by ONNX Runtime (the CPU's fast path) or
    PyTorch (GPUs, Grad-CAM).

    Args:
        backend: 'onnx', 'torch', or 'auto' (resolve_backend).
        threads: ONNX Runtime threads (default: the cores this process may use).
    """
    if resolve_backend(backend, device_name) == "onnx":
        return onnx_pipeline(onnx_dir, seg_checkpoint, cls_checkpoint, threads)
    from tools.acceleration import resolve_device

    return torch_pipeline(seg_checkpoint, cls_checkpoint, resolve_device(device_name))[0]
