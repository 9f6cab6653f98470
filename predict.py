"""Run both trained stages on new cell images: masks, class, class probabilities and morphometrics.

    python predict.py cells/ --run-dir runs/demo                    # -> runs/demo/outputs/predictions/
    python predict.py 'slides/**/*.tif' cell.png --explain --output-dir preds

Per image, at the image's own size: <name>_cyt.png (whole cell) and <name>_nuc.png (nucleus) masks (0/255),
<name>_overlay.png (outlines: cell green, nucleus red) and, with --explain, <name>_gradcam.png. <name> is
the image's path below the common folder of all images, without extension, so that equal file names in
different folders do not collide. For the run: predictions.csv and predictions.json.
An image that cannot be read is named on stderr and skipped; the exit code is then 1 (0 when every image
was predicted, 2 for a usage error or a bad checkpoint).
"""
import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tools.config import (
    HelpFormatter,
    check_named_file,
    checked,
    checkpoint_parser,
    device_name,
    name_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_checkpoints,
    unit_fraction,
)
from tools.inference import (
    CellPipeline,
    CellPrediction,
    batched,
    load_pipeline,
    resolve_backend,
)
from tools.fields.readers import SLIDE_EXTENSIONS
from tools.inputs import OUTPUT_MARKER, input_files, mark_output_dir, split_pattern
from tools.layouts import IMAGE_EXTENSIONS, paired_mask_files
from tools.morphometry import FEATURE_NAMES, cell_measurements
from tools.run_dir import RunLock, RunPaths
from utils.console import seconds_since_process_start
from utils.errors import UserError, exit_on_user_error
from utils.files import write_image
from utils.overlays import blend_heatmap, overlay_masks
from utils.preprocessing import read_image, unletterbox

