"""Whole-slide speed (issue 23): wall time, megapixels of tissue per second and peak memory of predict.py --fields on
a generated slide.

    python benchmarks/slide_speed.py --run-dir runs/isbi2014 --fields ../shared/data/isbi2014/edf/edf0?.png \
        --side 100000 --coverage 0.05 --work-dir /scratch/slides

The slide (tools/fields/make_slide.py: the fields pasted on glass at random places, pyramidal JPEG TIFF, levels
1/4/16, 0.25 um/px) is made once in --work-dir and kept (a 100,000 px slide takes minutes and ~400 MB); then
predict.py --fields screens it in a subprocess, started by a bare interpreter that reads the peak RSS of its
children (getrusage), with the flags given after `--`. "Tissue" is the area of the fields placed on the slide
(the manifest's), so megapixels of tissue per second = that area / predict.py's own predicting seconds. The
table's first line says the load average: on shared cores the seconds grow. Prints a Markdown table;
--output-json writes it.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/slide_speed.py`: the repo's packages are one folder up

from benchmarks.herlev import git_commit  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

PEAK_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
                     "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
                     "sys.exit(code)")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/slide_speed.py --run-dir runs/isbi2014 --fields "
                    "'../shared/data/isbi2014/edf/edf0?.png' --side 100000 --coverage 0.05\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with the field models (and a classifier)")
    parser.add_argument("--fields", nargs="+", required=True, help="field images to place on the slide")
    parser.add_argument("--side", type=int, default=100000, help="slide side in px")
    parser.add_argument("--coverage", type=float, default=0.05, help="share of the slide covered by fields")
    parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel written into the slide")
    parser.add_argument("--seed", type=int, default=0, help="where the fields land")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/slide_speed"), help="slide and outputs")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("predict_flags", nargs="*", help="after --: more predict.py flags (e.g. -- --workers 1)")
    return parser.parse_args(argv)


def made_slide(fields: Sequence[str], path: Path, side: int, coverage: float, mpp: float, seed: int) -> Dict:
    """The slide's manifest, making the slide first unless the one there was made from the same request (its
    seconds in 'make_seconds'): a slide of other fields or settings under the same name is made again."""
    from tools.fields.make_slide import expand, make_slide

    sources = expand(fields)
    request = {"fields": [str(f.resolve()) for f in sources], "side": side, "coverage": coverage, "mpp": mpp, "seed": seed}
    manifest_path = path.with_suffix(".json")
    if path.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("request") == request:
            return manifest
    started = time.perf_counter()
    manifest = make_slide(sources, path, side, coverage=coverage or None, mpp=mpp, seed=seed)
    manifest.update(make_seconds=round(time.perf_counter() - started, 1), request=request)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def run_predict(inputs: Sequence[Path], run_dir: Path, output: Path, flags: Sequence[str]) -> Dict:
    """predict.py --fields in a subprocess: its wall seconds, its summary.json and its peak RSS in MiB."""
    command = [sys.executable, str(REPO / "predict.py"), *map(str, inputs), "--fields", "--run-dir", str(run_dir),
               "--output-dir", str(output), "--force", *flags]
    output.mkdir(parents=True, exist_ok=True)
    log, peak_file = output / "predict.log", output / "predict.maxrss"
    started = time.perf_counter()
    with open(log, "w") as messages:
        code = subprocess.call([sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak_file), *command], cwd=REPO,
                               stdout=messages, stderr=messages)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "summary": json.loads((output / "summary.json").read_text()),
            "peak_rss_mib": int(peak_file.read_text()) / 1024}


def slide_row(manifest: Dict, result: Dict, path: Path) -> Dict:
    summary = next(iter(result["summary"]["fields"].values()))
    tissue_mp = sum(f["height"] * f["width"] for f in manifest["fields"]) / 1e6
    predicting = result["summary"]["settings"]["seconds"]["predicting"]
    return {"slide": f"{manifest['shape'][1]} x {manifest['shape'][0]}", "fields": len(manifest["fields"]),
            "slide_mb": round(path.stat().st_size / 1e6, 1), "tissue_mp": round(tissue_mp, 1),
            "tissue_map_share": summary["tissue"]["share"], "blocks": summary["blocks"], "cells": summary["cells"],
            "wall_s": round(result["wall_s"], 1), "predicting_s": predicting,
            "tissue_mp_per_s": round(tissue_mp / predicting, 3), "peak_rss_mib": round(result["peak_rss_mib"]),
            "call": summary["call"]}


def markdown(rows: List[Dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows])


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    slide = args.work_dir / f"slide_{args.side}_{args.coverage:g}.tiff"
    before = slide.stat().st_mtime_ns if slide.exists() else None
    manifest = made_slide(args.fields, slide, args.side, args.coverage, args.mpp, args.seed)
    if slide.stat().st_mtime_ns != before:
        print(f"made {slide} in {manifest['make_seconds']} s ({slide.stat().st_size / 1e6:.0f} MB)")
    load = os.getloadavg()[0]
    result = run_predict([slide], args.run_dir, args.work_dir / "out", args.predict_flags)
    row = slide_row(manifest, result, slide)
    print(f"commit {git_commit()}, {len(os.sched_getaffinity(0))} cores, load average {load:.2f} at the start, "
          f"predict.py flags: {' '.join(args.predict_flags) or '(defaults)'}")
    print(markdown([row]))
    if args.output_json:
        args.output_json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
