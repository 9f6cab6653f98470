"""Herlev benchmark: both stages with --preset cpu, evaluated on the test split.

    python benchmarks/herlev.py --data-root ../shared/data/herlev --output-dir runs/benchmark_herlev

Runs the same commands a user runs (main_segment.py, main_classify.py, evaluate.py) and writes
<output-dir>/results.json and results.md: Dice per head, 6-class accuracy and macro-F1 with
predicted and with ground-truth masks, normal vs abnormal accuracy, mean +- SD over classifier
seeds, a bootstrap 95 % interval of the test accuracy, and the wall time of every step.
The first seed's run lives in <output-dir> itself, so `evaluate.py --output-dir <output-dir>`
scores exactly the checkpoints this benchmark trained.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/herlev"), help="Herlev development set")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/benchmark_herlev"), help="run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="classifier seeds (segmentation uses the first)")
    parser.add_argument("--preset", default="cpu", help="preset passed to both stages")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to both training scripts")
    return parser.parse_args(argv)


def run(command, log_path: Path) -> float:
    """Run one script, its output appended to log_path; return its wall time in seconds."""
    print("$", " ".join(map(str, command)), flush=True)
    started = time.time()
    with open(log_path, "a") as log:
        subprocess.run([sys.executable, *map(str, command)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - started


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def summary(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def classify_and_evaluate(args, out: Path, seed: int, common, extra_flags, log_path: Path, mask_source: str):
    """Train a classifier into `out` and evaluate it on the test split; returns (metrics, seconds per step)."""
    seconds = {"classify": run(["main_classify.py", *common, "--output-dir", out, "--seed", seed, *extra_flags], log_path)}
    seconds["evaluate"] = run(["evaluate.py", "--data-root", args.data_root, "--output-dir", out, "--mask-source", mask_source,
                               *common[2:4], *extra_flags[:2]], log_path)
    return json.loads((out / "outputs" / "eval" / "metrics.json").read_text()), seconds


def main(argv=None) -> None:
    args = get_args(argv)
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "benchmark.log"
    manifest = out / "splits" / "herlev.json"
    common = ["--data-root", args.data_root.resolve(), "--split-file", manifest, "--preset", args.preset, *args.extra]
    shared = ["--seg-checkpoint", out / "checkpoints" / "segmentation_best.pth"]

    # 1. Segmentation (first seed), masks for every cell, out-of-fold for train cells if the preset says so
    times = {"segment": run(["main_segment.py", *common, "--output-dir", out, "--seed", args.seeds[0]], log_path)}

    # 2. Classifier on predicted masks, one run per seed; the first lives in <output-dir> itself
    runs = []
    for seed in args.seeds:
        seed_dir = out if seed == args.seeds[0] else out / "seeds" / f"seed{seed}"
        metrics, seconds = classify_and_evaluate(args, seed_dir, seed, common, [*shared, "--masks-dir", out / "outputs" / "masks"],
                                                 log_path, "predicted")
        runs.append(metrics)
        times[f"classify_seed{seed}"] = seconds["classify"]
        times[f"evaluate_seed{seed}"] = seconds["evaluate"]

    # 3. The same classifier on ground-truth masks (first seed), reported beside
    gt_metrics, gt_seconds = classify_and_evaluate(args, out / "gt_masks", args.seeds[0], [*common, "--mask-source", "gt"],
                                                   shared, log_path, "gt")
    times["classify_gt"] = gt_seconds["classify"]

    results = collect(args, runs, gt_metrics, times)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    print(markdown_table(results))


def collect(args, runs, gt_metrics, times):
    first = runs[0]
    return {
        "command": " ".join(sys.argv), "commit": git_commit(), "data_root": str(args.data_root), "seeds": args.seeds,
        "test_cells": first["num_cells"],
        "segmentation": {k: first["segmentation"][k] for k in ("dice_cyt", "dice_nuc", "iou_cyt", "iou_nuc")},
        "predicted_masks": {
            "accuracy": summary([r["classification"]["accuracy"] for r in runs]),
            "macro_f1": summary([r["classification"]["macro_f1"] for r in runs]),
            "normal_vs_abnormal_accuracy": summary([r["normal_vs_abnormal"]["accuracy"] for r in runs]),
            "accuracy_ci95_first_seed": first["classification"]["accuracy_ci95"],
            "confusion_matrix_first_seed": first["classification"]["confusion_matrix"],
            "class_names": first["classification"]["class_names"],
        },
        "gt_masks": {
            "accuracy": gt_metrics["classification"]["accuracy"], "macro_f1": gt_metrics["classification"]["macro_f1"],
            "normal_vs_abnormal_accuracy": gt_metrics["normal_vs_abnormal"]["accuracy"],
            "accuracy_ci95": gt_metrics["classification"]["accuracy_ci95"],
        },
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }


def markdown_table(results) -> str:
    pred, gt, seg = results["predicted_masks"], results["gt_masks"], results["segmentation"]
    low, high = pred["accuracy_ci95_first_seed"]

    def mean_sd(entry):
        return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"

    lines = [
        f"Herlev development set, test split ({results['test_cells']} cells), commit {results['commit']}, "
        f"classifier seeds {results['seeds']}",
        "",
        "| metric | predicted masks | ground-truth masks |",
        "|---|---|---|",
        f"| Dice cytoplasm (whole cell) | {seg['dice_cyt']:.3f} | |",
        f"| Dice nucleus | {seg['dice_nuc']:.3f} | |",
        f"| 6-class accuracy | {mean_sd(pred['accuracy'])} (95% CI {low:.3f}-{high:.3f}) | {gt['accuracy']:.3f} |",
        f"| 6-class macro-F1 | {mean_sd(pred['macro_f1'])} | {gt['macro_f1']:.3f} |",
        f"| normal vs abnormal accuracy | {mean_sd(pred['normal_vs_abnormal_accuracy'])} | {gt['normal_vs_abnormal_accuracy']:.3f} |",
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
