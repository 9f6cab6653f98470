"""Export both trained models to ONNX (dynamic batch axis) and check them against PyTorch with ONNX Runtime.

segmentation.onnx    input  image  [B, 3, S, S]: the letterboxed RGB cell, normalised with ImageNet mean/std
                     output cyt, nuc [B, 1, S, S]: logits of the whole cell and of the nucleus
classification.onnx  input  cell   [B, 5, S, S]: that image, then the cell and nucleus masks (0/1)
                     output logits [B, K]; probabilities = softmax(logits / temperature)
Each file's metadata holds img_size, the checkpoint it was made from (`source`, a hash of the file:
tools/inference.py exports again when the checkpoint changed), and for the classifier class_names and
temperature. A classifier that takes cell measurements has a second input, measurements [B, F]. Letterboxing, flip averaging and mask clean-up stay outside the graphs (tools/inference.py).
"""
import json
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
import torch

from model.segmentation_model import HEADS
from tools.checkpoint import load_model
from utils.files import file_sha1

TOLERANCE = 1e-4  # largest absolute difference from PyTorch accepted by the check
CHECK_BATCH_SIZES = (1, 3)  # neither is the batch size traced at export, so a fixed batch axis would fail
OPSET = 17


class SegmentationOutputs(torch.nn.Module):
    """The segmentation model with its {'cyt', 'nuc'} dict returned as a tuple in HEADS order: ONNX outputs are positional."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image)
        return tuple(logits[head] for head in HEADS)


def export(model: torch.nn.Module, examples: Sequence[torch.Tensor], path: Path, input_names: Sequence[str],
           output_names: Sequence[str], metadata: Dict[str, str], opset: int = OPSET) -> Path:
    """Trace `model` on `examples` into `path`, every input and output with a dynamic batch axis 0."""
    dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False) is deprecated but works offline with no extra package;
        # the torch.export one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        # shape assertions inside MultiheadAttention, constant for a given model: the check covers them
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, tuple(examples), str(path), dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset)
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def example_inputs(input_shapes: Sequence[Sequence[int]], batch_size: int, generator=None) -> List[torch.Tensor]:
    """Random inputs [batch_size, *shape] per input; measurements (1-D) are made positive, like areas and ratios."""
    inputs = [torch.randn(batch_size, *shape, generator=generator) for shape in input_shapes]
    return [x if len(shape) > 1 else x.abs() * 100 for x, shape in zip(inputs, input_shapes)]


@torch.no_grad()
def max_difference(model: torch.nn.Module, path: Path, input_shapes: Sequence[Sequence[int]],
                   batch_sizes=CHECK_BATCH_SIZES) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's outputs on random inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for batch_size in batch_sizes:
        inputs = example_inputs(input_shapes, batch_size, generator)
        expected = model(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for want, got in zip(expected, session.run(None, {name: x.numpy() for name, x in zip(names, inputs)})):
            largest = max(largest, float(np.abs(want.numpy() - got).max()))
    return largest


def export_run(seg_checkpoint: Path, cls_checkpoint: Path, out_dir: Path, opset: int = OPSET,
               check: bool = True) -> Dict[str, Tuple[Path, float]]:
    """Export both checkpoints into out_dir. Returns {stage: (onnx path, max difference from PyTorch, or nan)}."""
    device = torch.device("cpu")  # the exported graph does not depend on it; CPU keeps the check exact
    seg_model, seg = load_model(seg_checkpoint, "segmentation", device)
    cls_model, cls = load_model(cls_checkpoint, "classification", device)
    seg_size, cls_size = seg["args"]["img_size"], cls["args"]["img_size"]
    num_measurements = cls["model_config"].get("num_measurements", 0)
    cls_inputs = [("cell", (5, cls_size, cls_size))] + ([("measurements", (num_measurements,))] if num_measurements else [])
    exports = {
        # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and train() would recurse
        "segmentation": (SegmentationOutputs(seg_model).eval(), [("image", (3, seg_size, seg_size))], list(HEADS),
                         {"img_size": str(seg_size), "source": file_sha1(seg_checkpoint),
                          "outputs": "logits; mask = sigmoid > 0.5"}),
        "classification": (cls_model, cls_inputs, ["logits"],
                           {"img_size": str(cls_size), "source": file_sha1(cls_checkpoint),
                            "class_names": json.dumps(cls["class_names"]),
                            "temperature": str(float(cls.get("temperature", 1.0))),
                            "measurement_model": json.dumps(cls.get("measurement_model")),
                            "outputs": "logits; probabilities = softmax(logits / temperature)"}),
    }
    written = {}
    for stage, (model, inputs, output_names, metadata) in exports.items():
        names, shapes = [name for name, _ in inputs], [shape for _, shape in inputs]
        path = export(model, example_inputs(shapes, 2), Path(out_dir) / f"{stage}.onnx", names, output_names, metadata, opset)
        written[stage] = (path, max_difference(model, path, shapes) if check else float("nan"))
    return written
