"""predict.py --fields: screen fields and whole slides block by block, write each input's cells as blocks finish,
continue where a killed run stopped, and answer for every input.

Every input, a 1000 px field or a 100,000 px slide, goes the same way:
  1. plan (here, in the process that writes): open it (tools/fields/readers.py), find its scale (the training
     data's and the slide's microns per pixel when both are known), map its tissue (tools/fields/tissue.py) and
     cut it into blocks of --block-size px; only blocks with tissue are kept;
  2. screen each block (screen_block: wherever the executor runs it: in this process, in a thread, on a Dask
     worker): read the block with a halo, find its cells (tools/fields/segment.py; the field model skips
     tiles without tissue), drop those whose nucleus the image's border cuts, classify the rest, and return
     them as small CellRecords;
  3. write (here, in block order, whatever order blocks finish in): append each block to the input's GeoJSON
     and cells.csv (tools/fields/journal.py), so a killed run continues from its last finished block;
  4. finish: close both files, write the label images when wanted, <name>_summary.json with the slide's call
     (tools/fields/summary.py) and <name>_report.html (tools/fields/report.py).
"""
import hashlib
import json
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tools.fields.journal import SlideJournal
from tools.fields.outputs import CellRecord, cell_record
from tools.fields.readers import SlideReader, open_slide
from tools.fields.segment import NUCLEUS_MARGIN, FieldModels, classify_cells, nucleus_on_edge, segment_block
from tools.fields.summary import CallRule, summarise_cells
from tools.fields.tissue import TissueMap, everywhere, find_tissue
from utils.errors import UserError, note_kept
from utils.files import file_sha1, written_atomically

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
    precision: str = "fp32"  # the field models' on ONNX Runtime: fp32 or int8 (tools/fields/segment.onnx_field_models)


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


_loaded: Dict[ModelSpec, tuple] = {}
_readers: Dict[str, SlideReader] = {}
_lock = threading.Lock()


def loaded_models(spec: ModelSpec) -> Tuple[FieldModels, Optional[object]]:
    """The field models and the classifier's pipeline of `spec`, loaded once per process."""
    with _lock:
        if spec not in _loaded:
            from tools.fields.segment import load_field_models
            from tools.inference import load_pipeline

            models = load_field_models(spec.field_checkpoint, spec.instance_checkpoint, spec.onnx_dir, spec.backend,
                                       spec.device, spec.threads, spec.batch_size, spec.precision)
            classifier = None if spec.cls_checkpoint is None else \
                load_pipeline(None, spec.cls_checkpoint, spec.onnx_dir, spec.backend, spec.device, spec.threads)
            _loaded[spec] = (models, classifier)
        return _loaded[spec]


def slide_reader(path: str) -> SlideReader:
    with _lock:
        if path not in _readers:
            _readers[path] = open_slide(path)
        return _readers[path]


def region_read(reader: SlideReader, image: np.ndarray, region: Tuple[int, int, int, int]):
    """read(top, left, bottom, right) from the block already in memory when it holds the window, else the file."""
    def read(top, left, bottom, right):
        if top >= region[0] and left >= region[1] and bottom <= region[2] and right <= region[3]:
            return image[top - region[0]:bottom - region[0], left - region[1]:right - region[1]]
        return reader.read(top, left, bottom, right)

    return read


def screen_block(job: BlockJob) -> List[CellRecord]:
    """The cells of one block (module docstring, step 2), as records in slide px."""
    reader = slide_reader(job.path)
    models, classifier = loaded_models(job.models)
    image = reader.read(*job.region)
    cells = segment_block(image, job.region, job.core, models, job.scale, job.tissue_mask())
    if not job.keep_edge_cells:
        cells = [cell for cell in cells if not nucleus_on_edge(cell, job.shape)]
    class_names = None
    if classifier is not None and cells:
        classify_cells(region_read(reader, image, job.region), job.shape, cells, classifier, job.models.batch_size)
        class_names = classifier.class_names
    records = (cell_record(cell, class_names, job.with_masks) for cell in cells)
    return [record for record in records if record is not None]


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
            reach = (max(top - margin, 0), max(left - margin, 0), min(core[2] + margin, shape[0]), min(core[3] + margin, shape[1]))
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


# ---------------------------------------------------------------- running blocks in order

