"""Inference step by step: cells/s of both stages (the classifier's three flips, as predict.py runs them) from
PyTorch to ONNX Runtime with each graph optimisation level, then int8 quantisation, with each step's six-class
accuracy on the test split of the run's manifest.

    python benchmarks/onnx_steps.py --run-dir runs/herlev --data-root ../shared/data/herlev

Every step runs CellPipeline.predict (letterbox, segmenter, mask clean-up, measurements, classifier with its
flips, probabilities) on the same decoded test cells in batches of --batch-size in this one process; decoding
and writing files are left out (benchmarks/predict_speed.py times predict.py's whole path). Steps take turns
within each repeat so that all see the same load; medians are reported. The int8 graphs are quantised
statically (QDQ, per-channel weights, min-max activation ranges) on --calibration-cells train cells, and kept
only in the benchmark's temporary folder: the product keeps float32 unless int8 matches its accuracy.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.acceleration import resolve_device  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from tools.inference import FLIPS, CellPipeline, OnnxBackend, batched, onnx_pipeline, torch_pipeline  # noqa: E402
from tools.layouts.cells import read_records  # noqa: E402
from tools.run_dir import RunPaths  # noqa: E402
from tools.splits import read_manifest  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

LEVELS = ("disable", "basic", "extended", "all")
STAGES = ("segmentation", "classification")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/onnx_steps.py --run-dir runs/herlev --data-root ../shared/data/herlev\n"
                    + __doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with both *_best.pth checkpoints")
    parser.add_argument("--data-root", type=Path, required=True, help="the data root the run was trained on")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the test cells per step (medians reported)")
    parser.add_argument("--batch-size", type=int, default=16, help="cells per pipeline call, as predict.py's default")
    parser.add_argument("--calibration-cells", type=int, default=64, help="train cells that set the int8 ranges")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


class ViewPerCall:
    """A backend called once per flip view instead of once for all views stacked (the step before batching)."""

    def __init__(self, backend, views: int):
        self.backend, self.views = backend, views
        self.input_names = getattr(backend, "input_names", None)

    def __call__(self, *batch: np.ndarray) -> np.ndarray:
        per_view = zip(*(np.split(array, self.views) for array in batch))
        return np.concatenate([self.backend(*arrays) for arrays in per_view])


def split_cells(args) -> Dict[str, list]:
    records, _ = read_records(args.data_root)
    split_of = read_manifest(RunPaths(args.run_dir).manifest(args.data_root), records)
    return {name: [r for r in records if split_of[r.sample_id] == name] for name in ("train", "test")}


def calibration_batches(pipeline: CellPipeline, images: Sequence[np.ndarray], batch_size: int) -> Dict[str, List]:
    """Each graph's inputs on the calibration cells, in batches, as the pipeline builds them."""
    feeds = {stage: [] for stage in STAGES}
    for chunk in batched(images, batch_size):
        feeds["segmentation"].append({pipeline.segmenter.input_names[0]: pipeline.segmenter_inputs(chunk)[0]})
        inputs, _ = pipeline.classifier_inputs(chunk, pipeline.masks(chunk))
        feeds["classification"].append(dict(zip(pipeline.classifier.input_names, inputs)))
    return feeds


def quantize(fp32: Path, int8: Path, feeds: List[Dict[str, np.ndarray]]) -> None:
    """Every convolution in int8 (the steps' table was measured so; predict.py --fields keeps a few in float32)."""
    from tools.onnx_export import quantize_graph

    quantize_graph(fp32, int8, feeds, float_nodes=())


