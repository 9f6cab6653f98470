"""Evaluate both stages on held-out cells and write metrics.json, plots and mask overlays.

    python evaluate.py --data-root data/demo --run-dir runs/demo           # the test split of the manifest
    python evaluate.py --data-root OTHER_ROOT --split all --run-dir RUN    # every cell of another data root

Segmentation: Dice, IoU and pixel accuracy per head at each image's own resolution (cells with
ground-truth masks only). Classification: on RGB + masks predicted by stage 1 (or ground truth
with --mask-source gt), probabilities softmax(logits / T) with the checkpoint's fitted temperature;
calibration is reported as ECE at T = 1 and at T; for ordered classes, the grading metrics too (Herlev's and
Bethesda's orders are known); for Bethesda's classes (--layout cric) also three grades: NILM / low / high.
Everything lands in <run-dir>/outputs/eval/, with report.html, one self-contained page of it all.
"""
import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tools.acceleration import resolve_device
from tools.calibration import TEMPERATURE_RANGE
from tools.checkpoint import load_checkpoint
from tools.config import HelpFormatter, check_names, data_parser, name_flag, positive_int
from tools.data_loader import open_dataset, usable_cells
from tools.fields.data import is_field_layout
from tools.inference import (
    CellPipeline,
    batched,
    combined,
    load_pipeline,
    softmax,
    torch_pipeline,
)
from tools.inputs import mark_output_dir
from tools.layouts.cells import normal_class_names, read_records
from tools.layouts.points import is_bethesda
from tools.layouts.record import CellRecord
from tools.masks import MASKS_MANIFEST, PredictedMaskFiles, ground_truth_masks
from tools.metrics import (
    SegmentationMeter,
    bethesda_grade_metrics,
    binary_metrics,
    bootstrap_accuracy_ci,
    classification_metrics,
    default_class_order,
    expected_calibration_error,
    grade_metrics,
    reliability_bins,
)
from tools.run_dir import RunPaths, open_run
from tools.splits import manifest_sha1
from utils.errors import UserError, exit_on_user_error
from utils.overlays import overlay_masks
from utils.report import ErrorExample, thumbnail, worst_errors, write_report
from utils.visualization import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    save_overlay_grid,
)


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="example: python evaluate.py --data-root data/demo --run-dir runs/demo\n"
                                     "Evaluate the segmentation and classification checkpoints.",
                                     parents=[data_parser()], formatter_class=HelpFormatter)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--split", default="test", **name_flag(["test", "val", "all"]),
                       help="cells to evaluate: a split of the manifest, or every cell of --data-root (any layout)")
    group.add_argument("--seg-checkpoint", type=Path, default=None, help="default: <run-dir>/checkpoints/segmentation_best.pth")
    group.add_argument("--cls-checkpoint", type=Path, default=None, help="default: <run-dir>/checkpoints/classification_best.pth")
    group.add_argument("--mask-source", default="predicted", **name_flag(["predicted", "gt"]),
                       help="masks given to the classifier")
    group.add_argument("--masks-dir", type=Path, default=None,
                       help="score and classify with masks exported before (main_segment.py's outputs/masks, e.g. another "
                            "run's out-of-fold masks) instead of predicting them with --seg-checkpoint")
    group.add_argument("--normal-classes", nargs="+", default=None, metavar="CLASS",
                       help="classes counted as normal for the normal/abnormal metrics (default: normal_*, "
                            "SIPaKMeD's normal classes and NILM)")
    group.add_argument("--class-order", nargs="+", default=None, metavar="CLASS",
                       help="the classes from least to most severe, for the grading metrics (default: the classifier's "
                            "own order; Herlev's classes are known)")
    group.add_argument("--backend", default="auto", **name_flag(["auto", "onnx", "torch"]),
                       help="onnx: ONNX Runtime on the CPU (exported once into <run-dir>/outputs/onnx); torch: PyTorch; "
                            "auto: PyTorch on a CUDA machine, else ONNX")
    group.add_argument("--num-overlays", type=positive_int, default=12, help="cells drawn in overlays.png")
    group.add_argument("--num-errors", type=positive_int, default=12,
                       help="most confident misclassified cells shown in report.html")
    args = parser.parse_args(argv)
    paths = RunPaths(args.run_dir)
    args.seg_checkpoint = args.seg_checkpoint or paths.checkpoint("segmentation")
    args.cls_checkpoint = args.cls_checkpoint or paths.checkpoint("classification")
    args.batch_size = args.batch_size or 16
    return args


