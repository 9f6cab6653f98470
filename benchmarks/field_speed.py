"""Field speed (issue 12): seconds per 2048 x 1536 field of view on ONNX Runtime and on PyTorch, and the peak memory
of predict.py --fields on a large slide.

    python benchmarks/field_speed.py --run-dir runs/isbi2 --field ../shared/data/isbi2014/edf/edf01.png --big-side 4096
    python benchmarks/field_speed.py --run-dir runs/isbi2 --field slide.png --big-side 20000 --tmp-dir /scratch

The field: --field images (any RGB image; several are laid side by side) are tiled, mirrored at every seam, into
one --width x --height field at their own pixel size; without --field a generated demo cluster image is tiled
(synthetic cells: the timings hold, the cell counts mean little). It is measured three ways:
  1. segment_field alone, in this process, per backend: the median of --repeats runs after one warm-up, on
     models already loaded (tiling, both field models, nuclei, cells; no classification, no writing);
  2. predict.py --fields on that field, once per backend, in a subprocess: its whole path (start-up with
     imports, models and sessions; reading, segmenting, classifying when the run has a classifier, writing),
     the start-up and prediction seconds predict.py reports in summary.json, and its peak RSS (getrusage
     of its children in a bare interpreter that starts it: see PEAK_RSS_LAUNCHER);
  3. --big-side: the field tiled into an uncompressed side x side TIFF in --tmp-dir (deleted afterwards; a
     20000 px side is 1.2 GB), which predict.py maps and reads block by block; its wall time and peak RSS,
     with ONNX Runtime. Its time is estimated from 2. first and printed; 20000 px takes many minutes on 2 cores.
     The peak RSS counts the TIFF pages predict.py has read (file-backed, given back under memory pressure)
     and the two full-size uint16 label images it writes (2 x 2 bytes per pixel).
The ONNX files are exported into RUN_DIR/outputs/onnx first when missing, outside the timings. The table's
first line gives the threads and the load average: on a CPU shared with other jobs the seconds grow, so compare
like loads. Prints a Markdown table; --output-json writes the rows.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/field_speed.py`: the repo's packages are one folder up

from benchmarks.herlev import git_commit  # noqa: E402
from tools.config import HelpFormatter, name_flag  # noqa: E402
from tools.fields.models import load_field_models  # noqa: E402
from tools.fields.segment import segment_field  # noqa: E402
from tools.inputs import input_files  # noqa: E402
from tools.layouts.files import IMAGE_EXTENSIONS  # noqa: E402
from tools.run_dir import RunPaths  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402
from utils.files import write_image  # noqa: E402
from utils.preprocessing import read_image  # noqa: E402

BACKENDS = ("onnx", "torch")
BIG_BACKEND = "onnx"  # predict.py's default on a CPU


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/field_speed.py --run-dir runs/isbi2014 "
                    "--field ../shared/data/isbi2014/edf/edf01.png\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="run folder with checkpoints/fields_best.pth and instances_best.pth")
    parser.add_argument("--field", type=Path, nargs="*", default=[],
                        help="images, folders or glob patterns tiled into the field (default: a generated demo cluster image)")
    parser.add_argument("--width", type=int, default=2048, help="field width in px")
    parser.add_argument("--height", type=int, default=1536, help="field height in px")
    parser.add_argument("--repeats", type=int, default=3, help="timed segment_field runs per backend (the median is reported)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), **name_flag(BACKENDS), help="backends to time")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ONNX Runtime and PyTorch threads (default: the cores this process may use)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles or cell windows per forward pass")
    parser.add_argument("--block-size", type=int, default=2048, help="predict.py --block-size")
    parser.add_argument("--big-side", type=int, default=20000, help="side of the large square TIFF; 0 skips it")
    parser.add_argument("--big-sparse", action="store_true",
                        help="the large TIFF is glass with a copy of the field every 2 blocks along its diagonal (as a "
                             "slide that is mostly background; minutes instead of the better part of an hour at 20000 px), "
                             "not the field tiled all over")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="where the field, the large TIFF and predict.py's outputs are written (default: the system's)")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.width < 1 or args.height < 1 or args.big_side < 0:
        parser.error("--repeats, --width and --height need at least 1, --big-side at least 0")
    return args


# ---------------------------------------------------------------- the images

def mirrored_strip(tiles: Sequence[np.ndarray], row: int, width: int) -> np.ndarray:
    """Row `row` of the mosaic [tile height, width, 3]: the tiles in turn, every other one mirrored left-right
    (and the whole row upside down on odd rows), so that a tile meets its own mirror image at a seam."""
    count = math.ceil(width / tiles[0].shape[1])
    parts = []
    for col in range(count):
        tile = tiles[(row * count + col) % len(tiles)]
        tile = tile[:, ::-1] if col % 2 else tile
        parts.append(tile[::-1] if row % 2 else tile)
    return np.concatenate(parts, axis=1)[:, :width]


def tiled_field(sources: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """uint8 RGB [height, width, 3] tiled from the sources, each cut to the smallest source's size."""
    tile_height, tile_width = min(s.shape[0] for s in sources), min(s.shape[1] for s in sources)
    tiles = [np.ascontiguousarray(s[:tile_height, :tile_width, :3]) for s in sources]
    strips = [mirrored_strip(tiles, row, width) for row in range(math.ceil(height / tile_height))]
    return np.ascontiguousarray(np.concatenate(strips)[:height])


