"""Did `make demo` learn? Reads the demo run's results and stops with one line when a stage stayed at chance.

    python -m tools.demo_check --data-root data/demo --run-dir runs/demo

The demo trains each stage for a few epochs only, so that it ends in minutes; this check is what keeps those
epochs honest: a demo whose classifier guesses or whose field models find no cell fails here instead of
showing a meaningless report. Thresholds sit well above what a model that learned nothing scores, and well
below what the demo recipe reaches (docs/speed.md: the demo's stages and their numbers).
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

from tools.config import HelpFormatter
from tools.run_dir import RunPaths
from utils.errors import UserError, exit_on_user_error

# Masks that cover the whole crop score Dice 0.60 on the cell and 0.06 on the nucleus (mean over the demo's 162
# crops); the demo's 8 epochs reach 0.96 and 0.81 (docs/speed.md)
MIN_DICE_CELL = 0.85
MIN_DICE_NUCLEUS = 0.5
MIN_ACCURACY_OVER_CHANCE = 2.0  # test accuracy at least twice that of guessing among the classes
MIN_CELLS_FOUND = 0.5  # of the annotated cells of the crowded clusters given to predict.py --fields


def read_json(path: Path, made_by: str) -> Dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: missing or unreadable; run {made_by} first (make demo runs it)") from None


def check_cells(metrics: Dict) -> List[str]:
    """Both cell stages on the test split (evaluate.py's metrics.json); returns the lines to print."""
    segmentation, classification = metrics["segmentation"], metrics["classification"]
    chance = 1 / len(classification["class_names"])
    failures = []
    if segmentation["dice_cyt"] < MIN_DICE_CELL or segmentation["dice_nuc"] < MIN_DICE_NUCLEUS:
        failures.append(f"segmentation Dice cell {segmentation['dice_cyt']:.3f} / nucleus "
                        f"{segmentation['dice_nuc']:.3f} is under {MIN_DICE_CELL} / {MIN_DICE_NUCLEUS}")
    if classification["accuracy"] < MIN_ACCURACY_OVER_CHANCE * chance:
        failures.append(f"classification accuracy {classification['accuracy']:.3f} is under "
                        f"{MIN_ACCURACY_OVER_CHANCE:g}x chance ({chance:.2f})")
    if failures:
        raise UserError(f"the demo did not learn: {'; '.join(failures)}")
    return [f"segmentation: Dice whole cell {segmentation['dice_cyt']:.3f}, nucleus {segmentation['dice_nuc']:.3f} "
            f"({metrics['num_cells']} test cells)",
            f"classification: accuracy {classification['accuracy']:.3f}, macro-F1 {classification['macro_f1']:.3f} "
            f"(chance {chance:.2f})"]


def annotated_cells(data_root: Path, field_name: str) -> int:
    """Cells outlined in a SIPaKMeD cluster image's .dat files (field_name: its path below data_root, no suffix)."""
    image = data_root / f"{field_name}.bmp"
    if not image.is_file():
        raise UserError(f"{image}: not found; --data-root must be the folder of the clusters given to predict.py")
    return cells_outlined(image)


def cells_outlined(image: Path) -> int:
    return len(list(image.parent.glob(f"{image.stem}_cyt*.dat")))


def check_fields(summary: Dict, data_root: Path) -> List[str]:
    """predict.py --fields on the crowded clusters (its summary.json) against their annotated cells and their class.

    Every cell of a demo cluster image is of the class its folder names (im_<Class>/im_<Class>/NNN), so the share
    of found cells given that class is the classifier's accuracy on cells the field models cut out.
    """
    fields = summary["fields"]
    found = {name: part["cells"] for name, part in fields.items()}
    annotated = {name: annotated_cells(data_root, name) for name in found}
    n_found, n_annotated = sum(found.values()), sum(annotated.values())
    if not found or n_found < MIN_CELLS_FOUND * n_annotated:
        raise UserError(f"the demo did not learn: the field models found {n_found} cells in {len(found)} clusters "
                        f"that hold {n_annotated}")
    lines = [f"fields: {n_found} cells found in {len(found)} crowded clusters that hold {n_annotated} "
             f"(per cluster: {', '.join(f'{found[n]}/{annotated[n]}' for n in sorted(found))})"]
    if all("counts" in part for part in fields.values()):  # classified: the run has a classifier
        right = sum(part["counts"].get(Path(name).parts[0], 0) for name, part in fields.items())
        chance = 1 / len(next(iter(fields.values()))["counts"])
        if right < MIN_ACCURACY_OVER_CHANCE * chance * n_found:
            raise UserError(f"the demo did not learn: {right} of the {n_found} cells found in the clusters are given "
                            f"their cluster's class, under {MIN_ACCURACY_OVER_CHANCE:g}x chance ({chance:.2f})")
        lines.append(f"field classes: {right} of the {n_found} cells found are given their cluster's class "
                     f"(chance {chance:.2f})")
    return lines


def check_slide(summary: Dict) -> List[str]:
    """predict.py on the generated slide (its summary.json): the cells found against those outlined in the cluster
    images that tools/fields/make_slide.py placed on it (its manifest, <slide>.json beside the slide)."""
    (name, slide), = summary["fields"].items()
    manifest = Path(slide["input"]).with_suffix(".json")
    placed = [Path(field["image"]) for field in read_json(manifest, "tools/fields/make_slide.py")["fields"]]
    n_annotated = sum(cells_outlined(image) for image in placed)
    if slide["cells"] < MIN_CELLS_FOUND * n_annotated:
        raise UserError(f"the demo did not learn: {slide['cells']} cells found on the slide {name}, whose "
                        f"{len(placed)} cluster images hold {n_annotated}")
    return [f"slide: {slide['cells']} cells found on {name}, whose {len(placed)} cluster images hold {n_annotated}; "
            f"call '{slide['call']}' ({slide.get('abnormal_per_1000', 0):.1f} abnormal per 1000 cells)"]


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="example: python -m tools.demo_check --data-root data/demo --run-dir runs/demo\n"
                    "Check that every stage of the demo run learned something.", formatter_class=HelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data/demo"), help="the demo data")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="the demo run")
    args = parser.parse_args(argv)
    paths = RunPaths(args.run_dir)
    lines = check_cells(read_json(paths.eval / "metrics.json", "evaluate.py"))
    lines += check_fields(read_json(paths.field_predictions / "summary.json", "predict.py --fields"), args.data_root)
    lines += check_slide(read_json(paths.root / "outputs" / "slide" / "summary.json", "predict.py on the demo slide"))
    print("\n".join(f"demo check: {line}" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