CELL_BATCH_SIZE, FIELD_BATCH_SIZE = 16, 4  # --batch-size's defaults (its help says why they differ)
block_side = checked(int, lambda v: v >= 256, "a whole number >= 256 (px)")
NC_RATIO_DEFINITION = "nucleus area / cytoplasm area, cytoplasm = whole cell minus nucleus (pixels); the other " \
                      "measurements are defined in tools/morphometry.py"


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python predict.py cells/ --run-dir runs/demo\n"
                    "Segment and classify single-cell images with the trained checkpoints. Writes, per image, "
                    "<name>_cyt.png (whole cell) and <name>_nuc.png masks (0/255, the image's size), <name>_overlay.png "
                    "and with --explain <name>_gradcam.png (<name>: the image's path below the inputs' common folder, "
                    "without extension), and predictions.csv/.json for the run. Exit code 0: every "
                    "image predicted; 1: some image could not be read (named on stderr); 2: usage error or bad checkpoint.",
        parents=[checkpoint_parser()], formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or glob patterns, quoted ('cells/**/*.png'); "
                             f"folders and globs yield {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files, each once, leaving "
                             f"out hidden files, the masks of a paired layout (<n>N.png, <n>C.png beside <n>.bmp) and "
                             f"what this project wrote (folders holding {OUTPUT_MARKER}, earlier masks and overlays); "
                             f"with --fields also the slides {', '.join(e[1:] for e in SLIDE_EXTENSIONS)}")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the masks, overlays and tables (default: RUN_DIR/outputs/predictions; with --fields "
                             "RUN_DIR/outputs/fields)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per forward pass of each stage (default: 16 cells; --fields: 4 tiles or cell "
                             "windows: two blocks at once then peak near 0.7 GB where 16 took 1.4 GB, at the same "
                             "speed)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--explain", action="store_true",
                        help="also write <name>_gradcam.png: Grad-CAM of the predicted class on the classifier's last stage "
                             "(runs the models in PyTorch)")
    parser.add_argument("--backend", default="auto", **name_flag(["auto", "onnx", "torch"]),
                        help="onnx: ONNX Runtime on the CPU, exported once into RUN_DIR/outputs/onnx and reused; torch: "
                             "PyTorch; auto: PyTorch on a CUDA machine (or --device cuda) and for --explain, else ONNX "
                             "(cells and --fields alike)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="cells: batches predicted at once, each in its own thread (ONNX Runtime only; measured "
                             "1.26x the cells/s of one batch on 2 threads); --fields: blocks screened at once "
                             "(default: the cores this process may use)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime threads of each batch (default: the cores this process may use, shared "
                             "among --workers)")
    fields = parser.add_argument_group(
        "fields of view and whole slides (--fields): every INPUT is a whole field or slide (PNG, BMP, JPEG, TIFF, and "
        "every scanner format OpenSlide reads: .svs, .ndpi, .mrxs, .scn, DICOM, ...); per input <name>.geojson (QuPath "
        "cell objects), <name>_cells.csv, <name>_summary.json (counts, the call, the most suspicious cells) and "
        "<name>_report.html, and for images up to 25 megapixels <name>_cells.png, <name>_nuclei.png (uint16 instance "
        "labels) and <name>_overlay.png; for the run cells.csv and summary.json. A killed run continues from its last "
        "finished block when run again; an input already finished is not screened again")
    fields.add_argument("--fields", action="store_true",
                        help="find, separate and classify every cell of whole fields or slides (main_segment.py's field models)")
    fields.add_argument("--field-checkpoint", type=Path, default=None,
                        help="the field model (default: RUN_DIR/checkpoints/fields_best.pth)")
    fields.add_argument("--instance-checkpoint", type=Path, default=None,
                        help="the instance model (default: RUN_DIR/checkpoints/instances_best.pth)")
    fields.add_argument("--block-size", type=block_side, default=2048,
                        help="inputs are screened in blocks of this many px a side, at least 256 (memory follows it, "
                             "not the slide; smaller blocks repeat more of the halo around them)")
    fields.add_argument("--keep-edge-cells", action="store_true",
                        help="also keep the cells whose nucleus the image's border cuts (dropped by default: their "
                             "nuclear size and grade cannot be measured)")
    fields.add_argument("--mpp", type=positive_float, default=None,
                        help="microns per pixel of the inputs, instead of what their metadata say (slides are brought "
                             "to the training data's scale when both are known; unknown: read at their own pixel size)")
    fields.add_argument("--tissue-threshold", type=non_negative_float, default=None,
                        help="grey levels from the glass colour that count as cells on the low-resolution overview; "
                             "blocks and tiles without any are skipped; 0: screen everything (default: 10, or 6 times "
                             "the glass's noise when larger)")
    fields.add_argument("--labels", default="auto", choices=["auto", "tiff", "none"],
                        help="instance label images: auto: PNG (and an overlay) for inputs up to 25 megapixels, none "
                             "above; tiff: uint32 tiled TIFF <name>_cells.tif and <name>_nuclei.tif for any size")
    fields.add_argument("--force", action="store_true",
                        help="screen inputs again that an earlier run finished with the same models and settings "
                             "(without it they are skipped and only their call and report are made again)")
    fields.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                        help="the two field models on ONNX Runtime: fp32, or int8, quantised once per checkpoint on the "
                             "run's training fields (float32 where they are not at hand): 1.15-1.8x the speed, nucleus "
                             "F1 within 0.01 of float32 on the 8 ISBI 2014 EDF fields (docs/speed.md: whole slides)")
    fields.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the blocks on a running Dask cluster (e.g. tcp://10.0.0.5:8786) whose scheduler and "
                             "workers have this repository on their PYTHONPATH (README: many slides, many machines); "
                             "default: in this process, --workers blocks at once")
    call = parser.add_argument_group("the call per slide (<name>_summary.json, <name>_report.html)")
    call.add_argument("--abnormal-probability", type=unit_fraction, default=0.5,
                      help="a cell counts as abnormal from this summed probability of the abnormal classes")
    call.add_argument("--abnormal-per-1000", type=non_negative_float, default=5.0,
                      help="a slide is called abnormal from this many abnormal cells per 1000 cells")
    call.add_argument("--min-cells", type=non_negative_int, default=5000,
                      help="fewer cells: 'unsatisfactory', too few to call (The Bethesda System's 5000 squamous cells "
                           "for a liquid-based slide)")
    call.add_argument("--gallery", type=non_negative_int, default=50,
                      help="most suspicious cells listed in the summary and shown in the report")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (FIELD_BATCH_SIZE if args.fields else CELL_BATCH_SIZE)
    for flag in ("seg_checkpoint", "cls_checkpoint", "field_checkpoint", "instance_checkpoint"):
        if getattr(args, flag) is not None:  # given: a typo must not pass for "no classifier" (--fields runs without one)
            check_named_file(getattr(args, flag), "checkpoint", f"pass the checkpoint's path to --{flag.replace('_', '-')}")
    resolve_checkpoints(args)
    run = RunPaths(args.run_dir)
    args.output_dir = args.output_dir or (run.field_predictions if args.fields else run.predictions)
    args.field_checkpoint = args.field_checkpoint or run.checkpoint("fields")
    args.instance_checkpoint = args.instance_checkpoint or run.checkpoint("instances")
    return args


