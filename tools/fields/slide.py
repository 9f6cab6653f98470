"""predict.py --fields: screen fields and whole slides block by block, write each input's cells as blocks finish,
continue where a killed run stopped, and answer for every input.

Every input, a 1000 px field or a 100,000 px slide, goes the same way:
  1. plan (tools/fields/plan.py, in the process that writes): open it (tools/fields/readers.py), find its scale
     (the training data's and the slide's microns per pixel when both are known), map its tissue
     (tools/fields/tissue.py) and cut it into blocks of --block-size px; only blocks with tissue are kept;
  2. screen each block (screen_block: wherever the executor runs it: in this process, in a thread, on a Dask
     worker): read the block with a halo, find its cells (tools/fields/segment.py; the field model skips
     tiles without tissue), drop those whose nucleus the image's border cuts, classify the rest, and return
     them as small CellRecords;
  3. write (here, in block order, whatever order blocks finish in): append each block to the input's GeoJSON
     and cells.csv (tools/fields/journal.py), so a killed run continues from its last finished block;
  4. finish: close both files, write the label images when wanted (tools/fields/labels.py), <name>_summary.json
     with the slide's call (tools/fields/summary.py) and <name>_report.html (tools/fields/report.py).
"""
import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tools.fields.journal import SlideJournal
from tools.fields.labels import write_labels
from tools.fields.models import FieldModels
from tools.fields.outputs import CellRecord, cell_record
from tools.fields.plan import BlockJob, InputPlan, ModelSpec, ScreenSettings, block_job, plan_input, run_fingerprint
from tools.fields.readers import SlideReader, open_slide
from tools.fields.segment import classify_cells, nucleus_on_edge, segment_block
from tools.fields.summary import CallRule, summarise_cells
from utils.errors import UserError, note_kept
from utils.files import written_atomically

# ---------------------------------------------------------------- screening one block, wherever it runs

_loaded: Dict[ModelSpec, tuple] = {}
_readers: Dict[str, SlideReader] = {}
_lock = threading.Lock()


def loaded_models(spec: ModelSpec) -> Tuple[FieldModels, Optional[object]]:
    """The field models and the classifier's pipeline of `spec`, loaded once per process."""
    with _lock:
        if spec not in _loaded:
            from tools.fields.models import load_field_models
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
