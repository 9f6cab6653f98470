"""How many annotated squamous nuclei the field model finds on a run's CRIC fields, at several nucleus thresholds.

The nucleus stage alone (tiled field model, threshold, watershed; no instance model, no classifier), so it runs on a
field model still training (its fields_last.pth) and in a minute. A point is found when it lies inside a predicted
nucleus or within 12 px of its centre (tools/screening.MATCH_RADIUS_PX), one nucleus per point. Choose the
threshold on --split val, report --split test. The whole screening answer: benchmarks/screening.py.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tools.fields.segment as segment  # noqa: E402
from tools.checkpoint import load_model  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from tools.fields.layouts import read_fields  # noqa: E402
from tools.fields.models import FieldModels  # noqa: E402
from tools.inference import TorchBackend  # noqa: E402
from tools.layouts.points import read_field_points  # noqa: E402
from tools.screening import MATCH_RADIUS_PX  # noqa: E402
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


def found_points(points: np.ndarray, labels: np.ndarray, scale: float) -> set:
    """Indices of the points matched one-to-one to a nucleus of `labels` (model px): inside it or near its centre."""
    centres = np.array([centre[::-1] / scale for _, centre in segment.nucleus_centres(labels)])  # x, y field px
    if not len(centres):
        return set()
    distance = np.hypot(points[:, None, 0] - centres[None, :, 0], points[:, None, 1] - centres[None, :, 1])
    inside = np.zeros_like(distance, bool)
    for index, (x, y) in enumerate(points):
        row, col = int(y * scale), int(x * scale)
        if 0 <= row < labels.shape[0] and 0 <= col < labels.shape[1] and labels[row, col] > 0:
            inside[index, labels[row, col] - 1] = True
    allowed = inside | (distance <= MATCH_RADIUS_PX)
    rows, cols = linear_sum_assignment(np.where(allowed, distance, 1e6))
    return {row for row, col in zip(rows, cols) if allowed[row, col]}


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
            hits = found_points(record.points, labels, scale)
            for index, label in enumerate(labels_of[record.field_id]):
                total[label] += 1
                found[label] += index in hits
        points = sum(total.values())
        per_class = ", ".join(f"{name} {found[name]}/{total[name]}" for name in sorted(total))
        print(f"| {threshold:g} | {sum(found.values()) / points:.3f} | {predicted / points:.2f} | {per_class} |")


if __name__ == "__main__":
    main()
