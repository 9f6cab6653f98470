"""The two field models (train_fields.py's fields and instances), loaded for inference: run by ONNX Runtime (the CPU's
default: fields.onnx and instances.onnx, exported once per checkpoint into the run's outputs/onnx, float32 or int8) or
by PyTorch (CUDA, --backend torch), with how they see a field (scale, tile, cell window) from their checkpoints' args.
"""
from dataclasses import dataclass
from typing import Mapping, Optional

from tools.fields.int8_calibration import CalibrationUnavailable, calibration_batches
from tools.inference import Backend, onnx_backend, resolve_backend

# Runs from before nucleus_px was recorded were trained with nuclei about this size (fields.data.NUCLEUS_TARGET_PX then)
UNRECORDED_NUCLEUS_PX = 16.0


@dataclass
class FieldModels:
    """The two stage-1 field models and how they see a field (from their checkpoints' args)."""

    field: Backend  # [B, 3, T, T] -> [B, 2, T, T] logits: foreground, nuclei
    instances: Backend  # [B, 4, S, S] -> [B, 2, S, S] logits: the marked nucleus's cell, that nucleus
    scale: float  # field pixels -> model pixels
    tile: int  # T, the side of the training tiles
    window: int  # side of a cell's window at the model scale
    instance_size: int  # S
    nucleus_px: float  # the median training nucleus's diameter at the model scale
    batch_size: int = 8
    mpp: Optional[float] = None  # microns per pixel of the training fields (train_fields.py --mpp), when known


def torch_field_models(fields_checkpoint, instances_checkpoint, device, batch_size: int = 8) -> FieldModels:
    """The two field models from their checkpoints (train_fields.py), run by PyTorch on `device`."""
    from tools.checkpoint import load_model
    from tools.inference import TorchBackend

    field_model, field_state = load_model(fields_checkpoint, "fields", device)
    instance_model, instance_state = load_model(instances_checkpoint, "instances", device)
    return field_models(TorchBackend(field_model, device), TorchBackend(instance_model, device),
                        int(field_state["args"]["tile_size"]), instance_state["args"], batch_size)


def onnx_field_models(onnx_dir, fields_checkpoint, instances_checkpoint, threads: Optional[int] = None,
                      batch_size: int = 8, precision: str = "fp32") -> FieldModels:
    """The two field models run by ONNX Runtime from <onnx_dir>/{fields,instances}.onnx (exported once per checkpoint);
    their metadata carry the checkpoints' args, read as torch_field_models reads them.

    precision 'int8': from <onnx_dir>/{fields,instances}.int8.onnx, quantised once per checkpoint on inputs cut from
    the run's training fields (tools/fields/int8_calibration.py); float32, with a note, where those fields are
    not to be found."""
    checkpoints = {"fields": fields_checkpoint, "instances": instances_checkpoint}
    backends = {}
    for stage, checkpoint in checkpoints.items():
        calibration = (lambda stage=stage, checkpoint=checkpoint: calibration_batches(checkpoint, stage)) \
            if precision == "int8" else None
        try:
            backends[stage] = onnx_backend(onnx_dir, stage, checkpoint, threads, calibration)
        except CalibrationUnavailable as error:
            print(f"note: {error}: the {stage} model runs in float32, not int8")
            backends[stage] = onnx_backend(onnx_dir, stage, checkpoint, threads)
    field, instances = backends["fields"], backends["instances"]
    return field_models(field, instances, int(field.metadata["tile_size"]), instances.metadata, batch_size)


def field_models(field: Backend, instances: Backend, tile: int, settings: Mapping, batch_size: int) -> FieldModels:
    """FieldModels with train_fields.py's args as the instance checkpoint holds them (its ONNX metadata: as strings)."""
    mpp = settings.get("mpp")
    return FieldModels(field, instances, float(settings["field_scale"]), tile, int(settings["cell_window"]),
                       int(settings["instance_size"]), float(settings.get("nucleus_px", UNRECORDED_NUCLEUS_PX)),
                       batch_size, float(mpp) if mpp not in (None, "", "None") else None)


def load_field_models(fields_checkpoint, instances_checkpoint, onnx_dir, backend: str = "auto", device_name: str = "auto",
                      threads: Optional[int] = None, batch_size: int = 8, precision: str = "fp32") -> FieldModels:
    """The two field models, run by ONNX Runtime or PyTorch as tools/inference.load_pipeline chooses for the cells.

    Args:
        onnx_dir: where the exported files are kept (the run's outputs/onnx).
        backend: 'onnx', 'torch', or 'auto' (tools/inference.resolve_backend).
        device_name: PyTorch's device (auto, cpu, cuda, cuda:N).
        threads: ONNX Runtime threads (default: the cores this process may use).
        precision: 'fp32', or 'int8' (ONNX Runtime only: onnx_field_models).
    """
    if resolve_backend(backend, device_name) == "onnx":
        return onnx_field_models(onnx_dir, fields_checkpoint, instances_checkpoint, threads, batch_size, precision)
    from tools.acceleration import resolve_device

    return torch_field_models(fields_checkpoint, instances_checkpoint, resolve_device(device_name), batch_size)
