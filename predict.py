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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from tools.config import HelpFormatter, check_output_dir, checkpoint_parser, resolve_checkpoints
from tools.data_loader import IMAGE_EXTENSIONS
from tools.engine import resolve_device
from tools.errors import UserError, exit_on_user_error
from tools.gradcam import grad_cam
from tools.inference import batched, classifier_inputs, load_model, masks_from_probs, predict_class_probs, predict_mask_probs
from utils.preprocessing import read_image, unletterbox
from utils.visualization import blend_heatmap, overlay_masks

NC_RATIO_DEFINITION = "nucleus area / cytoplasm area, cytoplasm = whole cell minus nucleus (pixels)"


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment and classify single-cell images with the trained checkpoints. Writes, per image, "
                    "<name>_cyt.png (whole cell) and <name>_nuc.png masks (0/255, the image's size), <name>_overlay.png "
                    "and with --explain <name>_gradcam.png (<name>: the image's path below the inputs' common folder, "
                    "without extension), and predictions.csv/.json for the run. Exit code 0: every "
                    "image predicted; 1: some image could not be read (named on stderr); 2: usage error or bad checkpoint.",
        parents=[checkpoint_parser()], formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or glob patterns, quoted ('cells/**/*.png'); "
                             f"folders and globs yield {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the masks, overlays and tables (default: RUN_DIR/outputs/predictions)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass of each stage")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--explain", action="store_true",
                        help="also write <name>_gradcam.png: Grad-CAM of the predicted class on the classifier's last stage")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    resolve_checkpoints(args)
    args.output_dir = args.output_dir or args.run_dir / "outputs" / "predictions"
    return args


# ---------------------------------------------------------------- which images, under which names

def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def images_below(folder: Path, exclude: Path) -> List[Path]:
    """Images in a folder tree, leaving out hidden files and folders and the output folder (earlier predictions)."""
    excluded = Path(os.path.abspath(exclude))
    found = []
    for current, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and Path(os.path.abspath(current), f) != excluded)
        found += [Path(current, f) for f in sorted(files) if not f.startswith(".") and is_image(Path(f))]
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


# ---------------------------------------------------------------- both stages on a batch

@dataclass
class Stages:
    seg_model: torch.nn.Module
    seg_size: int  # the segmentation checkpoint's img_size
    cls_model: torch.nn.Module
    cls_size: int  # the classification checkpoint's img_size
    class_names: List[str]
    temperature: float  # fitted after training; 1.0 for checkpoints made before calibration


def load_stages(args: argparse.Namespace, device: torch.device) -> Stages:
    seg_model, seg_checkpoint = load_model(args.seg_checkpoint, "segmentation", device)
    cls_model, cls_checkpoint = load_model(args.cls_checkpoint, "classification", device)
    return Stages(seg_model, seg_checkpoint["args"]["img_size"], cls_model, cls_checkpoint["args"]["img_size"],
                  list(cls_checkpoint["class_names"]), float(cls_checkpoint.get("temperature", 1.0)))


@dataclass
class CellPrediction:
    cell_mask: np.ndarray  # bool [H, W], whole cell
    nuc_mask: np.ndarray  # bool [H, W]
    probs: np.ndarray  # [K], calibrated
    heatmap: Optional[np.ndarray]  # float [H, W] in [0, 1], with --explain


def predict_batch(stages: Stages, images: Sequence[np.ndarray], device: torch.device, explain: bool) -> List[CellPrediction]:
    """Masks (stage 1), then class probabilities on RGB + those masks (stage 2), for RGB images of any sizes."""
    masks = [masks_from_probs(*probs) for probs in predict_mask_probs(stages.seg_model, images, stages.seg_size, device)]
    inputs, boxes = classifier_inputs(images, masks, stages.cls_size)  # [B, 5, S, S], as in training
    probs = predict_class_probs(stages.cls_model, inputs, device, stages.temperature)
    heatmaps = [None] * len(images)
    if explain:
        cams = grad_cam(stages.cls_model, inputs.to(device), probs.argmax(axis=1)).numpy()  # [B, S, S]
        heatmaps = [unletterbox(cam, box, image.shape[:2]) for cam, box, image in zip(cams, boxes, images)]
    return [CellPrediction(cell, nuc, p, heat) for (cell, nuc), p, heat in zip(masks, probs, heatmaps)]


# ---------------------------------------------------------------- what is written

