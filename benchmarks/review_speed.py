"""Review station speed (issue 30): how soon review.py shows a slide, how fast its tiles come, how much one view of a
100,000-cell slide sends.

    python benchmarks/review_speed.py --work-dir runs/review_speed

Made once in --work-dir and kept: the demo's fields (tools/demo_data.py), a demo-sized slide (8192 px, as `make
demo`) and a 40,000 x 40,000 slide of them (tools/fields/make_slide.py: pyramidal JPEG TIFF, levels 1/4/16), and
for each an output folder with generated cells (tools/review/synthetic.py; the 40,000 px slide gets 100,000).
Then, per slide, a fresh server (werkzeug, in a thread of this process) is asked over HTTP as the page asks:
  first view   the page, /info and the .dzi, then every tile of the opening view (a 1400 x 900 viewer at
               the zoom that fits the slide), one after another: the slide is on screen when the last arrives;
  tiles        TILES random tiles of the three finest levels, inside the slide's tissue (where a reviewer
               looks), from a warm server: median and 90th percentile;
  cells        the first /review (it builds the cell index), then /cells for the whole slide, a 4000 px view and
               a 1000 px view (outlines read from the GeoJSON the first time): mode, cells, bytes, seconds.
Prints a Markdown table; --output-json writes it.
"""
import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/review_speed.py`: the repo's packages are one folder up

from tools.config import HelpFormatter  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

VIEWER = (1400, 900)  # px of the viewer the first view fills


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/review_speed.py --work-dir runs/review_speed\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/review_speed"), help="slides and outputs (kept)")
    parser.add_argument("--tiles", type=int, default=50, help="random tiles timed per slide")
    parser.add_argument("--cells", type=int, default=100_000, help="generated cells on the 40,000 px slide")
    parser.add_argument("--side", type=int, default=40000, help="side of the large slide in px")
    parser.add_argument("--seed", type=int, default=0, help="which tiles")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def prepared(work: Path, side: int, cells: int) -> Dict[str, Path]:
    """slide name -> its output folder, making fields, slides and cells on first use."""
    from tools.demo_data import make_demo_dataset
    from tools.fields.make_slide import make_slide
    from tools.review.synthetic import write_generated_cells

    fields_root = work / "fields"
    if not (fields_root / ".done").exists():
        make_demo_dataset(fields_root, clusters_per_class=3, seed=0)
        (fields_root / ".done").touch()
    fields = sorted(fields_root.glob("im_*/im_*/00[1-3].bmp"))
    outputs = {}
    for name, slide_side, count, cell_count in (("demo", 8192, None, 500), ("large", side, 200, cells)):
        slide, out = work / f"{name}.tiff", work / f"out_{name}"
        if not slide.exists():
            started = time.perf_counter()
            make_slide(fields, slide, side=slide_side, mpp=0.5, quality=90, seed=0, count=count)
            print(f"made {slide} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if not (out / f"{name}_summary.json").exists():
            started = time.perf_counter()
            write_generated_cells(out, name, cell_count, slide_side, slide.resolve())
            print(f"generated {cell_count} cells in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        outputs[name] = out
    return outputs


def serve(output_dir: Path):
    """(base URL, server) of a fresh review app on a free port."""
    from werkzeug.serving import make_server

    from tools.review.app import create_app

    server = make_server("127.0.0.1", 0, create_app(output_dir), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def opening_tiles(dzi: Dict) -> List[str]:
    """Tile paths of the view that fits the whole slide into VIEWER, at the level OpenSeadragon draws it."""
    fit = min(VIEWER[0] / dzi["width"], VIEWER[1] / dzi["height"])
    level = dzi["levels"] - 1 - max(0, math.floor(math.log2(1 / fit)))
    downsample = 2 ** (dzi["levels"] - 1 - level)
    cols, rows = (math.ceil(math.ceil(side / downsample) / dzi["tileSize"]) for side in (dzi["width"], dzi["height"]))
    return [f"tiles/{level}/{c}_{r}.jpeg" for r in range(rows) for c in range(cols)]


def first_view(output_dir: Path, name: str) -> Dict:
    base, server = serve(output_dir)
    try:
        started = time.perf_counter()
        get(f"{base}/slide/{name}")
        info = json.loads(get(f"{base}/api/{name}/info"))
        get(f"{base}/api/{name}.dzi")
        page = time.perf_counter() - started
        tiles = opening_tiles(info["dzi"])
        for path in tiles:
            get(f"{base}/api/{name}/{path}")
        return {"page_and_dzi_s": round(page, 3), "first_view_s": round(time.perf_counter() - started, 3),
                "first_view_tiles": len(tiles), "dzi": info["dzi"]}
    finally:
        server.shutdown()


def tile_latency(output_dir: Path, name: str, count: int, seed: int) -> Dict:
    """Median and 90th percentile seconds of `count` tiles of the 3 finest levels on the fields' area."""
    import random

    from tools.review.catalogue import read_catalogue

    manifest = json.loads(Path(read_catalogue(output_dir)[name].input_path).with_suffix(".json").read_text())
    rng = random.Random(seed)
    base, server = serve(output_dir)
    try:
        dzi = json.loads(get(f"{base}/api/{name}/info"))["dzi"]
        seconds = []
        for _ in range(count):
            placed = rng.choice(manifest["fields"])
            x, y = placed["x"] + rng.random() * placed["width"], placed["y"] + rng.random() * placed["height"]
            level = dzi["levels"] - 1 - rng.randrange(3)
            downsample = 2 ** (dzi["levels"] - 1 - level)
            col, row = int(x / downsample // dzi["tileSize"]), int(y / downsample // dzi["tileSize"])
            started = time.perf_counter()
            get(f"{base}/api/{name}/tiles/{level}/{col}_{row}.jpeg")
            seconds.append(time.perf_counter() - started)
        seconds.sort()
        return {"tile_median_ms": round(1000 * statistics.median(seconds), 1),
                "tile_p90_ms": round(1000 * seconds[int(0.9 * (len(seconds) - 1))], 1)}
    finally:
        server.shutdown()


def cells_in_view(output_dir: Path, name: str, side: int) -> List[Dict]:
    base, server = serve(output_dir)
    rows = []
    try:
        started = time.perf_counter()
        get(f"{base}/api/{name}/review")  # the first request that needs the cell index builds it
        rows.append({"view": "cell index built (first /review)", "seconds": round(time.perf_counter() - started, 3)})
        centre = side // 2
        for label, half, scale in (("whole slide", side // 2, VIEWER[0] / side), ("4000 px", 2000, VIEWER[0] / 4000),
                                   ("1000 px", 500, VIEWER[0] / 1000)):
            query = f"x0={centre - half}&y0={centre - half}&x1={centre + half}&y1={centre + half}&scale={scale}"
            started = time.perf_counter()
            data = get(f"{base}/api/{name}/cells?{query}")
            answer = json.loads(data)
            rows.append({"view": label, "mode": answer["mode"], "cells": answer["total"], "bytes": len(data),
                         "seconds": round(time.perf_counter() - started, 3)})
    finally:
        server.shutdown()
    return rows


@exit_on_user_error
def main(argv=None) -> int:
    args = get_args(argv)
    outputs = prepared(args.work_dir, args.side, args.cells)
    slides = []
    for name, output_dir in outputs.items():
        row = {"slide": name, **first_view(output_dir, name), **tile_latency(output_dir, name, args.tiles, args.seed)}
        slides.append(row)
    cells = cells_in_view(outputs["large"], "large", args.side)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    print("| slide | page + info + DZI | first view (tiles) | tile median | tile p90 |\n|---|---|---|---|---|")
    for row in slides:
        size = f"{row['dzi']['width']:,} x {row['dzi']['height']:,}"
        print(f"| {row['slide']} ({size}) | {row['page_and_dzi_s']:.3f} s | {row['first_view_s']:.3f} s "
              f"({row['first_view_tiles']}) | {row['tile_median_ms']} ms | {row['tile_p90_ms']} ms |")
    print(f"\n| {args.cells:,} cells: view | drawn as | cells | bytes | seconds |\n|---|---|---|---|---|")
    for row in cells:
        print(f"| {row['view']} | {row.get('mode', '')} | {row.get('cells', '')} | {row.get('bytes', '')} | {row['seconds']} |")
    if args.output_json:
        args.output_json.write_text(json.dumps({"slides": slides, "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