# ---------------------------------------------------------------- which cells

def select_records(args: argparse.Namespace, paths: RunPaths, cls_checkpoint: dict) -> List[CellRecord]:
    """The cells to score: a split of the manifest the classifier was trained with, or every cell of the root."""
    if args.split == "all":
        records, _ = read_records(args.data_root, args.layout, args.sipakmed_source, args.nuc_suffix, args.cyt_suffix,
                                  args.skip_bad)
        return usable_cells(records, args, paths.skipped_cells)
    split = open_dataset(args, paths)
    trained_on = cls_checkpoint.get("provenance", {}).get("split_manifest")
    if trained_on is not None and trained_on != manifest_sha1(split.manifest_path):
        raise UserError(f"{split.manifest_path}: not the split manifest {args.cls_checkpoint} was trained with, so its "
                        f"{args.split} cells may have been trained on; pass that run's --split-file, or --split all")
    if not split.by_split[args.split]:
        raise UserError(f"{split.manifest_path}: the {args.split} split is empty (too few cells per class to set some "
                        f"aside); add data, or score another root with --split all")
    return split.by_split[args.split]


def check_class_flags(args: argparse.Namespace, class_names: Sequence[str], checkpoint: Dict) -> None:
    """--normal-classes and --class-order name the classifier's classes: a mistyped normal class would make every
    cell abnormal (normal vs abnormal accuracy 1.0), a class missing from the order would have no grade."""
    advice = f"name the classes as {args.cls_checkpoint} knows them"
    check_names(args.normal_classes or [], class_names, "class", "--normal-classes", advice)
    order = args.class_order or checkpoint.get("class_order")
    if order:
        source = "--class-order" if args.class_order else f"{args.cls_checkpoint}: its class_order"
        check_names(order, class_names, "class", source, advice)
        left_out = [name for name in class_names if name not in order]
        twice = sorted({name for name in order if order.count(name) > 1})
        problem = f"leaves out {', '.join(left_out)}" if left_out else f"names {', '.join(twice)} twice" if twice else None
        if problem:
            raise UserError(f"{source}: {problem}; list each class of {args.cls_checkpoint} once, from least to most severe")


def check_masks_dir(masks_dir: Optional[Path]) -> None:
    if masks_dir is not None and not (Path(masks_dir) / MASKS_MANIFEST).is_file():
        raise UserError(f"--masks-dir {masks_dir}: no {MASKS_MANIFEST} there, so these are not masks main_segment.py "
                        f"exported; pass a run's outputs/masks folder")


def check_known_classes(records: Sequence[CellRecord], class_names: Sequence[str], checkpoint: Path) -> None:
    unknown = sorted({r.label for r in records} - set(class_names))
    if unknown:
        raise UserError(f"{checkpoint}: the classifier does not know class(es) {', '.join(unknown)} "
                        f"(it knows {', '.join(class_names)}); rename the folders or remove those cells")


# ---------------------------------------------------------------- both stages over the cells

class Evaluation:
    """Runs the pipeline over the cells batch by batch, scoring the masks and keeping the class logits."""

    def __init__(self, num_overlays: int):
        self.seg_meter = SegmentationMeter()
        self.view_logits: List[np.ndarray] = []  # [V, K] per cell
        self.measurement_probs: List[Optional[np.ndarray]] = []  # [K] per cell (None without a measurement model)
        self.panels: List = []
        self.num_overlays = num_overlays

    def add(self, pipeline: CellPipeline, records: Sequence[CellRecord], use_gt_masks: bool,
            mask_files: Optional[PredictedMaskFiles] = None) -> None:
        images = [record.load_image() for record in records]
        truths = [ground_truth_masks(r, image.shape[:2]) if r.has_masks else None for r, image in zip(records, images)]
        predicted = ([mask_files(r, image.shape[:2]) for r, image in zip(records, images)] if mask_files is not None
                     else pipeline.masks(images))
        for record, image, (cell, nuc), truth in zip(records, images, predicted, truths):
            if truth is not None:
                self.seg_meter.update("cyt", cell, truth[0])
                self.seg_meter.update("nuc", nuc, truth[1])
            if len(self.panels) < self.num_overlays:
                self.panels.append((record.sample_id.split("/")[-1], overlay_masks(image, cell, nuc, *(truth or (None, None)))))
        classified = pipeline.predict(images, truths if use_gt_masks else predicted)
        self.view_logits += [cell.view_logits for cell in classified]
        self.measurement_probs += [cell.measurement_probs for cell in classified]

    def probs(self, temperature: float) -> np.ndarray:
        """[N, K] the classifier's probabilities with the CNN's logits divided by `temperature`."""
        cnn_probs = softmax(np.stack(self.view_logits), temperature).mean(axis=1)
        extra = None if self.measurement_probs[0] is None else np.stack(self.measurement_probs)
        return combined(cnn_probs, extra)


