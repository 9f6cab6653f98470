"""End-to-end speed of predict.py: cells/s of its whole path (decode, both stages with the flips, mask clean-up,
measurements, writing masks, overlays and tables) on the ONNX Runtime path against the plain PyTorch path.

benchmarks/throughput.py runs this with --predict-run; alone:
    python benchmarks/predict_speed.py --run-dir runs/herlev --images ../shared/data/herlev --cells 1000

The images (paired-layout masks are left out) are copied, cycling, into a temporary folder until there are
--cells of them; each backend then predicts them --repeats times, the backends taking turns so that both see
the same load. predict.py reports its start-up (process start to the first batch: imports, models, ONNX
sessions) and the seconds of its prediction loop in predictions.json; cells/s = cells / loop seconds.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from predict import find_images  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

BACKENDS = ("onnx", "torch")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/predict_speed.py --run-dir runs/herlev --images ../shared/data/herlev "
                    "--cells 1000\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with both *_best.pth checkpoints")
    parser.add_argument("--images", type=Path, required=True, help="folder of cell images (searched recursively)")
    parser.add_argument("--cells", type=int, default=1000, help="images to predict per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per backend (medians are reported)")
    parser.add_argument("--batch-size", type=int, default=16, help="predict.py --batch-size")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def stage_images(source: Path, count: int, folder: Path) -> None:
    """`count` copies of the images below `source`, cycling, named uniquely."""
    images = find_images([str(source)])
    for index in range(count):
        image = images[index % len(images)]
        shutil.copy(image, folder / f"{index:05d}{image.suffix.lower()}")


def predict_once(args, images: Path, backend: str, output: Path) -> Dict[str, float]:
    command = [sys.executable, "predict.py", str(images), "--run-dir", str(args.run_dir), "--output-dir", str(output),
               "--backend", backend, "--device", "cpu", "--batch-size", str(args.batch_size)]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = json.loads((output / "predictions.json").read_text())["seconds"]
    shutil.rmtree(output)
    return {"start_up_s": seconds["start_up"], "cells_per_s": args.cells / seconds["predicting"]}


def measure(args) -> List[Dict]:
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as workdir:
        images = Path(workdir) / "cells"
        images.mkdir()
        stage_images(args.images, args.cells, images)
        predict_once(args, images, "onnx", Path(workdir) / "warm")  # exports the ONNX files once, outside the timing
        runs = {backend: [] for backend in BACKENDS}
        for _ in range(args.repeats):
            for backend in BACKENDS:
                runs[backend].append(predict_once(args, images, backend, Path(workdir) / "out"))
    rows = [{"backend": backend, "cells": args.cells,
             "cells_per_s": statistics.median(r["cells_per_s"] for r in results),
             "start_up_s": statistics.median(r["start_up_s"] for r in results)} for backend, results in runs.items()]
    for row in rows:
        row["speedup"] = row["cells_per_s"] / rows[-1]["cells_per_s"]
    return rows


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| predict.py backend | cells | cells/s | start-up (s) | vs PyTorch |", "|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['cells']} | {r['cells_per_s']:.1f} | {r['start_up_s']:.2f} | {r['speedup']:.2f}x |"
              for r in rows]
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    rows = measure(args)
    if args.output_json:
        args.output_json.write_text(json.dumps(rows, indent=2))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
