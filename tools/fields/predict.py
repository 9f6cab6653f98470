"""predict.py --fields: the run over fields and slides (tools/fields/slide.Screening), its executor (this process,
threads or a Dask cluster) and its tables (cells.csv, summary.json)."""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from tqdm import tqdm

from tools.inference import resolve_backend
from tools.run_dir import RunPaths
from utils.console import seconds_since_process_start
from utils.errors import UserError


def fields_only(inputs: Sequence[str], paths: Sequence[Path], names: Sequence[str]) -> Tuple[List[Path], List[str]]:
    """The fields among `paths` (with their output names): ISBI 2014 annotations beside them are left out."""
    from tools.fields.layouts import is_isbi_annotation

    kept = [(path, name) for path, name in zip(paths, names) if not is_isbi_annotation(path)]  # masks beside fields
    if not kept:
        raise UserError(f"{' '.join(inputs)}: only annotations found (<name>_cellKK.png, <name>_nuclei.png); "
                        f"pass the field images")
    return [path for path, _ in kept], [name for _, name in kept]


def predict_fields(args: argparse.Namespace, paths: Sequence[Path], names: Sequence[str]) -> int:
    """--fields: every cell of every field or slide, written per input as its blocks finish, then the run's tables."""
    from tools.fields.slide import CallRule, ModelSpec, Screening, ScreenSettings, loaded_models

    backend = resolve_backend(args.backend, args.device)
    has_classifier = Path(args.cls_checkpoint).is_file()
    if not has_classifier:
        print(f"note: no classifier at {args.cls_checkpoint}: the cells are segmented, not classified")
    executor, workers = block_executor(args, backend)
    spec = ModelSpec(str(args.field_checkpoint), str(args.instance_checkpoint),
                     str(args.cls_checkpoint) if has_classifier else None, str(RunPaths(args.run_dir).onnx), backend,
                     args.device, args.threads or max(1, len(os.sched_getaffinity(0)) // workers), args.batch_size,
                     args.precision if backend == "onnx" else "fp32")
    models, classifier = loaded_models(spec)  # exported to ONNX once, here; their scale and window plan the blocks
    if models.mpp is None:
        print("note: the field models' training data had no --mpp: every input is read at its own pixel size")
    class_names = classifier.class_names if classifier else None
    settings = ScreenSettings(args.block_size, args.keep_edge_cells, args.mpp, args.tissue_threshold, args.labels)
    rule = CallRule(args.abnormal_probability, args.abnormal_per_1000, args.min_cells, args.gallery)
    worker_spec = spec if args.scheduler is None else replace(spec, threads=1)  # a Dask worker runs a block per thread
    screening = Screening(worker_spec, settings, rule, args.output_dir, models, class_names, args.force)
    start_up, started = seconds_since_process_start(), time.perf_counter()
    try:
        with tqdm(total=0, desc="blocks", unit="block") as progress:
            screening.run(list(zip(paths, names)), executor, 2 * workers, progress)
    finally:
        executor.shutdown(cancel_futures=True)  # Ctrl-C: blocks not yet started are dropped, not waited for
    write_run_tables(args, screening, backend, {"start_up": round(start_up, 3),
                                                  "predicting": round(time.perf_counter() - started, 3)})
    cells = sum(summary["cells"] for summary in screening.summaries.values())
    print(f"found {cells} cells in {len(screening.summaries)} of {len(paths)} inputs in "
          f"{time.perf_counter() - started:.1f}s (start-up {start_up:.1f}s); wrote {args.output_dir}: per input "
          f"<name>.geojson, <name>_report.html, <name>_summary.json; for the run cells.csv and summary.json")
    for name, summary in screening.summaries.items():
        print(f"  {name}: {summary['cells']} cells, {summary['call']}")
    return 1 if screening.failed else 0


def block_executor(args: argparse.Namespace, backend: str):
    """(executor, blocks it runs at once): a Dask cluster with --scheduler, else this process (threads on ONNX Runtime)."""
    if args.scheduler:
        from tools.fields.cluster import dask_executor

        return dask_executor(args.scheduler)
    workers = (args.workers or len(os.sched_getaffinity(0))) if backend == "onnx" else 1
    if workers == 1:
        from tools.fields.slide import InProcess

        return InProcess(), 1
    return ThreadPoolExecutor(workers), workers


def write_run_tables(args: argparse.Namespace, screening, backend: str, seconds: Dict[str, float]) -> None:
    """cells.csv: every finished input's cells one after another; summary.json: the settings, every input, all pooled."""
    from tools.fields.summary import summarise_cells

    run_csv = args.output_dir / "cells.csv"
    with open(run_csv, "w", newline="") as out:
        for index, summary in enumerate(screening.summaries.values()):
            with open(args.output_dir / summary["outputs"]["cells_csv"], newline="") as table:
                header = table.readline()
                if index == 0:
                    out.write(header)
                out.writelines(table)
        if not screening.summaries:
            out.write("field,id\n")
    run_summary = {"settings": {"field_checkpoint": str(args.field_checkpoint),
                                "instance_checkpoint": str(args.instance_checkpoint),
                                "cls_checkpoint": str(args.cls_checkpoint) if screening.class_names else None,
                                "backend": backend, "scheduler": args.scheduler, "seconds": seconds,
                                "failed": screening.failed},
                   "overall": summarise_cells(run_csv, screening.class_names, screening.rule, None),
                   "fields": screening.summaries}
    (args.output_dir / "summary.json").write_text(json.dumps(run_summary, indent=1))
