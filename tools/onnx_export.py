"""Export trained models to ONNX (dynamic batch axis) and check them against PyTorch with ONNX Runtime.

segmentation.onnx    input  image  [B, 3, S, S]: the letterboxed RGB cell, normalised with ImageNet mean/std
                     output cyt, nuc [B, 1, S, S]: logits of the whole cell and of the nucleus
classification.onnx  input  cell   [B, 5, S, S]: that image, then the cell and nucleus masks (0/1)
                     output logits [B, K]; probabilities = softmax(logits / temperature)
fields.onnx          input  tile   [B, 3, H, W]: a tile of a field at the model scale, normalised as above; any H, W
                     that are multiples of 32 (the training tiles were tile_size a side)
                     output cyt, nuc [B, 1, H, W]: logits of any cell (foreground) and of nuclei
instances.onnx       input  window [B, 4, S, S]: a window around one nucleus, RGB normalised, then that nucleus (0/1)
                     output cyt, nuc [B, 1, S, S]: logits of that nucleus's whole cell and of that nucleus
Each file's metadata holds img_size (the side it was trained at), the checkpoint it was made from (`source`, a
hash of the file: tools/inference.py exports again when the checkpoint or EXPORT_FORMAT changed), for the classifier
class_names and temperature, and for the two field models how tools/fields/segment.py sees a field (field_scale,
tile_size, cell_window, instance_size, nucleus_px, mpp). A classifier that takes cell measurements has a second input,
measurements [B, F]. Letterboxing, tiling, flip averaging and mask clean-up stay outside the graphs.
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
from tools.inputs import mark_output_dir
from tools.onnx_format import EXPORT_FORMAT
from utils.files import file_sha1, written_atomically

TOLERANCE = 1e-4  # largest absolute difference from PyTorch accepted by the check
CHECK_BATCH_SIZES = (1, 3)  # neither is the batch size traced at export, so a fixed batch axis would fail
OPSET = 17
# train_fields.py's args that tools/fields/segment.py needs (nucleus_px and mpp are absent from older runs' checkpoints)
FIELD_SETTINGS = ("field_scale", "tile_size", "cell_window", "instance_size", "nucleus_px", "mpp")
# each U-Net's input name and the checkpoint arg that fixes its side
UNET_INPUTS = {"segmentation": ("image", "img_size"), "fields": ("tile", "tile_size"), "instances": ("window", "instance_size")}


class SegmentationOutputs(torch.nn.Module):
    """The segmentation model with its {'cyt', 'nuc'} dict returned as a tuple in HEADS order: ONNX outputs are positional."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model(image)
        return tuple(logits[head] for head in HEADS)


def export(model: torch.nn.Module, examples: Sequence[torch.Tensor], path: Path, input_names: Sequence[str],
           output_names: Sequence[str], metadata: Dict[str, str], opset: int = OPSET, free_side: bool = False) -> Path:
    """Trace `model` on `examples` into `path`, every input and output with a dynamic batch axis 0 (and, with
    free_side, dynamic height and width).

    The file appears under its name whole, in one rename: predict.py runs started together may export the same
    file at once, and one of them must never open the other's half-written graph.
    """
    axes = {0: "batch", 2: "height", 3: "width"} if free_side else {0: "batch"}
    dynamic_axes = {name: axes for name in (*input_names, *output_names)}
    metadata = {**metadata, "export_format": EXPORT_FORMAT}
    mark_output_dir(path.parent)
    with written_atomically(path) as tmp_path:
        with warnings.catch_warnings():
            # the TorchScript exporter (dynamo=False) is deprecated but works offline with no extra package;
            # the torch.export one needs onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            # shape assertions inside MultiheadAttention, constant for a given model: the check covers them
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, tuple(examples), str(tmp_path), dynamo=False, input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset)
        graph = onnx.load(str(tmp_path))
        onnx.helper.set_model_props(graph, metadata)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp_path))
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


