"""Evaluate both stages on held-out cells and write metrics.json, plots and mask overlays.

    python evaluate.py --data-root data/demo                      # the test split of the manifest
    python evaluate.py --data-root OTHER_ROOT --split all         # every cell of another data root

Segmentation: Dice, IoU and pixel accuracy per head at each image's own resolution (cells with
ground-truth masks only). Classification: on RGB + masks predicted by stage 1 (or ground truth
with --mask-source gt), probabilities softmax(logits / T) with the checkpoint's fitted temperature;
calibration is reported as ECE at T = 1 and at T. Everything lands in <output-dir>/outputs/eval/,
with report.html, one self-contained page of it all.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from tools.config import HelpFormatter, check_output_dir, data_parser
from tools.data_loader import CellRecord, ground_truth_masks, load_image, read_records
from tools.datasets import ClassificationDataset, prepare_cells
from tools.engine import make_loader, resolve_device
from tools.errors import UserError, exit_on_user_error
from tools.inference import iter_predicted_masks, load_model, predict_class_probs
from tools.metrics import (SegmentationMeter, binary_metrics, bootstrap_accuracy_ci, classification_metrics,
                           expected_calibration_error)
from tools.splits import open_split, usable_cells
from utils.report import ErrorExample, thumbnail, worst_errors, write_report
from utils.visualization import (overlay_masks, plot_confusion_matrix, plot_reliability_diagram, plot_roc_curves,
                                 save_overlay_grid)

# SIPaKMeD's normal cells; Herlev's are the classes named normal_*
SIPAKMED_NORMAL = ("im_Superficial-Intermediate", "im_Parabasal", "im_Metaplastic")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate the segmentation and classification checkpoints.",
                                     parents=[data_parser()], formatter_class=HelpFormatter)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--split", default="test", choices=["test", "val", "all"],
                       help="cells to evaluate: a split of the manifest, or every cell of --data-root (any layout)")
    group.add_argument("--seg-checkpoint", type=Path, default=None, help="default: <output-dir>/checkpoints/segmentation_best.pth")
    group.add_argument("--cls-checkpoint", type=Path, default=None, help="default: <output-dir>/checkpoints/classification_best.pth")
    group.add_argument("--mask-source", default="predicted", choices=["predicted", "gt"], help="masks given to the classifier")
    group.add_argument("--normal-classes", nargs="*", default=None,
                       help="classes counted as normal for the normal/abnormal metrics (default: normal_* and SIPaKMeD's normal classes)")
    group.add_argument("--num-overlays", type=int, default=12, help="cells drawn in overlays.png")
    group.add_argument("--num-errors", type=int, default=12, help="most confident misclassified cells shown in report.html")
    args = parser.parse_args(argv)
    checkpoints = args.output_dir / "checkpoints"
    args.seg_checkpoint = args.seg_checkpoint or checkpoints / "segmentation_best.pth"
    args.cls_checkpoint = args.cls_checkpoint or checkpoints / "classification_best.pth"
    args.batch_size = args.batch_size or 16
    return args


def select_records(args: argparse.Namespace) -> List[CellRecord]:
    if args.split == "all":
        records, _ = read_records(args.data_root, args.layout, args.sipakmed_source, args.nuc_suffix, args.cyt_suffix, args.skip_bad)
        return usable_cells(records, args)
    return open_split(args).by_split[args.split]


def check_known_classes(records: Sequence[CellRecord], class_names: Sequence[str], checkpoint: Path) -> None:
    unknown = sorted({r.label for r in records} - set(class_names))
    if unknown:
        raise UserError(f"{checkpoint}: the classifier does not know class(es) {', '.join(unknown)} "
                        f"(it knows {', '.join(class_names)}); rename the folders or remove those cells")


def normal_class_names(class_names: Sequence[str], chosen) -> List[str]:
    if chosen is not None:
        return list(chosen)
    return [c for c in class_names if c.lower().startswith("normal") or c in SIPAKMED_NORMAL]


def segment_and_score(args, records, device):
    """Predict masks for every record; score them against ground truth where it exists.

    Returns (masks by sample id, segmentation metrics, overlay panels).
    """
    seg_model, seg_checkpoint = load_model(args.seg_checkpoint, "segmentation", device)
    meter = SegmentationMeter()
    predicted, panels = {}, []
    for record, image, cell_mask, nuc_mask in iter_predicted_masks(seg_model, records, seg_checkpoint["args"]["img_size"],
                                                                   device, args.batch_size, "segmenting"):
        predicted[record.sample_id] = (cell_mask, nuc_mask)
        true_cell = true_nuc = None
        if record.has_masks:
            true_cell, true_nuc = ground_truth_masks(record, image.shape[:2])
            meter.update("cyt", cell_mask, true_cell)
            meter.update("nuc", nuc_mask, true_nuc)
        if len(panels) < args.num_overlays:
            panels.append((record.sample_id.split("/")[-1], overlay_masks(image, cell_mask, nuc_mask, true_cell, true_nuc)))
    return predicted, meter.compute(), panels


def classify(args, records, predicted_masks: Dict, device):
    """Labels [N], calibrated probabilities [N, K], probabilities at T = 1 [N, K], class names, temperature T."""
    cls_model, cls_checkpoint = load_model(args.cls_checkpoint, "classification", device)
    class_names = cls_checkpoint["class_names"]
    temperature = float(cls_checkpoint.get("temperature", 1.0))  # absent from checkpoints made before calibration
    check_known_classes(records, class_names, args.cls_checkpoint)
    provider = ground_truth_masks if args.mask_source == "gt" else (lambda record, shape: predicted_masks[record.sample_id])
    # the predicted masks are held in memory, so only ground-truth masks are cached
    cells = prepare_cells(records, cls_checkpoint["args"]["img_size"], provider, "loading cells", args.cache_dir)
    loader = make_loader(ClassificationDataset(cells, class_names, train=False), args.batch_size, False, 0, device, 0)
    calibrated, uncalibrated = [], []
    for inputs, _ in loader:
        calibrated.append(predict_class_probs(cls_model, inputs, device, temperature))
        uncalibrated.append(predict_class_probs(cls_model, inputs, device) if temperature != 1.0 else calibrated[-1])
    labels = np.array([class_names.index(r.label) for r in records])
    return labels, np.concatenate(calibrated), np.concatenate(uncalibrated), class_names, temperature


def error_gallery(records, labels, probs, class_names, predicted_masks: Dict, limit: int) -> List[ErrorExample]:
    """The most confident misclassifications, drawn with stage 1's masks (and the ground truth where known)."""
    examples = []
    for index in worst_errors(labels, probs, limit):
        record, predicted = records[index], int(probs[index].argmax())
        image = load_image(record)
        true_masks = ground_truth_masks(record, image.shape[:2]) if record.has_masks else (None, None)
        examples.append(ErrorExample(record.sample_id, thumbnail(image, *predicted_masks[record.sample_id], *true_masks),
                                     class_names[labels[index]], class_names[predicted], float(probs[index, predicted])))
    return examples


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    eval_dir = args.output_dir / "outputs" / "eval"
    check_output_dir(eval_dir)
    device = resolve_device(args.device)
    records = select_records(args)

    predicted_masks, seg_metrics, panels = segment_and_score(args, records, device)
    labels, probs, uncalibrated_probs, class_names, temperature = classify(args, records, predicted_masks, device)
    cls_metrics = classification_metrics(labels, probs, class_names)
    cls_metrics["accuracy_ci95"] = bootstrap_accuracy_ci(labels, probs.argmax(axis=1))
    normal = normal_class_names(class_names, args.normal_classes)
    abnormal = [c for c in class_names if c not in normal]
    results = {
        "data_root": str(args.data_root), "split": args.split, "num_cells": len(records), "mask_source": args.mask_source,
        "segmentation": seg_metrics, "classification": cls_metrics,
        "normal_vs_abnormal": binary_metrics(labels, probs, abnormal, class_names) if normal and abnormal else None,
        "calibration": {"temperature": temperature, "ece_before": expected_calibration_error(labels, uncalibrated_probs),
                        "ece_after": expected_calibration_error(labels, probs)},
    }
    (eval_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    plot_confusion_matrix(np.array(cls_metrics["confusion_matrix"]), class_names, eval_dir / "confusion_matrix.png")
    plot_roc_curves(labels, probs, class_names, eval_dir / "roc_curves.png")
    plot_reliability_diagram(labels, probs, eval_dir / "reliability.png")
    if panels:
        save_overlay_grid(panels, eval_dir / "overlays.png")
    plots = {name: eval_dir / f"{name}.png" for name in ("confusion_matrix", "roc_curves", "reliability")}
    gallery = error_gallery(records, labels, probs, class_names, predicted_masks, args.num_errors)
    write_report(eval_dir / "report.html", results, plots, gallery)
    print_summary(results, eval_dir)


def print_summary(results: Dict, eval_dir: Path) -> None:
    seg, cls = results["segmentation"], results["classification"]
    if seg:
        print(f"segmentation ({results['num_cells']} cells): dice cyt {seg['dice_cyt']:.4f}  nuc {seg['dice_nuc']:.4f}  "
              f"iou cyt {seg['iou_cyt']:.4f}  nuc {seg['iou_nuc']:.4f}")
    low, high = cls["accuracy_ci95"]
    print(f"classification ({results['mask_source']} masks): accuracy {cls['accuracy']:.4f} (95% CI {low:.3f}-{high:.3f})  balanced {cls['balanced_accuracy']:.4f}  "
          f"macro-F1 {cls['macro_f1']:.4f}  ROC-AUC {cls['roc_auc_macro'] or float('nan'):.4f}")
    if cls["most_confused"]:
        print("most confused (true -> predicted): " + ", ".join(
            f"{pair['true']} -> {pair['predicted']} {pair['count']} ({pair['share']:.0%})" for pair in cls["most_confused"]))
    if results["normal_vs_abnormal"]:
        print(f"normal vs abnormal: accuracy {results['normal_vs_abnormal']['accuracy']:.4f}")
    calibration = results["calibration"]
    print(f"calibration: temperature {calibration['temperature']:.3f}  ECE {calibration['ece_before']:.4f} (T = 1) -> "
          f"{calibration['ece_after']:.4f}")
    print(f"wrote {eval_dir / 'metrics.json'}, plots and {eval_dir / 'report.html'}")


if __name__ == "__main__":
    main()