def build_steps(args, workdir: Path, calibration_images) -> Dict[str, CellPipeline]:
    paths = RunPaths(args.run_dir)
    seg_ckpt, cls_ckpt = paths.checkpoint("segmentation"), paths.checkpoint("classification")
    steps = {"PyTorch (eager)": torch_pipeline(seg_ckpt, cls_ckpt, resolve_device("cpu"))[0]}
    reference = onnx_pipeline(paths.onnx, seg_ckpt, cls_ckpt)  # exports the graphs once when absent; level 'all'

    def with_graphs(segmenter, classifier) -> CellPipeline:
        return replace(reference, segmenter=segmenter, classifier=classifier)

    for level in LEVELS[:-1]:
        sessions = [OnnxBackend(paths.onnx / f"{stage}.onnx", graph_optimization=level) for stage in STAGES]
        if level == "disable":
            steps["ONNX, no graph optimisation, one call per flip"] = with_graphs(sessions[0],
                                                                                 ViewPerCall(sessions[1], len(FLIPS)))
            steps["ONNX, no graph optimisation, flips in one call"] = with_graphs(*sessions)
        else:
            steps[f"ONNX, graph optimisation '{level}'"] = with_graphs(*sessions)
    steps["ONNX, graph optimisation 'all'"] = reference
    feeds = calibration_batches(reference, calibration_images, args.batch_size)
    for stage in STAGES:
        quantize(paths.onnx / f"{stage}.onnx", workdir / f"{stage}.int8.onnx", feeds[stage])
    int8 = [OnnxBackend(workdir / f"{stage}.int8.onnx") for stage in STAGES]
    steps["ONNX 'all', int8 segmenter"] = with_graphs(int8[0], reference.classifier)
    steps["ONNX 'all', int8 classifier"] = with_graphs(reference.segmenter, int8[1])
    steps["ONNX 'all', int8 segmenter and classifier"] = with_graphs(*int8)
    return steps


def run_step(pipeline: CellPipeline, images, batch_size: int):
    """(seconds, [N] predicted class indices, the CellPredictions)."""
    start, predictions = time.perf_counter(), []
    for chunk in batched(images, batch_size):
        predictions += pipeline.predict(chunk)
    seconds = time.perf_counter() - start
    return seconds, np.array([p.probs.argmax() for p in predictions]), predictions


def measure(args) -> List[Dict]:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cells = split_cells(args)
    images = [r.load_image() for r in cells["test"]]
    with tempfile.TemporaryDirectory(prefix="onnx-steps-") as workdir:
        rng = np.random.default_rng(0)
        calibration = [cells["train"][i].load_image()
                       for i in rng.choice(len(cells["train"]), args.calibration_cells, replace=False)]
        steps = build_steps(args, Path(workdir), calibration)
        class_names = steps["PyTorch (eager)"].class_names
        labels = np.array([class_names.index(r.label) for r in cells["test"]])
        seconds = {name: [] for name in steps}
        outputs = {}
        for _ in range(args.repeats):
            for name, pipeline in steps.items():
                elapsed, predicted, predictions = run_step(pipeline, images, args.batch_size)
                seconds[name].append(elapsed)
                outputs[name] = (predicted, predictions)
    reference_predicted, reference = outputs["ONNX, graph optimisation 'all'"]
    rows = []
    for name, (predicted, predictions) in outputs.items():
        same_nuclei = np.mean([(p.nuc_mask == r.nuc_mask).mean() for p, r in zip(predictions, reference)])
        rows.append({"step": name, "cells": len(images), "cells_per_s": len(images) / statistics.median(seconds[name]),
                     "accuracy": float((predicted == labels).mean()),
                     "same_class": float((predicted == reference_predicted).mean()), "same_nucleus_pixels": float(same_nuclei)})
    for row in rows:
        row["speedup"] = row["cells_per_s"] / rows[0]["cells_per_s"]
    return rows


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| step | cells/s | vs PyTorch | test accuracy | same class as float32 ONNX | same nucleus pixels |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['cells_per_s']:.1f} | {r['speedup']:.2f}x | {r['accuracy']:.4f} | "
              f"{r['same_class']:.3f} | {r['same_nucleus_pixels']:.4f} |" for r in rows]
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    rows = measure(args)
    if args.output_json:
        args.output_json.write_text(json.dumps(rows, indent=2))
    print(f"{rows[0]['cells']} test cells of {args.data_root}, batches of {args.batch_size}, median of {args.repeats}")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