class InProcess:
    """An executor that runs each task as it is submitted (one worker, no threads)."""

    def submit(self, function, *args) -> Future:
        future = Future()
        try:
            future.set_result(function(*args))
        except BaseException as error:  # handed to whoever asks for the result, as a pool would
            future.set_exception(error)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def done(value=None) -> Future:
    future = Future()
    future.set_result(value)
    return future


def in_order(executor, items: Iterator, window: int) -> Iterator[Tuple[object, Future]]:
    """(item, its finished future) in the items' order, with up to `window` blocks in flight at once.

    Items with a .job are submitted (screen_block); others pass through. Results wait for every earlier one, so
    what is written never depends on which worker was faster."""
    pending = deque()
    for item in items:
        job = getattr(item, "job", None)
        pending.append((item, executor.submit(screen_block, job) if job is not None else done()))
        while pending and (len(pending) > window or pending[0][1].done()):
            yield pending.popleft()
    while pending:
        item, future = pending.popleft()
        future.exception()  # wait
        yield item, future


@dataclass
class BlockItem:
    plan: InputPlan
    journal: SlideJournal
    job: BlockJob


@dataclass
class FinishItem:
    plan: InputPlan
    journal: Optional[SlideJournal]  # None: the input was finished by an earlier run


# ---------------------------------------------------------------- the run

@dataclass
class Screening:
    """One predict.py --fields run: what it screens, with what, and where it writes."""

    spec: ModelSpec
    settings: ScreenSettings
    rule: CallRule
    output_dir: Path
    models: FieldModels  # loaded here too: scale, window and mpp plan the blocks
    class_names: Optional[List[str]]
    force: bool = False
    summaries: Dict[str, Dict] = field(default_factory=dict)
    failed: List[Dict] = field(default_factory=list)
    progress: object = None
    said: set = field(default_factory=set)  # notes said once for the whole run

    def items(self, inputs: Sequence[Tuple[Path, str]]) -> Iterator:
        """Every input's blocks still to screen, then its finishing step; inputs are planned as the run reaches them."""
        fingerprint = run_fingerprint(self.spec, self.settings)
        for path, name in inputs:
            try:
                plan = plan_input(path, name, self.models, self.settings, fingerprint)
            except UserError as error:
                self.fail(str(path), str(error))
                continue
            for note in plan.notes:
                if note not in self.said:
                    self.say(f"note: {path}: {note}")
                    self.said.add(note)
            if not self.force and self.finished_before(plan):
                yield FinishItem(plan, None)
                continue
            journal = SlideJournal(self.output_dir, name, plan.fingerprint, len(plan.blocks), self.class_names,
                                   plan.labels != "none")
            note = journal.open()
            if note:
                self.say(f"note: {path}: {note}")
            if self.progress is not None:
                self.progress.total += len(plan.blocks) - journal.progress.done
                self.progress.refresh()
            for index in range(journal.progress.done, len(plan.blocks)):
                if plan.failed:
                    break
                yield BlockItem(plan, journal, block_job(plan, index, self.settings, self.spec))
            yield FinishItem(plan, journal)

    def run(self, inputs: Sequence[Tuple[Path, str]], executor, window: int, progress=None) -> None:
        """Screen every input (module docstring); progress: a tqdm bar, told of every block planned and finished."""
        self.progress = progress
        for item, future in in_order(executor, self.items(inputs), window):
            if item.plan.failed:
                continue
            if isinstance(item, BlockItem):
                try:
                    records = future.result()
                except UserError as error:
                    item.plan.failed = str(error)
                    self.fail(str(item.plan.path), str(error))
                    continue
                item.journal.append(item.job.index, records)
                note_kept(f"{item.journal.folder} holds {item.journal.progress.done} of {len(item.plan.blocks)} blocks "
                          f"of {item.plan.path.name}: the same command continues from there")
                if self.progress is not None:
                    self.progress.update(1)
            else:
                self.finish(item)

    def fail(self, path: str, error: str) -> None:
        self.failed.append({"file": path, "error": error})
        self.say(f"skipped {error}", sys.stderr)

    def say(self, line: str, file=None) -> None:
        """A line above the progress bar (or plain, without one)."""
        if self.progress is not None:
            self.progress.write(line, file=file)
        else:
            print(line, file=file)

    # ---------------------------------------------------------------- the end of an input

    def summary_path(self, name: str) -> Path:
        stem = self.output_dir / name
        return stem.with_name(f"{stem.name}_summary.json")

    def finished_before(self, plan: InputPlan) -> bool:
        try:
            return json.loads(self.summary_path(plan.name).read_text()).get("fingerprint") == plan.fingerprint
        except (OSError, ValueError):
            return False

    def finish(self, item: FinishItem) -> None:
        plan, journal = item.plan, item.journal
        from tools.fields.report import write_report

        if journal is None:  # screened by an earlier run: its call is made again (the thresholds may have changed)
            summary = json.loads(self.summary_path(plan.name).read_text())
            cells_csv = self.summary_path(plan.name).with_name(f"{Path(plan.name).name}_cells.csv")
            self.say(f"{plan.path}: screened before with these models and settings (--force screens it again)")
        else:
            _, cells_csv = journal.close()
            write_labels(plan, journal, self.output_dir, self.class_names)
            summary = self.describe(plan)
        summary.update(summarise_cells(cells_csv, self.class_names, self.rule, plan.mpp))
        report = write_report(plan, summary, cells_csv, self.output_dir, self.class_names)
        stem = Path(plan.name)  # the outputs' paths below the output folder
        summary["outputs"] = {"geojson": f"{stem}.geojson", "cells_csv": str(stem.parent / cells_csv.name),
                              "report": str(stem.parent / report.name)}
        with written_atomically(self.summary_path(plan.name)) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if journal is not None:
            journal.remove()
        self.summaries[plan.name] = summary
        plan.reader.close()

    def describe(self, plan: InputPlan) -> Dict:
        tissue = plan.tissue
        return {"input": str(plan.path), "format": plan.reader.format, "shape": list(plan.reader.shape), "mpp": plan.mpp,
                "scale": round(plan.scale, 6), "blocks": len(plan.blocks),
                "tissue": {"share": round(tissue.tissue_share, 4), "skipped_share": round(1 - tissue.tissue_share, 4),
                           "glass_rgb": list(tissue.glass_rgb), "threshold": round(tissue.threshold, 2)},
                "seconds": round(time.perf_counter() - plan.started, 2), "fingerprint": plan.fingerprint}