def graph_spec(stage: str, model: torch.nn.Module, checkpoint: Dict, source: str):
    """How a stage's model is exported: (module to trace, [(input name, shape without the batch axis)], output
    names, metadata). source: the checkpoint file's sha1."""
    args = checkpoint["args"]
    if stage == "classification":
        size, num_measurements = args["img_size"], checkpoint["model_config"].get("num_measurements", 0)
        inputs = [("cell", (5, size, size))] + ([("measurements", (num_measurements,))] if num_measurements else [])
        return model, inputs, ["logits"], {
            "img_size": str(size), "source": source, "class_names": json.dumps(checkpoint["class_names"]),
            "temperature": str(float(checkpoint.get("temperature", 1.0))),
            "measurement_model": json.dumps(checkpoint.get("measurement_model")),
            "outputs": "logits; probabilities = softmax(logits / temperature)"}
    # the U-Nets: the instance model sees fixed windows and the single-cell segmenter fixed letterboxed cells; the field
    # model's tiles are of any side that is a multiple of 32 (export_stage)
    input_name, side_arg = UNET_INPUTS[stage]
    size, channels = args[side_arg], checkpoint["model_config"].get("in_chans", 3)
    metadata = {"img_size": str(size), "source": source, "outputs": "logits; mask = sigmoid > 0.5"}
    if stage in ("fields", "instances"):
        metadata.update({key: str(args[key]) for key in FIELD_SETTINGS if key in args})
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and train() would recurse
    return SegmentationOutputs(model).eval(), [(input_name, (channels, size, size))], list(HEADS), metadata


def export_stage(stage: str, checkpoint_path: Path, path: Path, opset: int = OPSET, check: bool = True) -> Tuple[Path, float]:
    """Export one checkpoint of `stage` (segmentation, classification, fields, instances) to `path`.

    Returns (path, max difference from PyTorch on random batches, or nan without the check).
    """
    device = torch.device("cpu")  # the exported graph does not depend on it; CPU keeps the check exact
    model, checkpoint = load_model(checkpoint_path, stage, device)
    module, inputs, output_names, metadata = graph_spec(stage, model, checkpoint, file_sha1(checkpoint_path))
    names, shapes = [name for name, _ in inputs], [shape for _, shape in inputs]
    # the field model is tiled over fields in tiles of any side (tools/fields/segment.py: FIELD_TILE_PX)
    export(module, example_inputs(shapes, 2), Path(path), names, output_names, metadata, opset, free_side=stage == "fields")
    return Path(path), max_difference(module, Path(path), shapes) if check else float("nan")


def export_run(seg_checkpoint: Path, cls_checkpoint: Path, out_dir: Path, opset: int = OPSET,
               check: bool = True) -> Dict[str, Tuple[Path, float]]:
    """Export both single-cell checkpoints into out_dir. Returns {stage: (onnx path, max difference from PyTorch, or nan)}."""
    return {stage: export_stage(stage, checkpoint, Path(out_dir) / f"{stage}.onnx", opset, check)
            for stage, checkpoint in (("segmentation", seg_checkpoint), ("classification", cls_checkpoint))}


# ---------------------------------------------------------------- int8

# Convolutions kept in float32 when a graph is quantised: the stem, which sees the raw image, and the two heads, whose
# logits are thresholded (with them in int8 the EDF fields lost a test-field nucleus or two; docs/experiments-fields.md)
FLOAT_NODES = ("conv_stem", "/head/")


def quantize_graph(fp32: Path, int8: Path, batches: Sequence[Dict[str, np.ndarray]],
                   float_nodes: Sequence[str] = FLOAT_NODES) -> Path:
    """Quantise an exported graph to int8 (static, QDQ: per-channel int8 weights, uint8 activations whose ranges
    are the min-max over `batches`, typical inputs of the model); the convolutions whose names hold one of
    `float_nodes` stay float32. The file keeps the float graph's metadata, with precision 'int8', and appears under
    its name whole."""
    import logging

    import onnxruntime.quantization as quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(batches)

        def get_next(self):
            return next(self.feeds, None)

    logging.getLogger().setLevel(logging.ERROR)  # a warning per LayerNorm weight that has no channel axis to quantise per
    graph = onnx.load(str(fp32))
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    keep = [node.name for node in graph.graph.node if node.op_type == "Conv" and any(part in node.name for part in float_nodes)]
    prepared = int8.with_name(f".{int8.name}.pre.onnx")
    with written_atomically(int8) as tmp_path:
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # it fails on attention reshapes
            quantization.quantize_static(str(prepared), str(tmp_path), Batches(), quant_format=quantization.QuantFormat.QDQ,
                                         per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                         weight_type=quantization.QuantType.QInt8, nodes_to_exclude=keep)
        finally:
            prepared.unlink(missing_ok=True)
        quantized = onnx.load(str(tmp_path))
        onnx.helper.set_model_props(quantized, {**metadata, "precision": "int8"})
        onnx.save(quantized, str(tmp_path))
    return int8
