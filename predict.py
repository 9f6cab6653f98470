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
import glob
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tools.config import (
    HelpFormatter,
    checkpoint_parser,
    device_name,
    positive_int,
    resolve_checkpoints,
)
from tools.inference import (
    CellPipeline,
    CellPrediction,
    batched,
    load_pipeline,
    resolve_backend,
)
from tools.layouts import IMAGE_EXTENSIONS, is_hidden, paired_mask_files
from tools.morphometry import FEATURE_NAMES, cell_measurements
from tools.run_dir import RunLock, RunPaths, check_writable
from utils.console import seconds_since_process_start
from utils.errors import UserError, exit_on_user_error
from utils.files import write_image
from utils.overlays import blend_heatmap, overlay_masks
from utils.preprocessing import read_image, unletterbox

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
                             f"folders and globs yield {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files, leaving out "
                             f"hidden files and the masks of a paired layout (<n>N.png, <n>C.png beside <n>.bmp)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the masks, overlays and tables (default: RUN_DIR/outputs/predictions; with --fields "
                             "RUN_DIR/outputs/fields)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass of each stage")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--explain", action="store_true",
                        help="also write <name>_gradcam.png: Grad-CAM of the predicted class on the classifier's last stage "
                             "(runs the models in PyTorch)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"],
                        help="onnx: ONNX Runtime on the CPU, exported once into RUN_DIR/outputs/onnx and reused; torch: "
                             "PyTorch; auto: PyTorch on a CUDA machine (or --device cuda) and for --explain, else ONNX "
                             "(cells and --fields alike)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="cells: batches predicted at once, each in its own thread (ONNX Runtime only; measured "
                             "1.26x the cells/s of one batch on 2 threads) (default: the cores this process may use)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime threads of each batch (default: the cores this process may use, shared "
                             "among --workers)")
    fields = parser.add_argument_group(
        "fields of view (--fields): every INPUT is a whole field; per field <name>.geojson (QuPath cell objects), "
        "<name>_cells.png and <name>_nuclei.png (uint16 instance labels), <name>_overlay.png; for the run cells.csv "
        "and summary.json")
    fields.add_argument("--fields", action="store_true",
                        help="find, separate and classify every cell of whole fields (main_segment.py's field models)")
    fields.add_argument("--field-checkpoint", type=Path, default=None,
                        help="the field model (default: RUN_DIR/checkpoints/fields_best.pth)")
    fields.add_argument("--instance-checkpoint", type=Path, default=None,
                        help="the instance model (default: RUN_DIR/checkpoints/instances_best.pth)")
    fields.add_argument("--block-size", type=positive_int, default=2048,
                        help="fields are processed in blocks of this many px a side (memory follows it, not the field)")
    fields.add_argument("--keep-edge-cells", action="store_true",
                        help="also keep the cells whose nucleus the image's border cuts (dropped by default: their "
                             "nuclear size and grade cannot be measured)")
    args = parser.parse_args(argv)
    resolve_checkpoints(args)
    run = RunPaths(args.run_dir)
    args.output_dir = args.output_dir or (run.field_predictions if args.fields else run.predictions)
    args.field_checkpoint = args.field_checkpoint or run.checkpoint("fields")
    args.instance_checkpoint = args.instance_checkpoint or run.checkpoint("instances")
    return args


# ---------------------------------------------------------------- which images, under which names

def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def images_below(folder: Path, exclude: Path) -> List[Path]:
    """Images in a folder tree, leaving out hidden files and folders, the output folder and paired-layout masks."""
    excluded = Path(os.path.abspath(exclude))
    found = []
    for current, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not is_hidden(Path(f)) and Path(os.path.abspath(current), f) != excluded)
        images = [Path(current, f) for f in sorted(files) if not is_hidden(Path(f)) and is_image(Path(f))]
        masks = paired_mask_files(images)
        found += [image for image in images if image not in masks]
    return found


