"""GPU check: the full default configuration trained, evaluated and timed on one GPU, in a few minutes.

    python benchmarks/gpu_check.py                      # or: make gpu-check  (Herlev at ../shared/data/herlev)
    python benchmarks/gpu_check.py --data-root DATA --epochs 5 --output-dir runs/gpu_check
    python benchmarks/gpu_check.py --data-root DEMO --backbone test_convnext --img-size 64 --batch-size 4 \\
        --epochs 1 --steps 1 --workers 0 --device cpu --no-pretrained       # tiny, on CPU (tests/test_gpu_check.py)

No --preset: ConvNeXt-Tiny, 256 px and each stage's defaults (tools/config.py STAGE_DEFAULTS), with the speed
flags the training scripts turn on for CUDA (bf16/fp16 AMP, channels_last, fused AdamW, cuDNN benchmark).
  1. The user's commands, each timed: main_segment.py --oof-folds 0, main_classify.py (--epochs each) and
     evaluate.py into <output-dir>/run; the test-split metrics come from run/outputs/eval/metrics.json and the
     seconds of every epoch from run/logs/<stage>/log.txt;
  2. benchmarks/throughput.py for both models, once with the speed flags in effect (the CUDA defaults), once
     with all of them off (--amp off --no-channels-last --no-fused-adamw --no-cudnn-benchmark);
  3. --output-json (device, torch/CUDA versions, commit, every timing and metric, both throughput tables) and
     <output-dir>/gpu_check.md, a Markdown table for the README, printed too.
Meant to take under 8 minutes on one modern GPU with the defaults (not measured yet: no GPU was lent so far).
The scripts' output goes to <output-dir>/gpu_check.log. Without a GPU (and without --device cpu) it says so and
runs the same check on the CPU: slowly, and its numbers are CPU numbers. A failed script ends the check with
its name, exit code and the end of the log.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/gpu_check.py`: the repo's packages are one folder up

import torch  # noqa: E402

from benchmarks.herlev import git_commit, read_metrics, run  # noqa: E402
from tools.acceleration import resolve_device  # noqa: E402
from tools.config import HelpFormatter, backbone_name, device_name  # noqa: E402
from tools.inputs import mark_output_dir  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

SPEED_FLAGS_OFF = ["--amp", "off", "--no-channels-last", "--no-fused-adamw", "--no-cudnn-benchmark"]
SPEED_FLAG_RUNS = {"default_flags": "defaults", "flags_off": "all off"}  # throughput.py runs -> their table label


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/gpu_check.py --data-root ../shared/data/herlev\n"
                    + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/herlev"), help="any data root with masks")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/gpu_check"),
                        help="folder for the run (run/), the log, the JSON and the Markdown table")
    parser.add_argument("--output-json", type=Path, default=None, help="results file (default: <output-dir>/gpu_check.json)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each stage")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N, passed to every script")
    parser.add_argument("--backbone", default=None, type=backbone_name,
                        help="timm backbone of both models (default: the stages', convnext_tiny)")
    parser.add_argument("--img-size", type=int, default=None, help="input side in px (default: the stages', 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch of both stages (default: each stage's own)")
    parser.add_argument("--decoder-channels", type=int, nargs=3, default=None, metavar=("D16", "D8", "D4"),
                        help="segmentation decoder widths (default: the stage's, 256 128 64)")
    parser.add_argument("--workers", type=int, default=None, help="data loader workers (default: the scripts', 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput measurement")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="ImageNet weights for training (default: the scripts', on where found in the local cache)")
    args = parser.parse_args(argv)
    args.output_json = args.output_json or args.output_dir / "gpu_check.json"
    return args


def given_flags(args, names: List[str]) -> List[str]:
    """['--img-size', '64', ...] for the flags among `names` given here; unset ones stay the scripts' defaults."""
    flags = []
    for name in names:
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None:
            flags += [name, *map(str, value if isinstance(value, list) else [value])]
    return flags


def timed(script: str, flags: List, log: Path) -> float:
    """benchmarks/herlev.run, with a failure told as one line that names the log and shows its end."""
    try:
        seconds = run(script, flags, log)
    except subprocess.CalledProcessError as error:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise UserError(f"{script} failed (exit code {error.returncode}); its output is in {log}, ending:\n{tail}") from None
    print(f"  {seconds:.1f} s", flush=True)
    return seconds


def epoch_seconds(run_dir: Path, stage: str) -> List[float]:
    """Seconds of every epoch (training + validation) from the stage's log.txt."""
    lines = (run_dir / "logs" / stage / "log.txt").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in lines if line.strip()]


def device_info(device: torch.device) -> Dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}


