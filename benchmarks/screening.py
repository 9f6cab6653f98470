"""The screening answer on annotated real smears (issue 29): predict.py --fields on a run's test fields of a CRIC root,
scored against the annotated nucleus points, then the same fields pasted on a slide and screened end to end.

    python benchmarks/screening.py --data-root ../shared/data/cric --run-dir runs/cric

1. The fields of --split (test) are those of the split manifest the run trained with (<run-dir>/splits/, the cells'
   manifest of the cric layout, else the field models'; --split-file names another, --split all takes every field);
2. predict.py --fields runs on them in a subprocess (or --predictions names a folder it already wrote);
3. tools/screening.py scores each field's GeoJSON against its points: detection recall (a point inside a predicted
   nucleus or within 12 px of its centre), predicted cells per annotated cell, Bethesda's metrics on the cells found,
   NILM vs abnormal ROC-AUC and sensitivity at 90 % / 95 % specificity, the field AUC (field score: its most
   suspicious cell) and the top-10 hit rate;
4. unless --no-slide, the fields are pasted on a generated slide (tools/fields/make_slide.py, its manifest saying
   where each lies), predict.py screens it, and its cells, moved back into their fields, are scored the same way.
Prints a Markdown table and the recall per class; writes everything to --output-json.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.herlev import git_commit  # noqa: E402
from benchmarks.slide_speed import made_slide, markdown, run_predict  # noqa: E402
from tools.config import HelpFormatter, name_flag  # noqa: E402
from tools.fields.make_slide import FIELD_GAP_PX, LEVEL_DOWNSAMPLES, TILE_PX  # noqa: E402
from tools.layouts.points import FieldPoints, read_field_points  # noqa: E402
from tools.run_dir import RunPaths  # noqa: E402
from tools.screening import (  # noqa: E402
    MATCH_RADIUS_PX,
    PredictedCells,
    cells_on_slide_fields,
    read_predicted_cells,
    score_fields,
)
from utils.errors import UserError, exit_on_user_error  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python benchmarks/screening.py --data-root ../shared/data/cric --run-dir runs/cric\n"
                    + __doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="a CRIC root: field images and classifications.csv")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder with the field models and the classifier")
    parser.add_argument("--split", default="test", **name_flag(["test", "val", "train", "all"]),
                        help="fields to score: a split of the run's manifest, or every field of --data-root")
    parser.add_argument("--split-file", type=Path, default=None,
                        help="the split manifest to take the fields from (default: the run's manifest of --data-root)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="a folder predict.py --fields already wrote for these fields (<name>.geojson each): score "
                             "it instead of running predict.py")
    parser.add_argument("--work-dir", type=Path, default=None, help="predictions and slide (default: <run-dir>/screening)")
    parser.add_argument("--no-slide", action="store_true", help="score the fields alone, without the slide made of them")
    parser.add_argument("--slide-mpp", type=float, default=0.0,
                        help="microns per pixel written into the slide; 0 (default) writes none, so the slide is read "
                             "at the fields' own pixel size as they are")
    parser.add_argument("--seed", type=int, default=0, help="where the fields land on the slide")
    parser.add_argument("--output-json", type=Path, default=None, help="default: <work-dir>/screening.json")
    parser.add_argument("predict_flags", nargs="*",
                        help="after --: more predict.py flags (both runs), e.g. -- --min-cells 0 for a call on a slide of "
                             "fewer than predict.py's 5000 cells")
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir or args.run_dir / "screening"
    args.output_json = args.output_json or args.work_dir / "screening.json"
    return args


def manifest_path(args: argparse.Namespace) -> Path:
    """The split manifest the run trained with: --split-file, else the run's cells manifest of the root, else its
    fields manifest."""
    if args.split_file is not None:
        candidates = [args.split_file]
    else:
        paths = RunPaths(args.run_dir)
        candidates = [paths.manifest(args.data_root), paths.manifest(args.data_root, "fields")]
    for path in candidates:
        if Path(path).is_file():
            return Path(path)
    raise UserError(f"{candidates[0]}: no split manifest of {args.data_root} in {args.run_dir}; train the run on this "
                    f"root first, pass --split-file, or --split all to score every field")


def split_of_fields(fields: Sequence[FieldPoints], manifest: Path) -> Dict[str, str]:
    """field_id -> split, from a manifest whose samples are fields, or cells grouped by their field."""
    try:
        samples = json.loads(manifest.read_text())["samples"]
        split_of = {key: s["split"] for s in samples for key in (s["group"], s["id"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{manifest}: split manifest cannot be read ({error}); pass another --split-file")
    unknown = [f.field_id for f in fields if f.field_id not in split_of]
    if unknown:
        raise UserError(f"{manifest}: field {unknown[0]} ({len(unknown)} in all) is in no split, so the manifest is not "
                        f"of this root; pass the run's --split-file, or --split all")
    return {f.field_id: split_of[f.field_id] for f in fields}


def fields_of_split(fields: Sequence[FieldPoints], manifest: Path, split: str) -> List[FieldPoints]:
    """The fields the manifest puts in `split`."""
    split_of = split_of_fields(fields, manifest)
    return [f for f in fields if split_of[f.field_id] == split]


def check_models_agree(args: argparse.Namespace, fields: Sequence[FieldPoints], chosen: Sequence[FieldPoints]) -> None:
    """Say so when the field models trained on a manifest that puts some of the chosen fields in another split: the
    numbers on those fields are optimistic (the cells' and the fields' manifests are made apart unless given one)."""
    fields_manifest = RunPaths(args.run_dir).manifest(args.data_root, "fields")
    if args.split_file is not None or not fields_manifest.is_file():
        return
    split_of = split_of_fields(fields, fields_manifest)
    elsewhere = [f.field_id for f in chosen if split_of[f.field_id] != args.split]
    if elsewhere:
        print(f"note: {fields_manifest} puts {len(elsewhere)} of these {len(chosen)} {args.split} fields in another split "
              f"(e.g. {elsewhere[0]}): the field models may have trained on them")


def predicted_cells(fields: Sequence[FieldPoints], folder: Path) -> Dict[str, PredictedCells]:
    """Each field's cells from a predict.py --fields folder: its summary.json names every input's outputs."""
    summary_path = folder / "summary.json"
    name_of = {f.field_id: f.field_id for f in fields}
    if summary_path.is_file():
        inputs = {Path(s["input"]).resolve(): name for name, s in json.loads(summary_path.read_text())["fields"].items()}
        name_of.update({f.field_id: inputs[f.image_path.resolve()] for f in fields if f.image_path.resolve() in inputs})
    missing = [f for f in fields if not (folder / f"{name_of[f.field_id]}.geojson").is_file()]
    if missing:
        raise UserError(f"{folder}: no {name_of[missing[0].field_id]}.geojson for {missing[0].image_path} ({len(missing)} "
                        f"fields missing); run predict.py --fields on them into this folder, or leave --predictions out")
    return {f.field_id: read_predicted_cells(folder / f"{name_of[f.field_id]}.geojson") for f in fields}


def slide_side(fields: Sequence[FieldPoints]) -> int:
    """The smallest slide side that holds the fields on make_slide's grid, a multiple of its coarsest level."""
    cell = max(max(f.size) for f in fields) + FIELD_GAP_PX
    side = math.ceil(math.sqrt(len(fields))) * cell
    step = LEVEL_DOWNSAMPLES[-1]
    return max(TILE_PX, math.ceil(side / step) * step)


