"""Planning an input of predict.py --fields (tools/fields/slide.py, step 1): what every block needs to know, the
input's scale and tissue, its blocks, and the fingerprint that says whether an earlier run screened it the same way.
"""
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from tools.fields.models import FieldModels
from tools.fields.readers import SlideReader, open_slide
from tools.fields.segment import NUCLEUS_MARGIN
from tools.fields.tissue import TissueMap, everywhere, find_tissue
from utils.files import file_sha1

NO_MPP_NOTE = ("no microns per pixel in its metadata: read as if at the training data's scale (give --mpp); the "
               "same for any other input without them")
LABELS_AUTO_MAX_PX = 25_000_000  # --labels auto: PNG label images and an overlay up to this many pixels (5000 x 5000)


# ---------------------------------------------------------------- what every block needs to know

@dataclass(frozen=True)
class ModelSpec:
    """Where the models are and how to run them; a worker loads them once (loaded_models) and keeps them."""

    field_checkpoint: str
    instance_checkpoint: str
    cls_checkpoint: Optional[str]  # None: cells are segmented, not classified
    onnx_dir: str
    backend: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None  # ONNX Runtime threads per model
    batch_size: int = 8
    precision: str = "fp32"  # the field models' on ONNX Runtime: fp32 or int8 (tools/fields/models.onnx_field_models)


@dataclass(frozen=True)
class ScreenSettings:
    """The flags that change which cells are found (they enter every input's fingerprint)."""

    block: int = 2048  # block side in the input's px
    keep_edge_cells: bool = False
    mpp: Optional[float] = None  # microns per pixel of every input, instead of their metadata
    tissue_threshold: Optional[float] = None  # grey levels from the glass; None: automatic; 0: no glass skipped
    labels: str = "auto"  # auto, tiff or none


@dataclass
class BlockJob:
    """One block to screen: everything screen_block needs, small enough to send to another machine."""

    path: str
    shape: Tuple[int, int]  # the input's (height, width)
    index: int
    region: Tuple[int, int, int, int]  # top, left, bottom, right: the block and its halo, clipped to the input
    core: Tuple[int, int, int, int]  # the block itself: its cells are those whose nucleus centre lies here
    scale: float  # input px -> model px
    units: np.ndarray  # bool: the tissue units that the region touches
    unit: int  # input px per unit
    keep_edge_cells: bool
    with_masks: bool
    models: ModelSpec

    def tissue_mask(self) -> np.ndarray:
        """bool [region height, region width]: where the region lies on tissue units."""
        top, left, bottom, right = self.region
        rows = np.arange(top, bottom) // self.unit - top // self.unit
        cols = np.arange(left, right) // self.unit - left // self.unit
        return self.units[np.ix_(rows, cols)]


# ---------------------------------------------------------------- planning an input

@dataclass
class InputPlan:
    path: Path
    name: str
    reader: SlideReader
    mpp: Optional[float]
    scale: float
    tissue: TissueMap
    blocks: List[Tuple[Tuple[int, int, int, int], Tuple[int, int, int, int]]]  # (region, core)
    labels: str  # png, tiff or none
    fingerprint: str
    notes: List[str] = field(default_factory=list)
    failed: Optional[str] = None
    started: float = field(default_factory=time.perf_counter)


def input_scale(models: FieldModels, input_mpp: Optional[float]) -> float:
    """Input px -> model px: the training data's scale, corrected by the ratio of the microns per pixel of the
    input and of the training data when both are known."""
    if input_mpp is None or models.mpp is None:
        return models.scale
    return models.scale * input_mpp / models.mpp


def plan_blocks(shape: Tuple[int, int], block: int, halo: int, margin: int, tissue: TissueMap):
    """(region, core) of every block that holds tissue, row by row. A block is read no further than its tissue
    (within `margin` px of its core, where its nuclei may reach) and a halo around that: a lone cluster's block is
    read around the cluster, not whole."""
    blocks = []
    for top in range(0, shape[0], block):
        for left in range(0, shape[1], block):
            core = (top, left, min(top + block, shape[0]), min(left + block, shape[1]))
            if not tissue.any_in(*core):
                continue
            reach = (max(top - margin, 0), max(left - margin, 0),
                     min(core[2] + margin, shape[0]), min(core[3] + margin, shape[1]))
            box = tissue.box_in(*reach)
            region = (max(box[0] - halo, 0), max(box[1] - halo, 0), min(box[2] + halo, shape[0]), min(box[3] + halo, shape[1]))
            blocks.append((region, core))
    return blocks


def plan_input(path: Path, name: str, models: FieldModels, settings: ScreenSettings, run_fingerprint: str) -> InputPlan:
    reader = open_slide(path)
    notes = []
    mpp = settings.mpp or reader.mpp
    if mpp is None and models.mpp is not None:  # unknown on the training side: predict.py says so once for the run
        notes.append(NO_MPP_NOTE)
    scale = input_scale(models, mpp)
    if settings.tissue_threshold == 0:
        tissue = everywhere(reader)
    else:
        tissue = find_tissue(reader, threshold=settings.tissue_threshold)
    halo = int(np.ceil(models.window / scale / 2)) + 8  # any cell whose nucleus centre is in the block fits
    margin = int(np.ceil(NUCLEUS_MARGIN * models.nucleus_px / scale))
    blocks = plan_blocks(reader.shape, settings.block, halo, margin, tissue)
    pixels = reader.shape[0] * reader.shape[1]
    labels = settings.labels if settings.labels != "auto" else ("png" if pixels <= LABELS_AUTO_MAX_PX else "none")
    stat = Path(path).stat()
    fingerprint = hashlib.sha1(json.dumps([run_fingerprint, Path(path).name, stat.st_size, stat.st_mtime_ns, mpp, labels],
                                          default=str).encode()).hexdigest()
    return InputPlan(Path(path), name, reader, mpp, scale, tissue, blocks, labels, fingerprint, notes)


def run_fingerprint(spec: ModelSpec, settings: ScreenSettings) -> str:
    """What makes two runs find the same cells: the checkpoints' contents and the settings."""
    files = [spec.field_checkpoint, spec.instance_checkpoint, spec.cls_checkpoint]
    hashes = [file_sha1(Path(f)) if f else None for f in files]
    return hashlib.sha1(json.dumps([hashes, asdict(settings), spec.backend, spec.precision], default=str).encode()).hexdigest()


def block_job(plan: InputPlan, index: int, settings: ScreenSettings, spec: ModelSpec) -> BlockJob:
    region, core = plan.blocks[index]
    unit = plan.tissue.unit
    return BlockJob(str(plan.path), plan.reader.shape, index, region, core, plan.scale, plan.tissue.region(*region).copy(),
                    unit, settings.keep_edge_cells, plan.labels != "none", spec)