@exit_on_user_error
def main(argv=None) -> Dict:
    args = get_args(argv)
    device = resolve_device(args.device)
    if args.device == "auto" and device.type == "cpu":
        print("No GPU found (torch.cuda.is_available() is False): running the same check on the CPU. It is slow, "
              "and its numbers are CPU numbers, not GPU numbers (pass --device cpu to silence this).", flush=True)
    out, data_root = args.output_dir.resolve(), args.data_root.resolve()
    if not data_root.is_dir():
        raise UserError(f"{args.data_root}: no such folder; pass --data-root with the Herlev set (or any data root with masks)")
    run_dir, log = out / "run", out / "gpu_check.log"
    mark_output_dir(out)
    log.unlink(missing_ok=True)
    # evaluate.py takes the model and its size from the checkpoints, and keeps its own batch size
    loader = given_flags(args, ["--device", "--workers"])
    model = [*loader, *given_flags(args, ["--backbone", "--img-size", "--batch-size"])]
    decoder = given_flags(args, ["--decoder-channels"])  # main_classify.py has no decoder
    seconds = {}
    started = time.time()

    # 1. Both stages at the default configuration, then the evaluation, each timed
    data = ["--data-root", data_root, "--run-dir", run_dir]
    weights = [] if args.pretrained is None else ["--pretrained" if args.pretrained else "--no-pretrained"]
    training = [*data, *model, *weights, "--epochs", args.epochs]
    seconds["segment"] = timed("main_segment.py", [*training, *decoder, "--oof-folds", 0], log)
    seconds["classify"] = timed("main_classify.py", training, log)
    seconds["evaluate"] = timed("evaluate.py", [*data, *loader], log)
    metrics = read_metrics(run_dir)
    epochs = {stage: epoch_seconds(run_dir, stage) for stage in ("segmentation", "classification")}

    # 2. Throughput of both models, with the speed flags in effect and with them off
    throughput = {}
    for name, extra in (("default_flags", []), ("flags_off", SPEED_FLAGS_OFF)):
        path = out / f"throughput_{name}.json"
        seconds[f"throughput_{name}"] = timed("benchmarks/throughput.py", ["--data-root", data_root, *model, *decoder, "--steps",
                                                                          args.steps, *extra, "--output-json", path], log)
        throughput[name] = json.loads(path.read_text())["rows"]
    seconds["total"] = time.time() - started

    # 3. One JSON and one Markdown table
    results = {"command": " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else map(str, argv))]),
               "commit": git_commit(), **device_info(device), "data_root": str(args.data_root), "epochs": args.epochs,
               "config": {stage: config(run_dir, stage) for stage in ("segmentation", "classification")},
               "seconds": seconds, "epoch_seconds": epochs, "metrics": metrics, "throughput": throughput}
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(results, indent=2))
    table = markdown_table(results)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return results


def config(run_dir: Path, stage: str) -> Dict:
    """The training flags a stage ran with, from its logs/<stage>/args.json (unset speed flags: None, on for CUDA)."""
    args = json.loads((run_dir / "logs" / stage / "args.json").read_text())
    keys = ("backbone", "img_size", "batch_size", "epochs", "lr", "pretrained", "workers", "amp", "channels_last",
            "fused_adamw", "cudnn_benchmark")
    return {key: args.get(key) for key in keys}


def markdown_table(results: Dict) -> str:
    """A header line, the three commands with their wall time and results, then the four throughput rows."""
    metrics, seconds, per_epoch = results["metrics"], results["seconds"], results["epoch_seconds"]
    seg, cls = results["config"]["segmentation"], results["config"]["classification"]
    nva = metrics.get("normal_vs_abnormal_accuracy")
    steps = [  # script, wall time, median epoch, what it measured on the test split
        ("main_segment.py", seconds["segment"], statistics.median(per_epoch["segmentation"]),
         f"Dice cell {metrics['dice_cyt']:.3f}, nucleus {metrics['dice_nuc']:.3f}"),
        ("main_classify.py", seconds["classify"], statistics.median(per_epoch["classification"]),
         f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"),
        ("evaluate.py", seconds["evaluate"], None, "" if nva is None else f"normal vs abnormal accuracy {nva:.3f}"),
        ("throughput.py, speed flags at their defaults", seconds["throughput_default_flags"], None, ""),
        ("throughput.py, speed flags off", seconds["throughput_flags_off"], None, ""),
        ("all", seconds["total"], None, ""),
    ]
    lines = [f"{results['device_name']}, torch {results['torch']} (built for CUDA {results['cuda']}), "
             f"commit {results['commit']}; "
             f"{results['data_root']}, {results['epochs']} epochs per stage, segmentation {seg['backbone']} "
             f"{seg['img_size']} px batch {seg['batch_size']}, classification {cls['backbone']} {cls['img_size']} px "
             f"batch {cls['batch_size']}", "",
             "| step | wall time (s) | median epoch (s) | test split |", "|---|---|---|---|"]
    lines += [f"| {script} | {wall:.1f} | {'' if epoch is None else f'{epoch:.1f}'} | {result} |"
              for script, wall, epoch, result in steps]
    memory = "CUDA alloc." if results["device"].startswith("cuda") else "RSS"
    header = ["model", "speed flags", "backbone", "size", "batch", "in effect", "train img/s", "inference img/s",
              f"train peak {memory} (MiB)", "loader img/s", "loader/model"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rows in results["throughput"].items():
        for row in rows:
            cells = [row["model"], SPEED_FLAG_RUNS[name], row["backbone"], row["img_size"], row["batch_size"], row["flags"],
                     f"{row['train_images_per_s']:.1f}", f"{row['inference_images_per_s']:.1f}",
                     f"{row['peak_train_memory_mib']:.0f}", f"{row['loader_images_per_s']:.0f}", f"{row['loader_to_model']:.1f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines + ["", f"Command: `{results['command']}`", ""])


if __name__ == "__main__":
    main()