def error_gallery(pipeline: CellPipeline, records, labels, probs, class_names, use_gt_masks: bool, limit: int,
                  mask_files: Optional[PredictedMaskFiles] = None) -> List[ErrorExample]:
    """The most confident misclassifications, drawn with the masks the classifier saw (and the ground truth where known)."""
    examples = []
    for index in worst_errors(labels, probs, limit):
        record, predicted = records[index], int(probs[index].argmax())
        image = record.load_image()
        truth = ground_truth_masks(record, image.shape[:2]) if record.has_masks else (None, None)
        shown = truth if use_gt_masks else mask_files(record, image.shape[:2]) if mask_files else pipeline.masks([image])[0]
        examples.append(ErrorExample(record.sample_id, thumbnail(image, *shown, *truth), class_names[labels[index]],
                                     class_names[predicted], float(probs[index, predicted])))
    return examples


def classification_results(labels, probs, class_names, class_order) -> Dict:
    metrics = classification_metrics(labels, probs, class_names)
    metrics["accuracy_ci95"] = bootstrap_accuracy_ci(labels, probs.argmax(axis=1))
    if class_order:
        metrics.update(grade_metrics(labels, probs.argmax(axis=1), class_names, class_order))
    return metrics


# ---------------------------------------------------------------- fields of view

def full_size(cells, shape) -> tuple:
    """The cells' whole-cell and nucleus masks as lists of bool [H, W] (a cell without nucleus adds no nucleus)."""
    cell_masks, nuc_masks = [], []
    for cell in cells:
        x0, y0, x1, y1 = cell.box
        for masks, part in ((cell_masks, cell.cell_mask), (nuc_masks, cell.nuc_mask)):
            if part.any():
                full = np.zeros(shape, bool)
                full[y0:y1, x0:x1] = part
                masks.append(full)
    return cell_masks, nuc_masks


def evaluate_fields(args, paths: RunPaths) -> None:
    """Fields of view: nuclei (detection F1 at IoU 0.5, Dice of matched nuclei), cells (ISBI 2014 Dice and FNo, AJI)."""
    from tools.fields.data import open_fields
    from tools.fields.layouts import load_field, read_fields
    from tools.fields.models import load_field_models
    from tools.fields.segment import segment_field
    from tools.instance_metrics import (
        aggregated_jaccard_index,
        detection_scores,
        instance_masks,
        isbi_cell_scores,
        pool_detection_scores,
        pool_isbi_cell_scores,
    )

    models = load_field_models(paths.checkpoint("fields"), paths.checkpoint("instances"), paths.onnx, args.backend,
                               args.device)
    records = read_fields(args.data_root)[0] if args.split == "all" else open_fields(args, paths).by_split[args.split]
    scores = {}  # group (the field's folder, e.g. synthetic / edf) -> {"nuclei": [...], "cells": [...], "aji": [...]}
    panels = []
    for record in tqdm(records, desc="evaluating fields", unit="field"):
        sample = load_field(record)
        found = segment_field(lambda t, l, b, r: sample.image[t:b, l:r], sample.image.shape[:2], models)
        cell_masks, nuc_masks = full_size(found, sample.image.shape[:2])
        for group in ("all", record.label or "fields"):
            group_scores = scores.setdefault(group, {"nuclei": [], "cells": [], "aji": []})
            if sample.nuc_labels is not None:
                group_scores["nuclei"].append(detection_scores(instance_masks(sample.nuc_labels), nuc_masks))
            if sample.cell_masks is not None:
                group_scores["cells"].append(isbi_cell_scores(sample.cell_masks, cell_masks))
                group_scores["aji"].append(aggregated_jaccard_index(sample.cell_masks, cell_masks))
        if len(panels) < args.num_overlays:
            panels.append((record.field_id, overlay_field(sample.image, found)))
    pooled = {group: {"nuclei": pool_detection_scores(s["nuclei"]) if s["nuclei"] else None,
                      "cells": {**pool_isbi_cell_scores(s["cells"]), "aji": float(np.mean(s["aji"]))} if s["cells"] else None}
              for group, s in scores.items()}
    results = {"data_root": str(args.data_root), "split": args.split, "num_fields": len(records), **pooled.pop("all"),
               "by_folder": pooled}
    (paths.eval / "metrics.json").write_text(json.dumps(results, indent=2))
    if panels:
        save_overlay_grid(panels, paths.eval / "overlays.png", ncols=3)
    for group, part in [("all", results), *results["by_folder"].items()]:
        if part["nuclei"]:
            n = part["nuclei"]
            print(f"{group}: nuclei ({n['tp'] + n['fn']} annotated): F1 {n['f1']:.4f} (precision {n['precision']:.4f}, "
                  f"recall {n['recall']:.4f}) at IoU 0.5, Dice of matched nuclei {n['dice_matched']:.4f}")
        if part["cells"]:
            c = part["cells"]
            print(f"{group}: cells ({c['n_gt']} annotated): Dice {c['dice']:.4f}, FNo {c['fno']:.4f}, AJI {c['aji']:.4f}")
    print(f"wrote {paths.eval / 'metrics.json'}")