# ---------------------------------------------------------------- which images, under which names

def find_images(inputs: Sequence[str], slides: bool = False) -> List[Path]:
    """Expand files, folders and globs into image paths, each once (tools/inputs.input_files), in the order given,
    leaving out the masks of a paired layout (<n>N.png, <n>C.png beside <n>.bmp).

    A named file is taken whatever its extension (OpenCV reads the bytes, not the name); an input that yields
    nothing is a usage error: it is most likely a typo. With `slides` (--fields), folders and globs also yield
    whole-slide files (SLIDE_EXTENSIONS), and the .dcm files of one folder are one DICOM slide.
    """
    images = input_files(inputs, IMAGE_EXTENSIONS + (SLIDE_EXTENSIONS if slides else ()))
    masks = paired_mask_files(images)  # each beside its image, which stays: never all of them
    return one_per_dicom_folder([image for image in images if image not in masks])


def one_per_dicom_folder(paths: Sequence[Path]) -> List[Path]:
    """A DICOM whole-slide image is a folder of .dcm files, one per level; OpenSlide opens it from any of them."""
    seen, kept = set(), []
    for path in paths:
        if path.suffix.lower() == ".dcm":
            if path.parent in seen:
                continue
            seen.add(path.parent)
        kept.append(path)
    return kept


def check_outputs_apart(inputs: Sequence[str], output_dir: Path) -> None:
    """The masks and overlays must not land among the input images, where a later run would take them as cells."""
    output = Path(output_dir).resolve()
    for text in inputs:
        if Path(text).is_file():
            continue  # a named file stays where it is, whatever is written beside it
        folder = Path(text) if Path(text).is_dir() else split_pattern(text)[0]  # find_images took it: a folder or a glob
        if folder.resolve().is_relative_to(output):
            raise UserError(f"--output-dir {output_dir}: it holds the input folder {folder}, so the masks and overlays "
                            f"would land among the images; pass an --output-dir outside the inputs")


def output_names(images: Sequence[Path]) -> List[str]:
    """Each image's path below the images' common folder, without extension (with it where two would clash)."""
    absolute = [Path(os.path.abspath(p)) for p in images]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    names = [p.relative_to(root).with_suffix("").as_posix() for p in absolute]
    clashes = Counter(names)
    return [p.relative_to(root).as_posix() if clashes[name] > 1 else name for p, name in zip(absolute, names)]


# ---------------------------------------------------------------- what is written

def gradcam_heatmaps(pipeline: CellPipeline, images: Sequence[np.ndarray], cells: Sequence[CellPrediction]) -> List[np.ndarray]:
    """Grad-CAM of each cell's predicted class (PyTorch classifier), at its image's size."""
    import torch

    from tools.gradcam import grad_cam

    backend = pipeline.classifier
    inputs, _ = pipeline.classifier_inputs(images, [(c.cell_mask, c.nuc_mask) for c in cells])
    tensors = [torch.from_numpy(array).to(backend.device) for array in inputs]
    cams = grad_cam(backend.model, tensors[0], [int(c.probs.argmax()) for c in cells], *tensors[1:]).numpy()
    return [unletterbox(cam, cell.box, image.shape[:2]) for cam, cell, image in zip(cams, cells, images)]


