"""Int8 calibration of the field models: typical inputs cut from the run's training fields, as validation cuts them.

Its own module so that inference (tools/fields/models.py) and the training data path (tools/fields/data.py) do not
import each other: this module reads the training fields (lazily, as they need torch), inference only calls it.
"""
from pathlib import Path
from typing import List

import numpy as np

from utils.errors import UserError


class CalibrationUnavailable(UserError):
    """The run's training fields are not where its checkpoint says: the field models stay in float32."""


CALIBRATION_FIELDS = 12  # training fields cut into calibration inputs (spread over the split)
CALIBRATION_INPUTS = 64  # model inputs whose activations set the int8 ranges (tools/onnx_export.quantize_graph)


def calibration_batches(checkpoint_path, stage: str, batch_size: int = 1) -> List[dict]:
    """Typical inputs of a field model (`stage`: fields or instances), cut from the run's training fields as
    validation cuts them, for its int8 calibration: {input name: [B, C, S, S]} batches (of one input by default:
    the calibration keeps every activation of a batch alive, 2.1 GB for 4 field tiles against 1.4 GB for one).

    Raises:
        CalibrationUnavailable: the data root or the run's split manifest is not where the checkpoint recorded them.
    """
    from tools.checkpoint import load_checkpoint
    from tools.fields.data import FIELD_LAYOUT_NAMES, CellWindows, FieldTiles, prepare_fields
    from tools.fields.layouts import read_fields
    from tools.onnx_export import UNET_INPUTS
    from tools.run_dir import RunPaths
    from tools.splits import read_manifest

    checkpoint = load_checkpoint(checkpoint_path, stage)
    args = checkpoint["args"]
    data_root = Path(checkpoint.get("provenance", {}).get("data_root") or args["data_root"])
    manifest = Path(args["split_file"]) if args.get("split_file") else RunPaths(args["run_dir"]).manifest(data_root, "fields")
    if not data_root.is_dir() or not manifest.is_file():
        raise CalibrationUnavailable(f"{checkpoint_path}: its training fields ({data_root}, split {manifest}) are not here")
    try:
        records, _ = read_fields(data_root, FIELD_LAYOUT_NAMES.get(args["layout"], "auto"), check=False)
        split_of = read_manifest(manifest, records)
    except UserError as error:  # the data changed since training: no calibration, rather than no prediction
        raise CalibrationUnavailable(str(error)) from None
    train = [record for record in records if split_of.get(record.sample_id) == "train"]
    picked = train[::max(1, len(train) // CALIBRATION_FIELDS)][:CALIBRATION_FIELDS]
    prepared = prepare_fields(picked, float(args["field_scale"]), "int8 calibration fields")
    dataset = FieldTiles(prepared, int(args["tile_size"]), train=False) if stage == "fields" else \
        CellWindows(prepared, int(args["cell_window"]), int(args["instance_size"]), train=False)
    positions = np.linspace(0, len(dataset) - 1, min(CALIBRATION_INPUTS, len(dataset))).astype(int)
    inputs = np.stack([dataset[int(position)][0].numpy() for position in positions])
    name = UNET_INPUTS[stage][0]
    return [{name: inputs[start:start + batch_size]} for start in range(0, len(inputs), batch_size)]
