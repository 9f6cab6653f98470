"""Throughput: is the CPU or GPU kept busy, and what do the speed flags buy.

    python benchmarks/throughput.py --preset cpu
    python benchmarks/throughput.py --backbone convnext_tiny --img-size 224 --batch-size 8   # the seed's model

For each model (--stage), with random weights (speed does not depend on them) and synthetic tensors
already on the device (so that the model is measured alone), it measures:
  1. training images/s with the speed flags in effect, through the engine's own pieces
     (resolve_acceleration, wrap_for_training, adamw, autocast, grad scaler, to_device) and the stage's loss;
  2. the same step in plain fp32 (Acceleration() all off, non-fused AdamW, no autocast, no compile), and
     the ratio of the two. The timed steps of 1, 2 and 3 alternate, so that all see the same load. On CPU
     every flag defaults to off, so both runs are the same configuration and the ratio is ~1 by design
     (its distance from 1 is the noise); ask for a flag (--channels-last) to see what it does there;
  3. inference images/s (eval mode, no_grad, the same autocast and memory layout), as evaluation runs it;
  4. the peak memory of the warm-up training steps of 1, then of its warm-up inference passes, with that
     model alone in memory: on CUDA torch.cuda.max_memory_allocated, reset before each measurement; on
     CPU the peak RSS from getrusage. RSS is a process-wide high-water mark: it is reset through
     /proc/self/clear_refs where Linux allows it, and even then it counts all the process holds (the
     Python runtime, freed memory the allocator kept, the previous model's leftovers), not this model alone;
  5. images/s of the training data path alone: prepare_cells, the stage's Dataset with train=True
     augmentation and make_loader with --workers, batches moved to the device, no model. Timed from the
     second batch, so that worker start-up is left out. loader/model = loader img/s / train img/s: above 1
     the loader keeps up with training. On a CPU the workers and the model share the cores in a real run,
     so there both are slower than measured apart.
Times are medians over --steps steps after --warmup untimed ones, synchronised on CUDA (with --compile,
the warm-up steps pay for the compilation). Unset --backbone, --img-size, --batch-size, --lr and
--decoder-channels come from each stage's defaults or --preset, as in main_segment.py / main_classify.py.
The table's first line gives the load average: on a CPU shared with another job the torch threads lose far
more than their share (--preset cpu: 3-4x slower on 2 cores beside one training job), so compare like loads.
Data: --data-root (any layout with masks; classification uses its ground-truth masks), else a generated
demo set in a temporary folder. Prints a Markdown table, one row per model; --output-json writes the rows.
"""
import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/throughput.py`: the repo's packages are one folder up

import torch  # noqa: E402

import train_classify  # noqa: E402
import train_segment  # noqa: E402
from benchmarks import predict_speed  # noqa: E402
from benchmarks.herlev import git_commit  # noqa: E402
from model.classification_model import ConvNeXtAttentionClassifier  # noqa: E402
from model.segmentation_model import DualHeadAttConvNeXtUNet  # noqa: E402
from tools.acceleration import (  # noqa: E402
    Acceleration,
    autocast,
    resolve_acceleration,
    resolve_device,
    to_device,
    wrap_for_training,
)
from tools.config import HelpFormatter, name_flag, parse_stage_args, training_parser  # noqa: E402
from tools.data_loader import (  # noqa: E402
    ClassificationDataset,
    SegmentationDataset,
    make_loader,
    prepare_cells,
)
from tools.demo_data import make_demo_dataset  # noqa: E402
from tools.engine import backward_and_step, forward_loss, seed_everything  # noqa: E402
from tools.layouts.cells import read_records  # noqa: E402
from tools.layouts.record import CellRecord  # noqa: E402
from tools.masks import ground_truth_masks  # noqa: E402
from tools.optim import adamw  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

STAGES = ("segmentation", "classification")
CLASS_NAMES = [f"class{i}" for i in range(6)]  # Herlev's 6 classes: only the classifier's last layer depends on them
DEMO_CLUSTERS_PER_CLASS = 12  # several batches per epoch; `make demo`'s size when the throughput table was measured


def get_args(argv=None) -> Dict[str, argparse.Namespace]:
    """One resolved Namespace per stage asked for: unset flags filled from that stage's defaults and --preset."""
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/throughput.py --preset cpu\n" + __doc__.splitlines()[0],
        parents=[training_parser("segmentation")], formatter_class=HelpFormatter,
        epilog="Model flags left unset take each stage's value from tools/config.py (STAGE_DEFAULTS, PRESETS), as in "
               "training; the help above quotes the segmentation ones. Weights are random (--pretrained is ignored); "
               "--cache-dir is not used: cells are decoded before the loader is timed.")
    parser.set_defaults(data_root=None)  # None: generate a demo set in a temporary folder
    group = parser.add_argument_group("throughput")
    group.add_argument("--stage", default="both", **name_flag([*STAGES, "both"]), help="model(s) to measure")
    group.add_argument("--decoder-channels", type=int, nargs=3, default=None, metavar=("D16", "D8", "D4"),
                       help="segmentation decoder widths at strides 16/8/4 (default: the stage's, see --preset)")
    group.add_argument("--steps", type=int, default=20, help="timed steps per measurement (the median is reported)")
    group.add_argument("--warmup", type=int, default=3,
                       help="untimed steps before them (allocator, cuDNN, compile); the peak memory is taken over these")
    group.add_argument("--loader-batches", type=int, default=40,
                       help="timed data-loader batches, over as many epochs as it takes")
    group.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    group.add_argument("--predict-run", type=Path, default=None,
                       help="also time predict.py end to end (benchmarks/predict_speed.py) with this run's checkpoints, "
                            "ONNX Runtime against PyTorch, on --predict-cells copies of the images of --data-root")
    group.add_argument("--predict-cells", type=int, default=1000, help="images predict.py is timed on")
    parsed = parser.parse_args(argv)
    if parsed.steps < 1 or parsed.warmup < 1:
        parser.error("--steps and --warmup need at least 1 (the peak memory is measured over the warm-up steps)")
    stage = parsed.stage
    return {name: parse_stage_args(parser, name, argv) for name in (STAGES if stage == "both" else (stage,))}


# ---------------------------------------------------------------- one model, synthetic batches

def build_model(stage: str, args: argparse.Namespace) -> torch.nn.Module:
    if stage == "segmentation":
        return DualHeadAttConvNeXtUNet(**train_segment.model_config(args))
    return ConvNeXtAttentionClassifier(**train_classify.model_config(args, CLASS_NAMES))


def stage_loss(stage: str) -> Callable:
    if stage == "segmentation":
        return train_segment.segmentation_loss
    # main_classify.py weights the classes (--class-weights) and smooths the labels (0.1); uniform weights cost the same
    return train_classify.classification_task(CLASS_NAMES, torch.ones(len(CLASS_NAMES)), label_smoothing=0.1).loss


def synthetic_batch(stage: str, batch_size: int, img_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and targets shaped as the stage's Dataset yields them (on the CPU: to_device moves them)."""
    if stage == "segmentation":
        masks = (torch.rand(batch_size, 2, img_size, img_size) > 0.5).float()  # [B, 2, S, S]: cell, nucleus
        return torch.randn(batch_size, 3, img_size, img_size), masks
    return torch.randn(batch_size, 5, img_size, img_size), torch.randint(0, len(CLASS_NAMES), (batch_size,))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingRun:
    """One model with its optimiser, scaler and a fixed batch on the device, set up as the engine sets up training."""

    def __init__(self, stage: str, args, accel: Acceleration, device: torch.device):
        seed_everything(args.seed)  # every run starts from the same weights
        self.model = build_model(stage, args).to(device)
        self.training_model = wrap_for_training(self.model, accel, device)
        self.optimizer = adamw(self.model, args.lr, args.weight_decay, fused=accel.fused_adamw)
        self.scaler = accel.grad_scaler(device)
        batch = synthetic_batch(stage, args.batch_size, args.img_size)
        self.inputs, self.targets = to_device(batch, device, accel.channels_last)
        self.loss_fn, self.accel, self.device = stage_loss(stage), accel, device

    def train_step(self) -> float:
        """Seconds of one step of tools/engine.train_one_epoch, minus the loader, the nan check and the schedule."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.accel.cudnn_benchmark  # a global: the interleaved runs differ
        self.training_model.train()
        synchronize(self.device)
        started = time.perf_counter()
        loss = forward_loss(self.training_model, self.inputs, self.targets, self.loss_fn, self.accel)
        backward_and_step(loss, self.optimizer, self.scaler)
        synchronize(self.device)
        return time.perf_counter() - started

    @torch.no_grad()
    def inference_pass(self) -> float:
        """Seconds of one forward pass of the bare model in eval mode, as tools/engine.evaluate runs it."""
        self.model.eval()
        synchronize(self.device)
        started = time.perf_counter()
        with autocast(self.device, self.accel.amp_dtype):
            self.model(self.inputs)
        synchronize(self.device)
        return time.perf_counter() - started


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: the RSS high-water mark restarts from now
    except OSError:
        pass  # elsewhere getrusage keeps the process's lifetime peak


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_model(stage: str, args, device: torch.device) -> Dict:
    """Median seconds per training step (flags in effect, and plain fp32) and per inference pass; peak memory."""
    accel = resolve_acceleration(args, device)

    # 1. The flags in effect, alone in memory: peak memory of the warm-up training steps, then of inference
    reset_peak_memory(device)
    tuned = TrainingRun(stage, args, accel, device)
    for _ in range(args.warmup):
        tuned.train_step()
    peak_train = peak_memory_mib(device)
    reset_peak_memory(device)
    for _ in range(args.warmup):
        tuned.inference_pass()
    peak_inference = peak_memory_mib(device)

    # 2. Plain fp32 beside it. The three timings alternate, so that all see the same load: on a shared machine
    # the other jobs come and go, and runs timed one after the other compare different machines
    plain = TrainingRun(stage, args, Acceleration(), device)
    for _ in range(args.warmup):
        plain.train_step()
    seconds = {"train_s": [], "plain_train_s": [], "inference_s": []}
    for _ in range(args.steps):
        seconds["train_s"].append(tuned.train_step())
        seconds["plain_train_s"].append(plain.train_step())
        seconds["inference_s"].append(tuned.inference_pass())
    del tuned, plain
    release(device)
    return {**{name: statistics.median(values) for name, values in seconds.items()}, "flags": describe(accel),
            "peak_train_mib": peak_train, "peak_inference_mib": peak_inference}


def describe(accel: Acceleration) -> str:
    """'bf16, channels_last, fused_adamw, cudnn_benchmark' or 'fp32': the speed-ups a run gets."""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(accel.amp_dtype, "fp32")
    return ", ".join([precision] + [name for name in ("channels_last", "compile", "fused_adamw", "cudnn_benchmark")
                                    if getattr(accel, name)])


# ---------------------------------------------------------------- the data path alone

def cell_records(args, workdir: Path) -> Tuple[Path, List[CellRecord]]:
    """The cells of --data-root, or of a demo set generated under workdir; they must have masks."""
    root = args.data_root or make_demo_dataset(workdir / "demo", clusters_per_class=DEMO_CLUSTERS_PER_CLASS, seed=0)
    records, _ = read_records(root, args.layout, args.sipakmed_source, args.nuc_suffix, args.cyt_suffix)
    if not records[0].has_masks:
        raise UserError(f"{root}: this layout has no masks; both stages' data paths need them (pass a data root with "
                        f"masks, or leave --data-root out for generated demo data)")
    return root, records


def loader_images_per_second(stage: str, args, records: Sequence[CellRecord], device: torch.device) -> float:
    """Images/s of the training loader, from its second batch on (worker start-up left out)."""
    # No cell cache: decoding happens before the timing anyway, and a temporary demo set would leave stale files
    cells = prepare_cells(records, args.img_size, ground_truth_masks, f"loading cells ({stage})", cache_dir=None)
    if stage == "segmentation":
        dataset = SegmentationDataset(cells, train=True)
    else:
        dataset = ClassificationDataset(cells, sorted({r.label for r in records}), train=True)
    loader = make_loader(dataset, args.batch_size, True, args.workers, device, args.seed,
                         drop_last=len(dataset) > args.batch_size)
    channels_last = resolve_acceleration(args, device).channels_last
    images, batches, started, epoch = 0, 0, None, 0
    while batches < args.loader_batches:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # new order and augmentation each epoch, as in fit()
        for batch in loader:
            inputs, _ = to_device(batch, device, channels_last)
            synchronize(device)
            if started is None:
                started = time.perf_counter()
                continue
            images, batches = images + len(inputs), batches + 1
            if batches == args.loader_batches:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    del loader  # stops the persistent workers
    return images / seconds


# ---------------------------------------------------------------- the report

def measure_stage(stage: str, args, records: Sequence[CellRecord]) -> Dict:
    device = resolve_device(args.device)
    print(f"{stage}: {args.backbone}, {args.img_size}px, batch {args.batch_size} on {device}", flush=True)
    times = measure_model(stage, args, device)
    loader = loader_images_per_second(stage, args, records, device)
    train = args.batch_size / times["train_s"]
    plain = args.batch_size / times["plain_train_s"]
    return {
        "model": stage, "backbone": args.backbone, "img_size": args.img_size, "batch_size": args.batch_size,
        "device": str(device), "flags": times["flags"], "train_images_per_s": train,
        "plain_fp32_train_images_per_s": plain, "train_speedup": train / plain,
        "inference_images_per_s": args.batch_size / times["inference_s"],
        "peak_memory": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "peak_train_memory_mib": times["peak_train_mib"], "peak_inference_memory_mib": times["peak_inference_mib"],
        "workers": args.workers, "loader_images_per_s": loader, "loader_to_model": loader / train,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # other processes on the cores slow 2 torch threads far more than their share: say how busy the machine was
    return f"CPU, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def markdown_table(results: Dict) -> str:
    rows = results["rows"]
    memory = "peak CUDA alloc. (MiB)" if rows[0]["peak_memory"] == "cuda_max_allocated" else "peak RSS (MiB)"
    header = ["model", "backbone", "size", "batch", "device", "flags", "train img/s", "plain fp32 train img/s", "ratio",
              "inference img/s", f"train {memory}", "loader img/s", "loader/model"]
    lines = [f"{results['device_name']}, torch {results['torch']}, commit {results['commit']}; medians over "
             f"{results['steps']} steps after {results['warmup']} warm-up; loader: {rows[0]['workers']} workers, "
             f"{results['loader_batches']} batches, {results['cells']} cells of {results['data']}",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["backbone"], row["img_size"], row["batch_size"], row["device"], row["flags"],
                 f"{row['train_images_per_s']:.1f}", f"{row['plain_fp32_train_images_per_s']:.1f}",
                 f"{row['train_speedup']:.2f}", f"{row['inference_images_per_s']:.1f}",
                 f"{row['peak_train_memory_mib']:.0f}", f"{row['loader_images_per_s']:.0f}", f"{row['loader_to_model']:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines + ["", f"Command: `{results['command']}`", ""])


@exit_on_user_error
def main(argv=None) -> None:
    args_of = get_args(argv)
    first = next(iter(args_of.values()))
    machine = device_name(resolve_device(first.device))  # before the measurements load the machine themselves
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        root, records = cell_records(first, Path(workdir))
        rows = [measure_stage(stage, args, records) for stage, args in args_of.items()]
    results = {
        "command": " ".join(["python benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": git_commit(), "torch": torch.__version__, "device_name": machine,
        "data": "generated demo data" if first.data_root is None else str(root), "cells": len(records),
        "steps": first.steps, "warmup": first.warmup, "loader_batches": first.loader_batches, "rows": rows,
    }
    if first.predict_run is not None:
        results["predict"] = predict_speed.measure(predict_speed.get_args(
            ["--run-dir", str(first.predict_run), "--images", str(root), "--cells", str(first.predict_cells)]))
    if first.output_json is not None:
        first.output_json.parent.mkdir(parents=True, exist_ok=True)
        first.output_json.write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    if "predict" in results:
        print(predict_speed.markdown_table(results["predict"]))


if __name__ == "__main__":
    main()