def morphometrics(image: np.ndarray, cell: CellPrediction) -> Dict[str, Optional[float]]:
    """Every measurement of tools/morphometry.py, with nc_ratio None (not 0) when no cytoplasm was found."""
    values = cell.measurements if cell.measurements is not None else cell_measurements(image, cell.cell_mask, cell.nuc_mask)
    named = {name: float(value) for name, value in zip(FEATURE_NAMES, values)}
    named["nucleus_area_px"], named["cytoplasm_area_px"] = int(named["nucleus_area_px"]), int(named["cytoplasm_area_px"])
    if not named["cytoplasm_found"] or not named["nucleus_found"]:
        named["nc_ratio"] = None
    return named


def write_cell_outputs(output_dir: Path, name: str, image: np.ndarray, cell: CellPrediction,
                       heatmap: Optional[np.ndarray]) -> Dict[str, str]:
    stem = output_dir / name
    written = {
        "cyt_mask": write_image(stem.with_name(f"{stem.name}_cyt.png"), cell.cell_mask.astype(np.uint8) * 255),
        "nuc_mask": write_image(stem.with_name(f"{stem.name}_nuc.png"), cell.nuc_mask.astype(np.uint8) * 255),
        "overlay": write_image(stem.with_name(f"{stem.name}_overlay.png"), overlay_masks(image, cell.cell_mask, cell.nuc_mask)),
    }
    if heatmap is not None:
        written["gradcam"] = write_image(stem.with_name(f"{stem.name}_gradcam.png"), blend_heatmap(image, heatmap))
    return written


def prediction_row(path: Path, name: str, image: np.ndarray, cell: CellPrediction, class_names: Sequence[str],
                   outputs: Dict[str, str]) -> Dict:
    return {"file": str(path), "name": name, "predicted_class": class_names[int(cell.probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(class_names, cell.probs)},
            "measurements": morphometrics(image, cell), "outputs": outputs}


def write_tables(output_dir: Path, rows: List[Dict], failed: List[Dict], pipeline: CellPipeline, args: argparse.Namespace,
                 seconds: Dict[str, float]) -> None:
    """predictions.csv (one row per predicted image) and predictions.json (the same, plus the run's settings and failures)."""
    columns = ["file", "name", "predicted_class", *(f"prob_{c}" for c in pipeline.class_names), *FEATURE_NAMES]
    with open(output_dir / "predictions.csv", "w", newline="") as table:
        writer = csv.DictWriter(table, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in ("file", "name", "predicted_class")},
                             **{f"prob_{c}": f"{p:.6f}" for c, p in row["probabilities"].items()},
                             **{k: "" if v is None else f"{v:.6g}" for k, v in row["measurements"].items()}})
    summary = {"seg_checkpoint": str(args.seg_checkpoint), "cls_checkpoint": str(args.cls_checkpoint),
               "class_names": pipeline.class_names, "temperature": pipeline.temperature,
               "nc_ratio": NC_RATIO_DEFINITION, "seconds": seconds, "predictions": rows, "failed": failed}
    (output_dir / "predictions.json").write_text(json.dumps(summary, indent=1))


# ---------------------------------------------------------------- the run

def read_readable(paths: Sequence[Path], failed: List[Dict]):
    """(path indices, RGB images) of the paths that decode; each one that does not goes to `failed` and stderr."""
    indices, images = [], []
    for index, path in enumerate(paths):
        try:
            images.append(read_image(path))
            indices.append(index)
        except UserError as error:
            failed.append({"file": str(path), "error": str(error)})
            tqdm.write(f"skipped {error}", file=sys.stderr)
    return indices, images