def overlay_field(image: np.ndarray, cells) -> np.ndarray:
    masks = [full_size([cell], image.shape[:2]) for cell in cells]
    canvas = image.copy()
    for cell_masks, nuc_masks in masks:
        for mask in cell_masks:
            canvas = overlay_masks(canvas, mask, nuc_masks[0] if nuc_masks else np.zeros_like(mask))
    return canvas


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    with open_run(args.run_dir, args.data_root, args.run_dir_flag) as paths:
        mark_output_dir(paths.eval)
        if is_field_layout(args.layout, args.data_root):
            return evaluate_fields(args, paths)
        cls_checkpoint = load_checkpoint(args.cls_checkpoint, "classification")
        check_masks_dir(args.masks_dir)
        if args.masks_dir:  # no segmenter to run
            pipeline = torch_pipeline(None, args.cls_checkpoint, resolve_device(args.device))[0]
        else:
            pipeline = load_pipeline(args.seg_checkpoint, args.cls_checkpoint, paths.onnx, args.backend, args.device)
        check_class_flags(args, pipeline.class_names, cls_checkpoint)
        mask_files = PredictedMaskFiles(args.masks_dir) if args.masks_dir else None
        records = select_records(args, paths, cls_checkpoint)
        class_names = pipeline.class_names
        check_known_classes(records, class_names, args.cls_checkpoint)

        evaluation = Evaluation(args.num_overlays)
        with tqdm(total=len(records), desc="evaluating", unit="cell") as progress:
            for chunk in batched(records, args.batch_size):
                evaluation.add(pipeline, chunk, args.mask_source == "gt", mask_files)
                progress.update(len(chunk))
        write_results(args, paths, pipeline, records, evaluation, cls_checkpoint)


