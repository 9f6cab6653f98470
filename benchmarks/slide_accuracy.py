"""Whole slide against its fields (issue 23): do the nuclei that predict.py finds on a slide match those it finds
on the same fields given one by one, and what does the slide cost in time and memory?

    python benchmarks/slide_accuracy.py --run-dir runs/isbi2014 --fields ../shared/data/isbi2014/edf/edf0?.png \
        --side 40000 --work-dir /scratch/slide_accuracy

1. The fields (annotated ISBI 2014 EDF fields: <field>_nuclei.png beside each) are placed on a generated slide
   (benchmarks/slide_speed.py: pyramidal JPEG TIFF, levels 1/4/16, 0.25 um/px), kept in --work-dir;
2. predict.py --fields runs on the slide and, separately, on the field images, each in a subprocess whose wall
   time and peak RSS are measured;
3. the GeoJSON nuclei of both are scored against each field's annotation (nucleus F1 at IoU >= 0.5,
   tools/instance_metrics.py). On the slide, a nucleus belongs to the field that holds its centre, and nuclei
   that the field's own border cuts (touching or crossing it) are left out, as the annotation leaves them out
   and as predict.py drops those the image border cuts when it is given the field alone.
Prints a Markdown table per field and pooled; --output-json writes it.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.herlev import git_commit  # noqa: E402
from benchmarks.slide_speed import made_slide, markdown, run_predict  # noqa: E402
from tools.config import HelpFormatter  # noqa: E402
from tools.fields.make_slide import annotation_of, expand  # noqa: E402
from tools.instance_metrics import detection_scores, pool_detection_scores  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/slide_accuracy.py --run-dir runs/isbi2014 --fields "
                    "'../shared/data/isbi2014/edf/edf0?.png' --side 40000\n" + __doc__.splitlines()[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with the field models")
    parser.add_argument("--fields", nargs="+", required=True, help="annotated fields (<field>_nuclei.png beside each)")
    parser.add_argument("--side", type=int, default=40000, help="slide side in px")
    parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel written into the slide")
    parser.add_argument("--seed", type=int, default=0, help="where the fields land")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/slide_accuracy"), help="slide and outputs")
    parser.add_argument("--output-json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("predict_flags", nargs="*", help="after --: more predict.py flags for both runs")
    return parser.parse_args(argv)


def nucleus_rings(geojson: Path) -> List[np.ndarray]:
    """[N, 2] x, y pixel-edge points of every nucleus polygon in a GeoJSON file."""
    features = json.loads(geojson.read_text())["features"]
    return [np.array(f["nucleusGeometry"]["coordinates"][0]) for f in features if "nucleusGeometry" in f]


def masks_in_field(rings: List[np.ndarray], placed: Dict) -> List[np.ndarray]:
    """The nuclei whose centre lies in the field, as bool masks of the field; those its border cuts are left out."""
    x, y, height, width = placed["x"], placed["y"], placed["height"], placed["width"]
    masks = []
    for ring in rings:
        centre = ring[:-1].mean(axis=0)
        if not (x <= centre[0] < x + width and y <= centre[1] < y + height):
            continue
        if ring[:, 0].min() <= x or ring[:, 1].min() <= y or ring[:, 0].max() >= x + width or ring[:, 1].max() >= y + height:
            continue  # touches or crosses the field's border
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(ring - [x + 0.5, y + 0.5]).astype(np.int32)], 1)  # pixel edges -> centres
        masks.append(mask.astype(bool))
    return masks


def annotation(placed: Dict) -> np.ndarray:
    """The field's nucleus labels as training and evaluate.py read them (outlined nuclei filled)."""
    from tools.fields.layouts import read_nucleus_labels

    return read_nucleus_labels(Path(placed["annotation"]), (placed["height"], placed["width"]))


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    slide = args.work_dir / f"slide_{args.side}.tiff"
    unannotated = [field for field in expand(args.fields) if not annotation_of(field)]
    if unannotated:  # before minutes of making the slide
        raise UserError(f"{unannotated[0]}: no nucleus annotation beside it (<field>_nuclei.png, as ISBI 2014's EDF "
                        f"fields have); slide_accuracy.py scores annotated fields only")
    manifest = made_slide(args.fields, slide, args.side, 0, args.mpp, args.seed)
    load = os.getloadavg()[0]
    on_slide = run_predict([slide], args.run_dir, args.work_dir / "slide_out", args.predict_flags)
    fields = [Path(f["image"]) for f in manifest["fields"]]
    alone = run_predict(fields, args.run_dir, args.work_dir / "fields_out", args.predict_flags)
    slide_rings = nucleus_rings(args.work_dir / "slide_out" / f"{slide.stem}.geojson")
    rows, scores = [], {"slide": [], "fields": []}
    for placed, field in zip(manifest["fields"], fields):
        truth = annotation(placed)
        field_name = next(name for name, s in alone["summary"]["fields"].items() if Path(s["input"]) == field)
        field_rings = [ring + [placed["x"], placed["y"]]
                       for ring in nucleus_rings(args.work_dir / "fields_out" / f"{field_name}.geojson")]
        for kind, rings in (("slide", slide_rings), ("fields", field_rings)):
            scores[kind].append(detection_scores(truth, masks_in_field(rings, placed)))
        rows.append({"field": field.name, "nuclei": int(len(np.unique(truth)) - 1),
                     "F1 alone": round(scores["fields"][-1]["f1"], 3), "F1 on the slide": round(scores["slide"][-1]["f1"], 3)})
    pooled = {kind: pool_detection_scores(s) for kind, s in scores.items()}
    rows.append({"field": "all, pooled", "nuclei": sum(r["nuclei"] for r in rows),
                 "F1 alone": round(pooled["fields"]["f1"], 3), "F1 on the slide": round(pooled["slide"]["f1"], 3)})
    slide_summary = next(iter(on_slide["summary"]["fields"].values()))
    print(f"commit {git_commit()}, {len(os.sched_getaffinity(0))} cores, load average {load:.2f} at the start")
    print(markdown(rows))
    print(f"\nslide {manifest['shape'][1]} x {manifest['shape'][0]} px ({slide.stat().st_size / 1e6:.0f} MB, "
          f"{len(fields)} fields): predict.py {on_slide['wall_s']:.1f} s wall "
          f"({on_slide['summary']['settings']['seconds']['predicting']:.1f} s predicting), "
          f"peak RSS {on_slide['peak_rss_mib']:.0f} MiB, tissue map {slide_summary['tissue']['share']:.2%} of the slide, "
          f"{slide_summary['cells']} cells; the fields alone: {alone['wall_s']:.1f} s, {alone['peak_rss_mib']:.0f} MiB")
    if args.output_json:
        args.output_json.write_text(json.dumps({"rows": rows, "pooled": pooled, "slide_wall_s": on_slide["wall_s"],
                                                "slide_peak_rss_mib": on_slide["peak_rss_mib"]}, indent=1))


if __name__ == "__main__":
    main()