def predict_chunk(pipeline: CellPipeline, args: argparse.Namespace, chunk: Sequence, failed: List[Dict]) -> List[Dict]:
    """The rows of one batch of (path, name): read, both stages, outputs written; unreadable images go to `failed`."""
    indices, images = read_readable([path for path, _ in chunk], failed)
    cells = pipeline.predict(images) if images else []
    heatmaps = gradcam_heatmaps(pipeline, images, cells) if args.explain and images else [None] * len(cells)
    rows = []
    for index, image, cell, heatmap in zip(indices, images, cells, heatmaps):
        path, name = chunk[index]
        outputs = write_cell_outputs(args.output_dir, name, image, cell, heatmap)
        rows.append(prediction_row(path, name, image, cell, pipeline.class_names, outputs))
    return rows


def predict_fields(args: argparse.Namespace, paths: Sequence[Path], names: Sequence[str]) -> int:
    """--fields: every cell of every field or slide, written per input as its blocks finish, then the run's tables."""
    from tools.fields.slide import CallRule, ModelSpec, ScreenSettings, Screening, loaded_models

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
    run_summary = {"settings": {"field_checkpoint": str(args.field_checkpoint), "instance_checkpoint": str(args.instance_checkpoint),
                                "cls_checkpoint": str(args.cls_checkpoint) if screening.class_names else None,
                                "backend": backend, "scheduler": args.scheduler, "seconds": seconds,
                                "failed": screening.failed},
                   "overall": summarise_cells(run_csv, screening.class_names, screening.rule, None),
                   "fields": screening.summaries}
    (args.output_dir / "summary.json").write_text(json.dumps(run_summary, indent=1))


@exit_on_user_error
def main(argv=None) -> int:
    """Returns the exit code: 0 when every image was predicted, 1 when some could not be read."""
    args = get_args(argv)
    paths = find_images(args.inputs, slides=args.fields)
    check_outputs_apart(args.inputs, args.output_dir)
    names = output_names(paths)
    if args.fields:
        from tools.fields.layouts import is_isbi_annotation

        kept = [(path, name) for path, name in zip(paths, names) if not is_isbi_annotation(path)]  # masks beside fields
        paths, names = [path for path, _ in kept], [name for _, name in kept]
        if not paths:
            raise UserError(f"{' '.join(args.inputs)}: only annotations found (<name>_cellKK.png, <name>_nuclei.png); "
                            f"pass the field images")
        mark_output_dir(args.output_dir)
        with RunLock(args.output_dir):
            return predict_fields(args, paths, names)
    backend = resolve_backend("torch" if args.explain else args.backend, args.device)
    # On a CPU, batches in parallel threads, each on one core with a one-thread ONNX Runtime, beat one batch at a time
    # on all cores: ONNX Runtime spreads small convolutions over cores poorly, and the rest (decoding, masks,
    # measurements, PNGs) runs beside it instead of after it. PyTorch keeps one batch and its own threads.
    workers = (args.workers or len(os.sched_getaffinity(0))) if backend == "onnx" else 1
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // workers)
    pipeline = load_pipeline(args.seg_checkpoint, args.cls_checkpoint, RunPaths(args.run_dir).onnx, backend, args.device,
                             threads)
    mark_output_dir(args.output_dir)
    start_up, started = seconds_since_process_start(), time.perf_counter()

    rows, failed = [], []
    chunks = list(batched(list(zip(paths, names)), args.batch_size))
    with RunLock(args.output_dir), tqdm(total=len(paths), desc="predicting", unit="cell") as progress, \
            ThreadPoolExecutor(workers) as pool:
        for chunk, chunk_rows in zip(chunks, pool.map(lambda chunk: predict_chunk(pipeline, args, chunk, failed), chunks)):
            rows += chunk_rows
            progress.update(len(chunk))
        seconds = {"start_up": round(start_up, 3), "predicting": round(time.perf_counter() - started, 3)}
        write_tables(args.output_dir, rows, failed, pipeline, args, seconds)

    print(f"predicted {len(rows)} of {len(paths)} images in {seconds['predicting']:.1f}s ({len(rows) / seconds['predicting']:.1f} "
          f"cells/s; start-up {start_up:.1f}s), class probabilities at temperature {pipeline.temperature:.3f}; "
          f"wrote {args.output_dir / 'predictions.csv'} and predictions.json")
    if failed:
        print(f"{len(failed)} image(s) could not be read, listed above and in predictions.json", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
