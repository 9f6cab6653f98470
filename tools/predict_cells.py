"""predict.py on single cells: both stages on each image, in batches on parallel threads, and what is written per
image (masks, overlay, Grad-CAM) and for the run (predictions.csv, predictions.json)."""
import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tools.inference import CellPipeline, CellPrediction, batched, load_pipeline, resolve_backend
from tools.inputs import mark_output_dir
from tools.morphometry import FEATURE_NAMES, cell_measurements
from tools.run_dir import RunLock, RunPaths
from utils.console import seconds_since_process_start
from utils.errors import UserError
from utils.files import write_image
from utils.overlays import blend_heatmap, overlay_masks
from utils.preprocessing import read_image, unletterbox

NC_RATIO_DEFINITION = "nucleus area / cytoplasm area, cytoplasm = whole cell minus nucleus (pixels); the other " \
                      "measurements are defined in tools/morphometry.py"


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


def predict_cells(args: argparse.Namespace, paths: Sequence[Path], names: Sequence[str]) -> int:
    """Both stages on every image (predict.py's args), written as they finish; returns the exit code: 0 when every
    image was predicted, 1 when some could not be read."""
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
    with RunLock(args.output_dir, "--output-dir"), tqdm(total=len(paths), desc="predicting", unit="cell") as progress, \
            ThreadPoolExecutor(workers) as pool:
        for chunk, chunk_rows in zip(chunks, pool.map(lambda chunk: predict_chunk(pipeline, args, chunk, failed), chunks)):
            rows += chunk_rows
            progress.update(len(chunk))
        seconds = {"start_up": round(start_up, 3), "predicting": round(time.perf_counter() - started, 3)}
        write_tables(args.output_dir, rows, failed, pipeline, args, seconds)

    print(f"predicted {len(rows)} of {len(paths)} images in {seconds['predicting']:.1f}s "
          f"({len(rows) / seconds['predicting']:.1f} "
          f"cells/s; start-up {start_up:.1f}s), class probabilities at temperature {pipeline.temperature:.3f}; "
          f"wrote {args.output_dir / 'predictions.csv'} and predictions.json")
    if failed:
        print(f"{len(failed)} image(s) could not be read, listed above and in predictions.json", file=sys.stderr)
    return 1 if failed else 0