def write_big_tiff(path: Path, field: np.ndarray, side: int, sparse: bool = False, block: int = 2048) -> Path:
    """An uncompressed side x side RGB TIFF, written strip by strip (never whole in memory): the field tiled over
    all of it, or (sparse) glass with a copy of the field every 2 blocks along the diagonal, each across a block
    border, as a slide that is mostly background."""
    import tifffile

    bigtiff = side * side * 3 > 2**32 - 2**25  # classic TIFF offsets are 32-bit
    mapped = tifffile.memmap(str(path), shape=(side, side, 3), dtype=np.uint8, photometric="rgb", bigtiff=bigtiff)
    if sparse:
        glass = np.percentile(field.reshape(-1, 3), 95, axis=0).astype(np.uint8)  # the field's bright background
        for top in range(0, side, field.shape[0]):
            mapped[top:top + field.shape[0]] = glass
        height, width = field.shape[:2]
        for centre in range(block, side, 2 * block):
            top, left = max(centre - height // 2, 0), max(centre - width // 2, 0)
            part = field[:side - top, :side - left]
            mapped[top:top + part.shape[0], left:left + part.shape[1]] = part
    else:
        for row, top in enumerate(range(0, side, field.shape[0])):
            strip = mirrored_strip([field], row, side)
            mapped[top:top + strip.shape[0]] = strip[:side - top]
    mapped.flush()
    del mapped
    return path


def source_images(paths: Sequence[Path], workdir: Path) -> List[np.ndarray]:
    if paths:
        return [read_image(path) for path in input_files(paths, IMAGE_EXTENSIONS)]
    from tools.demo_data import make_demo_dataset

    demo = make_demo_dataset(workdir / "demo", clusters_per_class=2, seed=0)
    return [read_image(path) for path in input_files([f"{demo}/im_*/im_*/002.bmp"])]  # the crowded clusters


# ---------------------------------------------------------------- 1. segment_field alone

def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def time_segment_field(args, field: np.ndarray) -> List[Dict]:
    """Median seconds of segment_field per backend; the backends take turns, so that both see the same load."""
    paths = RunPaths(args.run_dir)
    models = {}
    for backend in args.backends:
        if backend == "torch":
            set_torch_threads(args.threads)
        models[backend] = load_field_models(paths.checkpoint("fields"), paths.checkpoint("instances"), paths.onnx, backend,
                                            "cpu", args.threads, args.batch_size)
    read = lambda top, left, bottom, right: field[top:bottom, left:right]  # noqa: E731
    cells = {backend: len(segment_field(read, field.shape[:2], m, args.block_size)) for backend, m in models.items()}  # warm-up
    seconds = {backend: [] for backend in models}
    for _ in range(args.repeats):
        for backend, backend_models in models.items():
            started = time.perf_counter()
            segment_field(read, field.shape[:2], backend_models, args.block_size)
            seconds[backend].append(time.perf_counter() - started)
    return [{"measure": "segment_field", "backend": backend, "image": f"{field.shape[1]}x{field.shape[0]}",
             "seconds": statistics.median(seconds[backend]), "cells": cells[backend], "start_up_s": None,
             "predicting_s": None, "peak_rss_mib": None} for backend in models]


# ---------------------------------------------------------------- 2 and 3. predict.py --fields, whole

# Linux reports a child's peak RSS as at least its parent's RSS when it forked (exec keeps the old memory's
# high-water mark), and this process holds both models and the field: predict.py is started from a bare
# interpreter, which writes the peak of its one child to a file
PEAK_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
                     "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
                     "sys.exit(code)")


