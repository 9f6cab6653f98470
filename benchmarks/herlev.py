"""Herlev benchmark: the user's commands (main_segment.py, main_classify.py, evaluate.py) with --preset cpu.

    python benchmarks/herlev.py --data-root ../shared/data/herlev --output-dir runs/benchmark_herlev
    python benchmarks/herlev.py --cv 5 --output-dir runs/cv_herlev
    python benchmarks/herlev.py --cv 5 --masks-from runs/benchmark_herlev --output-dir runs/cv_recipe -- --no-measurements

Fixed split (default): one segmenter, classifiers over --seeds on its predicted masks and one on the
ground-truth masks, scored on the test split; the first seed's run lives in <output-dir> itself.
--cv K: stratified K-fold cross-validation over the whole data root: fold k's manifest makes fold k the
test split (tools/splits.cross_validation_manifests), and each fold runs the three commands in
<output-dir>/fold<k>, so every fold's test cells are never seen by its segmenter or its classifier.
--masks-from RUN: skip segmentation and give every fold's classifier RUN's exported masks; they are honest
for every cell when RUN was made with out-of-fold masks (the preset's), since each cell's mask then comes
from a segmenter that never trained on it. This measures classifier recipes at a fifth of the cost.
Flags after `--` go to main_classify.py. Writes <output-dir>/results.json and results.md (mean +- SD,
per fold or seed, the wall time of every step, the command and the commit).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/herlev.py`: the repo's packages are one folder up

from tools.config import PRESETS, HelpFormatter, name_flag  # noqa: E402
from tools.inputs import mark_output_dir  # noqa: E402
from tools.layouts.cells import read_records  # noqa: E402
from tools.splits import cross_validation_manifests, load_split  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

METRICS = {  # name in results -> (section of metrics.json, key)
    "accuracy": ("classification", "accuracy"), "macro_f1": ("classification", "macro_f1"),
    "quadratic_weighted_kappa": ("classification", "quadratic_weighted_kappa"),
    "within_one_grade_accuracy": ("classification", "within_one_grade_accuracy"),
    "normal_vs_abnormal_accuracy": ("normal_vs_abnormal", "accuracy"),
    "dice_cyt": ("segmentation", "dice_cyt"), "dice_nuc": ("segmentation", "dice_nuc"),
}


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/herlev.py --data-root ../shared/data/herlev "
                    "--output-dir runs/benchmark_herlev\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/herlev"), help="Herlev development set")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/benchmark_herlev"), help="benchmark folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="classifier seeds on the fixed split (segmentation uses the first); --cv uses the first")
    parser.add_argument("--cv", type=int, default=0, metavar="K", help="K-fold cross-validation instead of the fixed split")
    parser.add_argument("--masks-from", type=Path, default=None,
                        help="with --cv: a run folder whose outputs/masks serve every fold (no segmentation)")
    parser.add_argument("--preset", default="cpu", **name_flag(sorted(PRESETS)), help="preset passed to every training script")
    parser.add_argument("classify_flags", nargs=argparse.REMAINDER, help="after --: flags for main_classify.py")
    args = parser.parse_args(argv)
    args.classify_flags = [flag for flag in args.classify_flags if flag != "--"]
    if args.masks_from is not None and not args.cv:
        parser.error("--masks-from goes with --cv")
    return args


def run(script: str, flags: List, log_path: Path) -> float:
    """Run one script, its output appended to log_path; return its wall time in seconds."""
    command = [sys.executable, script, *map(str, flags)]
    print("$", " ".join(command[1:]), flush=True)
    started = time.time()
    with open(log_path, "a") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - started


def read_metrics(run_dir: Path) -> Dict[str, float]:
    metrics = json.loads((run_dir / "outputs" / "eval" / "metrics.json").read_text())
    return {name: (metrics.get(section) or {}).get(key) for name, (section, key) in METRICS.items()}


def summary(rows: List[Dict[str, float]]) -> Dict[str, Dict]:
    """{metric: {mean, sd, values}} over runs, for the metrics every run has."""
    out = {}
    for name in METRICS:
        values = [row[name] for row in rows if row.get(name) is not None]
        if len(values) == len(rows):
            out[name] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "values": values}
    return out


def one_run(args, run_dir: Path, split_file: Path, seed: int, log: Path, times: Dict, tag: str,
            masks_dir: Path = None, mask_source: str = "predicted", segment: bool = True) -> Dict[str, float]:
    """main_segment.py (unless masks are given), main_classify.py and evaluate.py on one split; returns the metrics."""
    common = ["--data-root", args.data_root.resolve(), "--split-file", split_file, "--preset", args.preset]
    if segment:
        times[f"segment_{tag}"] = run("main_segment.py", [*common, "--run-dir", run_dir, "--seed", seed], log)
    masks = ["--masks-dir", masks_dir] if masks_dir is not None else []
    times[f"classify_{tag}"] = run("main_classify.py", [*common, "--run-dir", run_dir, "--seed", seed, "--mask-source",
                                                        mask_source, *masks, *args.classify_flags], log)
    evaluate_masks = masks if not segment and mask_source == "predicted" else []  # the same honest masks as training
    times[f"evaluate_{tag}"] = run("evaluate.py", ["--data-root", args.data_root.resolve(), "--split-file", split_file,
                                                   "--run-dir", run_dir, "--mask-source", mask_source, *evaluate_masks], log)
    return read_metrics(run_dir)


def fixed_split(args, out: Path, log: Path, times: Dict) -> Dict:
    """One segmenter, one classifier per seed (predicted masks), one on ground-truth masks."""
    split_file = out / "splits" / "herlev.json"
    records, layout = read_records(args.data_root)
    load_split(records, split_file, args.data_root, layout)  # made once here: the scripts take only an existing one
    rows = []
    for seed in args.seeds:
        first = seed == args.seeds[0]
        run_dir = out if first else out / "seeds" / f"seed{seed}"
        rows.append(one_run(args, run_dir, split_file, seed, log, times, f"seed{seed}", masks_dir=out / "outputs" / "masks",
                            segment=first))
    gt = one_run(args, out / "gt_masks", split_file, args.seeds[0], log, times, "gt", mask_source="gt", segment=False)
    first = json.loads((out / "outputs" / "eval" / "metrics.json").read_text())["classification"]
    return {"protocol": "fixed split", "test_cells": first["num_samples"], "runs": rows, "summary": summary(rows),
            "gt_masks": gt, "accuracy_ci95_first_seed": first["accuracy_ci95"],
            "confusion_matrix_first_seed": first["confusion_matrix"], "class_names": first["class_names"]}


def cross_validation(args, out: Path, log: Path, times: Dict) -> Dict:
    records, layout = read_records(args.data_root)
    manifests = cross_validation_manifests(records, args.data_root.resolve(), layout, args.cv, args.seeds[0], out / "splits")
    masks_dir = args.masks_from / "outputs" / "masks" if args.masks_from else None
    rows = [one_run(args, out / f"fold{fold}", manifest, args.seeds[0], log, times, f"fold{fold}", masks_dir=masks_dir,
                    segment=masks_dir is None) for fold, manifest in enumerate(manifests)]
    protocol = f"{args.cv}-fold cross-validation" + (f", masks of {args.masks_from}" if masks_dir else "")
    return {"protocol": protocol, "test_cells": len(records), "runs": rows, "summary": summary(rows)}


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    out = args.output_dir.resolve()
    mark_output_dir(out)
    times: Dict[str, float] = {}
    results = (cross_validation if args.cv else fixed_split)(args, out, out / "benchmark.log", times)
    results.update(command=" ".join(["python", "benchmarks/herlev.py", *sys.argv[1:]]), commit=git_commit(),
                   data_root=str(args.data_root), seconds={k: round(v, 1) for k, v in times.items()})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    print(markdown_table(results))


def markdown_table(results: Dict) -> str:
    lines = [f"Herlev, {results['protocol']} ({results['test_cells']} test cells), commit {results['commit']}", "",
             "| metric | mean ± SD | per run |", "|---|---|---|"]
    for name, entry in results["summary"].items():
        values = " / ".join(f"{v:.3f}" for v in entry["values"])
        lines.append(f"| {name} | {entry['mean']:.3f} ± {entry['sd']:.3f} | {values} |")
    if "gt_masks" in results:
        gt = results["gt_masks"]
        lines += ["", "Ground-truth masks (first seed): " + ", ".join(f"{k} {v:.3f}" for k, v in gt.items() if v is not None)]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()), "",
              f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
