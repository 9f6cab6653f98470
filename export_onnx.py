"""Export both trained models to ONNX with a dynamic batch axis, then check them against PyTorch with onnxruntime.

    python export_onnx.py --run-dir runs/demo       # -> runs/demo/outputs/onnx/{segmentation,classification}.onnx

segmentation.onnx    input  image  [B, 3, S, S]: the letterboxed RGB cell, normalised with ImageNet mean/std
                     output cyt, nuc [B, 1, S, S]: logits of the whole cell and of the nucleus
classification.onnx  input  cell   [B, 5, S, S]: that image, then the cell and nucleus masks (0/1)
                     output logits [B, K]; probabilities = softmax(logits / temperature)
Each file's metadata holds img_size, and for the classifier class_names and temperature. Letterboxing,
flip averaging and the mask post-processing stay outside the graphs (see tools/inference.py).
"""
import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import onnx
import onnxruntime
import torch

from model.segmentation_model import HEADS
from tools.config import HelpFormatter, check_output_dir, checkpoint_parser, resolve_checkpoints
from tools.errors import exit_on_user_error
from tools.inference import load_model

TOLERANCE = 1e-4  # largest absolute difference from PyTorch accepted by the check
CHECK_BATCH_SIZES = (1, 3)  # neither is the batch size traced at export, so a fixed batch axis would fail


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export the segmentation and classification checkpoints to ONNX.",
                                     parents=[checkpoint_parser()], formatter_class=HelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for segmentation.onnx and classification.onnx (default: RUN_DIR/outputs/onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help=f"run each file in onnxruntime on random batches of {' and '.join(map(str, CHECK_BATCH_SIZES))} "
                             f"and compare with PyTorch (tolerance {TOLERANCE:g})")
    args = parser.parse_args(argv)
    resolve_checkpoints(args)
    args.output_dir = args.output_dir or args.run_dir / "outputs" / "onnx"
    return args


class SegmentationOutputs(torch.nn.Module):
    """The segmentation model with its {'cyt', 'nuc'} dict returned as a tuple in HEADS order: ONNX outputs are positional."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image)
        return tuple(logits[head] for head in HEADS)


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: Sequence[str],
           opset: int, metadata: Dict[str, str]) -> Path:
    """Trace `model` on `example` into `path`, every input and output with a dynamic batch axis 0."""
    dynamic_axes = {name: {0: "batch"} for name in (input_name, *output_names)}
    with warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False) is deprecated but works offline with no extra package;
        # the torch.export one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        # shape assertions inside MultiheadAttention, constant for a given model: the check below covers them
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=dynamic_axes, opset_version=opset)
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


@torch.no_grad()
def max_difference(model: torch.nn.Module, path: Path, input_shape: Sequence[int], batch_sizes=CHECK_BATCH_SIZES) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on random inputs [B, *input_shape]."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for batch_size in batch_sizes:
        inputs = torch.randn(batch_size, *input_shape, generator=generator)
        expected = model(inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for want, got in zip(expected, session.run(None, {input_name: inputs.numpy()})):
            largest = max(largest, float(np.abs(want.numpy() - got).max()))
    return largest


@exit_on_user_error
def main(argv=None) -> int:
    args = get_args(argv)
    device = torch.device("cpu")  # the exported graph does not depend on it; CPU keeps the check exact
    seg_model, seg_checkpoint = load_model(args.seg_checkpoint, "segmentation", device)
    cls_model, cls_checkpoint = load_model(args.cls_checkpoint, "classification", device)
    check_output_dir(args.output_dir)
    seg_size, cls_size = seg_checkpoint["args"]["img_size"], cls_checkpoint["args"]["img_size"]
    exports = [
        # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and train() would recurse
        (SegmentationOutputs(seg_model).eval(), (3, seg_size, seg_size), "segmentation.onnx", "image", list(HEADS),
         {"img_size": str(seg_size), "outputs": "logits; mask = sigmoid > 0.5"}),
        (cls_model, (5, cls_size, cls_size), "classification.onnx", "cell", ["logits"],
         {"img_size": str(cls_size), "class_names": json.dumps(cls_checkpoint["class_names"]),
          "temperature": str(float(cls_checkpoint.get("temperature", 1.0))), "outputs": "logits; probabilities = softmax(logits / temperature)"}),
    ]
    worst = 0.0
    for model, input_shape, file_name, input_name, output_names, metadata in exports:
        path = export(model, torch.randn(2, *input_shape), args.output_dir / file_name, input_name, output_names, args.opset, metadata)
        line = f"wrote {path}"
        if args.check:
            difference = max_difference(model, path, input_shape)
            worst = max(worst, difference)
            line += f" (onnxruntime vs PyTorch: max abs difference {difference:.2e})"
        print(line)
    if worst > TOLERANCE:
        print(f"error: onnxruntime differs from PyTorch by {worst:.2e} > {TOLERANCE:g}; do not use these files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