# ---------------------------------------------------------------- label images

def write_labels(plan: InputPlan, journal: SlideJournal, output_dir: Path, class_names) -> None:
    """PNG labels and an overlay for an image that fits in memory; tiled TIFF labels, strip by strip, for a slide."""
    if plan.labels == "none":
        return
    stem = output_dir / plan.name
    if plan.labels == "png":
        from tools.fields.outputs import class_colours, label_images, overlay
        from utils.files import write_image

        numbered = [item for index in range(len(plan.blocks)) for item in journal.block_records(index)]
        cell_labels, nuc_labels = label_images(numbered, plan.reader.shape)
        write_image(stem.with_name(f"{stem.name}_cells.png"), cell_labels)
        write_image(stem.with_name(f"{stem.name}_nuclei.png"), nuc_labels)
        image = plan.reader.read(0, 0, *plan.reader.shape)
        colours = class_colours(class_names) if class_names else {}
        write_image(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, [r for _, r in numbered], class_names, colours))
        return
    for kind in ("cells", "nuclei"):
        write_label_tiff(stem.with_name(f"{stem.name}_{kind}.tif"), plan, journal, kind == "nuclei")


LABEL_TILE_PX = 512


def write_label_tiff(path: Path, plan: InputPlan, journal: SlideJournal, nuclei: bool) -> None:
    """uint32 instance labels as a tiled, deflate-compressed TIFF; only the blocks that reach a strip are loaded."""
    import tifffile

    height, width = plan.reader.shape
    cache: Dict[int, list] = {}

    def tiles():
        for top in range(0, height, LABEL_TILE_PX):
            bottom = min(top + LABEL_TILE_PX, height)
            reaching = [i for i, (region, _) in enumerate(plan.blocks) if region[0] < bottom and region[2] > top]
            for index in list(cache):
                if index not in reaching:
                    del cache[index]
            for index in reaching:
                if index not in cache:
                    cache[index] = journal.block_records(index)
            from tools.fields.outputs import paint_labels

            labels = paint_labels([item for index in reaching for item in cache[index]], top, 0, bottom - top, width)[nuclei]
            for left in range(0, width, LABEL_TILE_PX):
                yield np.ascontiguousarray(labels[:, left:left + LABEL_TILE_PX])

    with written_atomically(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=(height, width), dtype=np.uint32, tile=(LABEL_TILE_PX, LABEL_TILE_PX),
                         compression="zlib", metadata=None)