def morphometrics(cell_mask: np.ndarray, nuc_mask: np.ndarray) -> Dict[str, Optional[float]]:
    nucleus_area = int(np.count_nonzero(nuc_mask))
    cytoplasm_area = int(np.count_nonzero(cell_mask & ~nuc_mask))
    return {"nucleus_area_px": nucleus_area, "cytoplasm_area_px": cytoplasm_area,
            "nc_ratio": nucleus_area / cytoplasm_area if cytoplasm_area else None}  # None: no cytoplasm found


def write_png(path: Path, image: np.ndarray) -> str:
    """Write a mask [H, W] or an RGB image [H, W, 3]; returns the path as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise UserError(f"{path}: could not be written; check the free space and --output-dir")
    return str(path)


def write_cell_outputs(output_dir: Path, name: str, image: np.ndarray, cell: CellPrediction) -> Dict[str, str]:
    stem = output_dir / name
    written = {
        "cyt_mask": write_png(stem.with_name(f"{stem.name}_cyt.png"), cell.cell_mask.astype(np.uint8) * 255),
        "nuc_mask": write_png(stem.with_name(f"{stem.name}_nuc.png"), cell.nuc_mask.astype(np.uint8) * 255),
        "overlay": write_png(stem.with_name(f"{stem.name}_overlay.png"), overlay_masks(image, cell.cell_mask, cell.nuc_mask)),
    }
    if cell.heatmap is not None:
        written["gradcam"] = write_png(stem.with_name(f"{stem.name}_gradcam.png"), blend_heatmap(image, cell.heatmap))
    return written


def prediction_row(path: Path, name: str, cell: CellPrediction, class_names: Sequence[str], outputs: Dict[str, str]) -> Dict:
    return {"file": str(path), "name": name, "predicted_class": class_names[int(cell.probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(class_names, cell.probs)},
            **morphometrics(cell.cell_mask, cell.nuc_mask), "outputs": outputs}


def write_tables(output_dir: Path, rows: List[Dict], failed: List[Dict], stages: Stages, args: argparse.Namespace) -> None:
    """predictions.csv (one row per predicted image) and predictions.json (the same, plus the run's settings and failures)."""
    columns = ["file", "name", "predicted_class", *(f"prob_{c}" for c in stages.class_names),
               "nucleus_area_px", "cytoplasm_area_px", "nc_ratio"]
    with open(output_dir / "predictions.csv", "w", newline="") as table:
        writer = csv.DictWriter(table, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in ("file", "name", "predicted_class", "nucleus_area_px", "cytoplasm_area_px")},
                             **{f"prob_{c}": f"{p:.6f}" for c, p in row["probabilities"].items()},
                             "nc_ratio": "" if row["nc_ratio"] is None else f"{row['nc_ratio']:.6f}"})
    summary = {"seg_checkpoint": str(args.seg_checkpoint), "cls_checkpoint": str(args.cls_checkpoint),
               "class_names": stages.class_names, "temperature": stages.temperature,
               "nc_ratio": NC_RATIO_DEFINITION, "predictions": rows, "failed": failed}
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


@exit_on_user_error
def main(argv=None) -> int:
    """Returns the exit code: 0 when every image was predicted, 1 when some could not be read."""
    args = get_args(argv)
    paths = find_images(args.inputs, exclude=args.output_dir)
    names = output_names(paths)
    device = resolve_device(args.device)
    stages = load_stages(args, device)
    check_output_dir(args.output_dir)

    rows, failed = [], []
    with tqdm(total=len(paths), desc="predicting", unit="cell") as progress:
        for chunk in batched(list(zip(paths, names)), args.batch_size):
            indices, images = read_readable([path for path, _ in chunk], failed)
            predictions = predict_batch(stages, images, device, args.explain) if images else []
            for index, image, cell in zip(indices, images, predictions):
                path, name = chunk[index]
                outputs = write_cell_outputs(args.output_dir, name, image, cell)
                rows.append(prediction_row(path, name, cell, stages.class_names, outputs))
            progress.update(len(chunk))
    write_tables(args.output_dir, rows, failed, stages, args)

    print(f"predicted {len(rows)} of {len(paths)} images (class probabilities at temperature {stages.temperature:.3f}); "
          f"wrote {args.output_dir / 'predictions.csv'} and predictions.json")
    if failed:
        print(f"{len(failed)} image(s) could not be read, listed above and in predictions.json", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