def screen_slide(args: argparse.Namespace, fields: Sequence[FieldPoints]) -> Dict:
    """Paste the fields on a slide, screen it with predict.py, score its cells in their fields."""
    slide = args.work_dir / "slide.tiff"
    manifest = made_slide([str(f.image_path) for f in fields], slide, slide_side(fields), 0, args.slide_mpp, args.seed)
    result = run_predict([slide], args.run_dir, args.work_dir / "slide_out", args.predict_flags)
    cells = read_predicted_cells(args.work_dir / "slide_out" / f"{slide.stem}.geojson")
    metrics, _ = score_fields(fields, cells_on_slide_fields(cells, manifest, fields))
    summary = next(iter(result["summary"]["fields"].values()))
    return {**metrics, "call": summary.get("call"), "slide_cells": len(cells), "wall_s": round(result["wall_s"], 1)}


def row(name: str, metrics: Dict) -> Dict:
    detection, cells, fields = metrics["detection"], metrics["cells"], metrics["fields"]
    binary, bethesda = cells.get("nilm_vs_abnormal", {}), cells.get("bethesda", {})

    def value(number):
        return "-" if number is None else round(number, 3)

    return {"": name, "annotated": detection["annotated_cells"], "recall": value(detection["detection_recall"]),
            "predicted / annotated": value(detection["predicted_per_annotated"]), "cell AUC": value(binary.get("roc_auc")),
            "sens @90 % spec": value(binary.get("sensitivity_at_90_specificity")),
            "sens @95 % spec": value(binary.get("sensitivity_at_95_specificity")),
            "6-class macro-F1": value(bethesda.get("six_classes", {}).get("macro_f1")),
            "3-grade acc": value(bethesda.get("three_grades", {}).get("accuracy")),
            "QWK": value(bethesda.get("six_classes", {}).get("quadratic_weighted_kappa")),
            "field AUC": value(fields.get("field_auc")), "top-10 hit": value(fields.get("top10_hit_rate"))}


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args(argv)
    fields = read_field_points(args.data_root)  # every check of the CSV before any work
    if args.split != "all":
        chosen = fields_of_split(fields, manifest_path(args), args.split)
        check_models_agree(args, fields, chosen)
        fields = chosen
    if not fields:
        raise UserError(f"{args.data_root}: no field in the {args.split} split; choose another --split")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    folder = args.predictions
    if folder is None:
        folder = args.work_dir / "fields_out"
        run_predict([f.image_path for f in fields], args.run_dir, folder, args.predict_flags)
    results = {"commit": git_commit(), "data_root": str(args.data_root), "run_dir": str(args.run_dir), "split": args.split,
               "fields": len(fields), "match_radius_px": MATCH_RADIUS_PX,
               "fields_alone": score_fields(fields, predicted_cells(fields, folder))[0]}
    if not args.no_slide:
        results["slide"] = screen_slide(args, fields)
    rows = [row("fields alone", results["fields_alone"])] + ([row("on a slide", results["slide"])] if "slide" in results else [])
    print(f"commit {results['commit']}, {len(fields)} {args.split} fields of {args.data_root}, run {args.run_dir}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {load:.2f} at the start")
    print(markdown(rows))
    recall = results["fields_alone"]["detection"]["recall_per_class"]
    print("\nrecall per class (fields alone): " + ", ".join(f"{name} {value:.3f}" for name, value in recall.items()))
    binary = results["fields_alone"]["cells"].get("nilm_vs_abnormal", {})
    if binary.get("threshold_at_95_specificity") is not None:
        print(f"abnormal score (1 - P(normal)) thresholds on these cells: {binary['threshold_at_90_specificity']:.3f} at 90 %, "
              f"{binary['threshold_at_95_specificity']:.3f} at 95 % specificity (--split val: a call's threshold, "
              f"predict.py --abnormal-probability)")
    if "slide" in results:
        print(f"slide: {results['slide']['slide_cells']} cells, call: {results['slide']['call']}, predict.py "
              f"{results['slide']['wall_s']} s")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
