"""How many annotated squamous nuclei the field model finds on a run's CRIC fields, at several nucleus thresholds.

The nucleus stage alone (tiled field model, threshold, watershed; no instance model, no classifier), so it runs on a
field model still training (its fields_last.pth) and in a minute. Points are matched as benchmarks/screening.py
matches them (tools/screening.match_points: inside a nucleus or within 12 px of its centre, one nucleus per point).
Choose the threshold on --split val, report --split test. The whole screening answer: benchmarks/screening.py.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tools.fields.segment as segment  # noqa: E402
from tools.checkpoint import load_model  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from tools.fields.layouts import read_fields  # noqa: E402
from tools.fields.models import FieldModels  # noqa: E402
from tools.inference import TorchBackend  # noqa: E402
from tools.layouts.points import read_field_points  # noqa: E402
from tools.screening import PredictedCells, match_points  # noqa: E402
from utils.preprocessing import read_image  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/cric_detection.py --data-root ../shared/data/cric --run-dir runs/cric "
                    "--split val --thresholds 0.4 0.5 0.7\n" + __doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="a CRIC root: field images and classifications.csv")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with checkpoints/ and splits/")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"], help="fields of the run's manifest")
    parser.add_argument("--checkpoint", default="fields_last.pth", help="field model in <run-dir>/checkpoints/")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[segment.NUCLEUS_THRESHOLD],
                        help="nucleus probability thresholds to score")
    return parser.parse_args(argv)


def predicted_nuclei(labels: np.ndarray, scale: float) -> PredictedCells:
    """The nuclei of a label image (model px) as tools/screening.py reads predict.py's cells: centre and outline, in
    field px, so that the points are matched by its rule (match_points)."""
    centres, rings = [], []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = (labels[box] == label).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        ring = max(contours, key=cv2.contourArea).reshape(-1, 2) + [box[1].start, box[0].start]
        rows, cols = np.nonzero(mask)
        centres.append(((cols.mean() + box[1].start) / scale, (rows.mean() + box[0].start) / scale))
        rings.append(ring / scale)
    centres = np.array(centres, float).reshape(-1, 2)
    return PredictedCells(centres, rings, centres, None, [])


def main(argv=None) -> None:
    args = get_args(argv)
    manifest = json.loads(next((args.run_dir / "splits").glob("*-fields.json")).read_text())
    split_of = {sample["id"]: sample["split"] for sample in manifest["samples"]}
    records = [r for r in read_fields(args.data_root, "cric", check=False)[0] if split_of.get(r.sample_id) == args.split]
    labels_of = {field.field_id: field.labels for field in read_field_points(args.data_root)}
    model, state = load_model(args.run_dir / "checkpoints" / args.checkpoint, "fields", torch.device("cpu"))
    settings = state["args"]
    scale, nucleus_px = float(settings["field_scale"]), float(settings["nucleus_px"])
    models = FieldModels(TorchBackend(model, torch.device("cpu")), None, scale, int(settings["tile_size"]), 0, 0, nucleus_px)
    nucleus_probs = [segment.tiled_probabilities(segment.to_model_scale(read_image(r.image_path), scale), models)[1]
                     for r in records]
    print(f"| threshold | recall | predicted per annotated | {args.split}: {len(records)} fields, found / annotated per class |")
    print("|---|---|---|---|")
    for threshold in args.thresholds:
        segment.NUCLEUS_THRESHOLD = threshold
        found, total, predicted = Counter(), Counter(), 0
        for record, probs in zip(records, nucleus_probs):
            labels = segment.nucleus_instances(probs, nucleus_px)
            predicted += int(labels.max())
            hits = set(np.nonzero(match_points(record.points, predicted_nuclei(labels, scale)) >= 0)[0])
            for index, label in enumerate(labels_of[record.field_id]):
                total[label] += 1
                found[label] += index in hits
        points = sum(total.values())
        per_class = ", ".join(f"{name} {found[name]}/{total[name]}" for name in sorted(total))
        print(f"| {threshold:g} | {sum(found.values()) / points:.3f} | {predicted / points:.2f} | {per_class} |")


if __name__ == "__main__":
    main()