def write_results(args, paths: RunPaths, pipeline: CellPipeline, records, evaluation: Evaluation, cls_checkpoint) -> None:
    """metrics.json, the plots, overlays.png and report.html under <run-dir>/outputs/eval/."""
    class_names, temperature = pipeline.class_names, pipeline.temperature
    labels = np.array([class_names.index(r.label) for r in records])
    class_order = args.class_order or cls_checkpoint.get("class_order") or default_class_order(class_names)
    probs, raw_probs = evaluation.probs(temperature), evaluation.probs(1.0)
    cls_metrics = classification_results(labels, probs, class_names, class_order)
    normal = normal_class_names(class_names, args.normal_classes)
    abnormal = [c for c in class_names if c not in normal]
    results = {
        "data_root": str(args.data_root), "split": args.split, "num_cells": len(records), "mask_source": args.mask_source,
        "segmentation": evaluation.seg_meter.compute(), "classification": cls_metrics,
        "normal_vs_abnormal": binary_metrics(labels, probs, abnormal, class_names) if normal and abnormal else None,
        "bethesda_grades": bethesda_grade_metrics(labels, probs, class_names) if is_bethesda(class_names) else None,
        "calibration": {"temperature": temperature, "ece_before": expected_calibration_error(labels, raw_probs),
                        "ece_after": expected_calibration_error(labels, probs), "at_bound": temperature in TEMPERATURE_RANGE},
    }
    eval_dir = paths.eval
    (eval_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    write_cell_table(eval_dir / "cells.csv", records, labels, probs, class_names)
    plot_confusion_matrix(np.array(cls_metrics["confusion_matrix"]), class_names, eval_dir / "confusion_matrix.png")
    abnormal_columns = [class_names.index(name) for name in abnormal]
    binary_curve = ((f"{'/'.join(normal)} vs abnormal", np.isin(labels, abnormal_columns),
                     probs[:, abnormal_columns].sum(axis=1)) if normal and abnormal else None)
    plot_roc_curves(labels, probs, class_names, eval_dir / "roc_curves.png", binary_curve)
    plot_reliability_diagram(reliability_bins(labels, probs), results["calibration"]["ece_after"], eval_dir / "reliability.png")
    if evaluation.panels:
        save_overlay_grid(evaluation.panels, eval_dir / "overlays.png")
    plots = {name: eval_dir / f"{name}.png" for name in ("confusion_matrix", "roc_curves", "reliability")}
    gallery = error_gallery(pipeline, records, labels, probs, class_names, args.mask_source == "gt", args.num_errors,
                            PredictedMaskFiles(args.masks_dir) if args.masks_dir else None)
    write_report(eval_dir / "report.html", results, plots, gallery)
    print_summary(results, eval_dir)


def write_cell_table(path: Path, records: Sequence[CellRecord], labels: np.ndarray, probs: np.ndarray,
                     class_names: Sequence[str]) -> None:
    """One row per evaluated cell: id, true and predicted class, the calibrated probabilities (error analysis)."""
    with open(path, "w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["id", "true_class", "predicted_class", *(f"prob_{name}" for name in class_names)])
        for record, label, row in zip(records, labels, probs):
            writer.writerow([record.sample_id, class_names[label], class_names[int(row.argmax())], *(f"{p:.6f}" for p in row)])


def print_summary(results: Dict, eval_dir: Path) -> None:
    seg, cls = results["segmentation"], results["classification"]
    if seg:
        print(f"segmentation ({results['num_cells']} cells): dice cyt {seg['dice_cyt']:.4f}  nuc {seg['dice_nuc']:.4f}  "
              f"iou cyt {seg['iou_cyt']:.4f}  nuc {seg['iou_nuc']:.4f}")
    low, high = cls["accuracy_ci95"]
    print(f"classification ({results['mask_source']} masks): accuracy {cls['accuracy']:.4f} (95% CI {low:.3f}-{high:.3f})  "
          f"balanced {cls['balanced_accuracy']:.4f}  macro-F1 {cls['macro_f1']:.4f}  "
          f"ROC-AUC {cls['roc_auc_macro'] or float('nan'):.4f}")
    if cls.get("quadratic_weighted_kappa") is not None:
        print(f"grading: quadratic weighted kappa {cls['quadratic_weighted_kappa']:.4f}  within one grade "
              f"{cls['within_one_grade_accuracy']:.4f}  mean absolute grade error {cls['mean_absolute_grade_error']:.4f}")
    if cls["most_confused"]:
        print("most confused (true -> predicted): " + ", ".join(
            f"{pair['true']} -> {pair['predicted']} {pair['count']} ({pair['share']:.0%})" for pair in cls["most_confused"]))
    if results["normal_vs_abnormal"]:
        binary = results["normal_vs_abnormal"]
        print(f"normal vs abnormal: accuracy {binary['accuracy']:.4f}  ROC-AUC {binary['roc_auc'] or float('nan'):.4f}  "
              f"sensitivity at 90 % / 95 % specificity {binary['sensitivity_at_90_specificity'] or float('nan'):.4f} / "
              f"{binary['sensitivity_at_95_specificity'] or float('nan'):.4f}")
    else:
        print("normal vs abnormal: not measured, the classes are not both normal and abnormal ones (--normal-classes "
              "names the normal ones)")
    if results.get("bethesda_grades"):
        grades = results["bethesda_grades"]
        print(f"Bethesda grades (NILM / low / high): accuracy {grades['accuracy']:.4f}  macro-F1 {grades['macro_f1']:.4f}  "
              f"quadratic weighted kappa {grades['quadratic_weighted_kappa'] or float('nan'):.4f}")
    calibration = results["calibration"]
    print(f"calibration: temperature {calibration['temperature']:.3f}  ECE {calibration['ece_before']:.4f} (T = 1) -> "
          f"{calibration['ece_after']:.4f}")
    print(f"wrote {eval_dir / 'metrics.json'}, plots and {eval_dir / 'report.html'}")


if __name__ == "__main__":
    main()