def run_predict(args, image: Path, backend: str, output: Path) -> Dict:
    """predict.py --fields on one image in a subprocess: wall seconds, its own timings, cells, its peak RSS."""
    command = [sys.executable, str(REPO / "predict.py"), str(image), "--fields", "--run-dir", str(args.run_dir),
               "--output-dir", str(output), "--backend", backend, "--device", "cpu", "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--block-size", str(args.block_size)]
    log, peak_file = output.with_name(output.name + ".log"), output.with_name(output.name + ".maxrss")
    started = time.perf_counter()
    with open(log, "w") as messages:
        code = subprocess.call([sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak_file), *command], cwd=REPO,
                               stdout=messages, stderr=messages)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}:\n{log.read_text()[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    peak_kib = int(peak_file.read_text()) / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux
    height, width = image_shape(image)
    return {"measure": "predict.py --fields", "backend": backend, "image": f"{width}x{height}", "seconds": wall,
            "cells": summary["overall"]["cells"], "start_up_s": summary["settings"]["seconds"]["start_up"],
            "predicting_s": summary["settings"]["seconds"]["predicting"], "peak_rss_mib": peak_kib / 1024}


def image_shape(path: Path):
    from tools.fields.readers import open_field

    return open_field(path)[1]


def estimated_seconds(row: Dict, side: int) -> float:
    """predict.py's seconds for a side x side image at the prediction rate (s per px) of `row`, plus its start-up."""
    width, height = map(int, row["image"].split("x"))
    return row["start_up_s"] + row["predicting_s"] * side * side / (width * height)


def measure(args) -> Dict:
    tmp_root = args.tmp_dir
    if tmp_root is not None:
        tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="field-speed-", dir=tmp_root) as workdir:
        workdir = Path(workdir)
        field = tiled_field(source_images(args.field, workdir), args.height, args.width)
        field_path = Path(write_image(workdir / "field.png", field))
        rows = time_segment_field(args, field)  # exports the ONNX files when needed, before any timing
        rows += [run_predict(args, field_path, backend, workdir / f"predict_{backend}") for backend in args.backends]
        estimate = None
        if args.big_side:
            predicted = [row for row in rows if row["measure"] == "predict.py --fields"]
            reference = next((row for row in predicted if row["backend"] == BIG_BACKEND), predicted[-1])
            estimate = estimated_seconds(reference, args.big_side)
            print(f"predict.py --fields on {args.big_side} x {args.big_side}: about {estimate / 60:.1f} min "
                  f"(from the {reference['image']} run{'; less when sparse' if args.big_sparse else ''})", flush=True)
            big = write_big_tiff(workdir / "big.tif", field, args.big_side, args.big_sparse, args.block_size)
            rows.append(run_predict(args, big, BIG_BACKEND, workdir / "predict_big"))
            big.unlink()
    return {"rows": rows, "big_estimate_s": estimate}


# ---------------------------------------------------------------- the report

def markdown_table(results: Dict) -> str:
    header = ["measure", "backend", "image", "seconds", "cells", "start-up (s)", "predicting (s)", "peak RSS (MiB)"]
    lines = [f"{results['machine']}, commit {results['commit']}; field tiled from {results['field_source']}; "
             f"segment_field: median of {results['repeats']} after 1 warm-up; predict.py: one run, wall seconds",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dash = lambda value, form: "–" if value is None else format(value, form)  # noqa: E731
    for row in results["rows"]:
        cells = [row["measure"], row["backend"], row["image"], f"{row['seconds']:.2f}", row["cells"],
                 dash(row["start_up_s"], ".2f"), dash(row["predicting_s"], ".2f"), dash(row["peak_rss_mib"], ".0f")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if results["big_estimate_s"] is not None:
        lines.append(f"\nThe last row was estimated at {results['big_estimate_s']:.0f} s before it ran.")
    return "\n".join(lines + ["", f"Command: `{results['command']}`", ""])


@exit_on_user_error
def main(argv=None) -> Dict:
    args = get_args(argv)
    machine = f"CPU, {args.threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    results = {"command": " ".join(["python benchmarks/field_speed.py", *(sys.argv[1:] if argv is None else argv)]),
               "commit": git_commit(), "machine": machine, "threads": args.threads, "repeats": args.repeats,
               "field_source": ", ".join(str(p) for p in args.field) or "a generated demo cluster image",
               **measure(args)}
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