def find_images(inputs: Sequence[str], exclude: Path) -> List[Path]:
    """Expand files, folders and globs into image paths, each once, in the order given.

    A named file is taken whatever its extension (OpenCV reads the bytes, not the name); an input that
    yields nothing is a usage error: it is most likely a typo.
    """
    found: Dict[str, Path] = {}
    for text in inputs:
        path = Path(text)
        is_pattern = not path.exists() and any(char in text for char in "*?[")
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True)) if is_pattern else [path]
        images = []
        for match in matches:
            if match.is_dir():
                images += images_below(match, exclude)
            elif match.is_file() and (is_image(match) or not is_pattern):
                images.append(match)
        if not images:
            raise UserError(f"{text}: no such file, or no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} image found there; check the path")
        for image in images:
            found.setdefault(os.path.abspath(image), image)
    return list(found.values())


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
    """--fields: every cell of every field, written per field and summarised for the run."""
    from tools.fields.outputs import table_rows, write_field, write_summary
    from tools.fields.segment import (
        classify_cells,
        load_field_models,
        open_field,
        segment_field,
    )

    onnx_dir = RunPaths(args.run_dir).onnx
    models = load_field_models(args.field_checkpoint, args.instance_checkpoint, onnx_dir, args.backend, args.device,
                               args.threads, args.batch_size)
    pipeline = None
    if Path(args.cls_checkpoint).is_file():
        pipeline = load_pipeline(None, args.cls_checkpoint, onnx_dir, args.backend, args.device, args.threads)
    else:
        print(f"note: no classifier at {args.cls_checkpoint}: the cells are segmented, not classified")
    class_names = pipeline.class_names if pipeline else None
    start_up, started = seconds_since_process_start(), time.perf_counter()
    rows_by_field, failed = {}, []
    for path, name in tqdm(list(zip(paths, names)), desc="fields", unit="field"):
        try:
            read, shape, image = open_field(path)
        except UserError as error:
            failed.append({"file": str(path), "error": str(error)})
            tqdm.write(f"skipped {error}", file=sys.stderr)
            continue
        cells = segment_field(read, shape, models, args.block_size, args.keep_edge_cells)
        if pipeline is not None:
            classify_cells(read, shape, cells, pipeline, args.batch_size)
        write_field(args.output_dir, name, image, shape, cells, class_names)
        rows_by_field[name] = table_rows(name, cells, class_names)
    write_cells_csv(args.output_dir / "cells.csv", [row for rows in rows_by_field.values() for row in rows])
    seconds = {"start_up": round(start_up, 3), "predicting": round(time.perf_counter() - started, 3)}
    write_summary(args.output_dir, rows_by_field, class_names, {
        "field_checkpoint": str(args.field_checkpoint), "instance_checkpoint": str(args.instance_checkpoint),
        "cls_checkpoint": str(args.cls_checkpoint) if pipeline else None, "backend": resolve_backend(args.backend, args.device),
        "seconds": seconds, "failed": failed})
    print(f"found {sum(len(rows) for rows in rows_by_field.values())} cells in {len(rows_by_field)} of {len(paths)} fields "
          f"in {seconds['predicting']:.1f}s (start-up {start_up:.1f}s); wrote {args.output_dir / 'cells.csv'} and summary.json")
    return 1 if failed else 0


def write_cells_csv(path: Path, rows: Sequence[Dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as table:
        writer = csv.DictWriter(table, columns)
        writer.writeheader()
        writer.writerows(rows)


@exit_on_user_error
def main(argv=None) -> int:
    """Returns the exit code: 0 when every image was predicted, 1 when some could not be read."""
    args = get_args(argv)
    paths = find_images(args.inputs, exclude=args.output_dir)
    names = output_names(paths)
    if args.fields:
        from tools.fields.layouts import is_isbi_annotation

        kept = [(path, name) for path, name in zip(paths, names) if not is_isbi_annotation(path)]  # masks beside fields
        paths, names = [path for path, _ in kept], [name for _, name in kept]
        check_writable(args.output_dir)
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
    check_writable(args.output_dir)
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
