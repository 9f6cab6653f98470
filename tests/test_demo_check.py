"""tools/demo_check.py: the demo passes when every stage learned and stops with one line when one did not; and,
with CYTOLOGY_DEMO_TEST=1, the demo recipe itself (`make demo` into a temporary folder, a few minutes) learns."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.demo_check import check_cells, check_fields, check_slide, main
from tools.run_dir import RunPaths
from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["im_Dyskeratotic", "im_Koilocytotic", "im_Metaplastic", "im_Parabasal", "im_Superficial-Intermediate"]
CROWDED = [f"{name}/{name}/002" for name in CLASSES]  # the crowded cluster of every class, as predict.py names it


def metrics(dice_cyt=0.95, dice_nuc=0.8, accuracy=0.8):
    """evaluate.py's metrics.json, the fields the check reads."""
    return {"num_cells": 24, "segmentation": {"dice_cyt": dice_cyt, "dice_nuc": dice_nuc},
            "classification": {"accuracy": accuracy, "macro_f1": accuracy, "class_names": CLASSES}}


def field_summary(cells_per_field, right_per_field=None):
    """predict.py --fields' summary.json; with right_per_field, as a run with a classifier writes it."""
    fields = {name: {"cells": cells} for name, cells in zip(CROWDED, cells_per_field)}
    for name, right in zip(CROWDED, right_per_field or []):
        wrong = "im_Parabasal" if not name.startswith("im_Parabasal") else "im_Metaplastic"
        fields[name]["counts"] = {**{c: 0 for c in CLASSES}, wrong: fields[name]["cells"] - right,
                                  Path(name).parts[0]: right}
    return {"overall": {"cells": sum(cells_per_field)}, "fields": fields}


def test_cells_that_learned_pass_and_say_how_well():
    lines = check_cells(metrics())
    assert "Dice whole cell 0.950, nucleus 0.800" in lines[0] and "accuracy 0.800" in lines[1]


@pytest.mark.parametrize("spoilt, named", [(dict(accuracy=0.25), "classification accuracy 0.250"),
                                           (dict(dice_nuc=0.15), "nucleus 0.150"),
                                           (dict(dice_cyt=0.8), "Dice cell 0.800")])
def test_a_stage_near_chance_stops_the_demo(spoilt, named):
    with pytest.raises(UserError, match=f"the demo did not learn: .*{named}"):
        check_cells(metrics(**spoilt))


def test_fields_compare_found_cells_with_the_annotated_ones(demo_root):
    annotated = [len(list(demo_root.glob(f"{name}_cyt*.dat"))) for name in CROWDED]
    line = check_fields(field_summary(annotated), demo_root)[0]
    assert "per cluster: " + ", ".join(f"{n}/{n}" for n in annotated) in line
    with pytest.raises(UserError, match=f"found 1 cells in 5 clusters that hold {sum(annotated)}"):
        check_fields(field_summary([1, 0, 0, 0, 0]), demo_root)


def test_field_cells_must_mostly_get_their_clusters_class(demo_root):
    annotated = [len(list(demo_root.glob(f"{name}_cyt*.dat"))) for name in CROWDED]
    lines = check_fields(field_summary(annotated, right_per_field=[n - 1 for n in annotated]), demo_root)
    assert lines[1] == f"field classes: {sum(annotated) - 5} of the {sum(annotated)} cells found are given their " \
                       f"cluster's class (chance 0.20)"
    with pytest.raises(UserError, match="1 of the .* cells found in the clusters are given their cluster's class"):
        check_fields(field_summary(annotated, right_per_field=[1, 0, 0, 0, 0]), demo_root)


def slide_summary(tmp_path, demo_root, cells):
    """predict.py's summary.json for a slide that tools/fields/make_slide.py made of the crowded clusters."""
    slide = tmp_path / "slide.tiff"
    placed = [{"image": str(demo_root / f"{name}.bmp"), "annotation": "", "y": 0, "x": 0} for name in CROWDED]
    slide.with_suffix(".json").write_text(json.dumps({"slide": slide.name, "fields": placed}))
    return {"fields": {"slide": {"input": str(slide), "cells": cells, "call": "abnormal", "abnormal_per_1000": 600.0}}}


def test_slide_compares_found_cells_with_those_of_the_placed_clusters(demo_root, tmp_path):
    annotated = sum(len(list(demo_root.glob(f"{name}_cyt*.dat"))) for name in CROWDED)
    line, = check_slide(slide_summary(tmp_path, demo_root, annotated))
    assert line == f"slide: {annotated} cells found on slide, whose 5 cluster images hold {annotated}; " \
                   f"call 'abnormal' (600.0 abnormal per 1000 cells)"
    with pytest.raises(UserError, match=f"2 cells found on the slide slide, whose 5 cluster images hold {annotated}"):
        check_slide(slide_summary(tmp_path, demo_root, 2))


def test_cli_names_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(tmp_path), "--data-root", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "metrics.json: missing or unreadable; run evaluate.py first" in capsys.readouterr().err


def test_cli_prints_one_line_per_stage(demo_root, tmp_path, capsys):
    paths = RunPaths(tmp_path)
    paths.eval.mkdir(parents=True)
    (paths.eval / "metrics.json").write_text(json.dumps(metrics()))
    paths.field_predictions.mkdir(parents=True)
    (paths.field_predictions / "summary.json").write_text(json.dumps(field_summary([4, 4, 4, 4, 4])))
    slide_output = paths.root / "outputs" / "slide"
    slide_output.mkdir(parents=True)
    (slide_output / "summary.json").write_text(json.dumps(slide_summary(tmp_path, demo_root, 20)))
    assert main(["--run-dir", str(tmp_path), "--data-root", str(demo_root)]) == 0
    assert [line.split(":")[1].strip() for line in capsys.readouterr().out.splitlines()] == \
        ["segmentation", "classification", "fields", "slide"]


@pytest.mark.skipif(os.environ.get("CYTOLOGY_DEMO_TEST") != "1" or shutil.which("make") is None,
                    reason="the whole demo recipe takes minutes: CYTOLOGY_DEMO_TEST=1 runs it")
def test_the_demo_recipe_learns_every_stage(tmp_path):
    """`make demo` as a user runs it (its own data and run folder here); tools/demo_check.py ends it with exit 2
    if a stage stayed at chance, so exit 0 and its four lines mean each stage learned."""
    done = subprocess.run(["make", "-C", str(REPO), "demo", f"DEMO_DATA={tmp_path / 'data'}",
                           f"DEMO_RUN={tmp_path / 'run'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checked = [line for line in done.stdout.splitlines() if line.startswith("demo check: ")]
    assert [line.split(":")[1].strip() for line in checked] == \
        ["segmentation", "classification", "fields", "field classes", "slide"]
    assert (tmp_path / "run" / "outputs" / "eval" / "report.html").is_file()
    assert (tmp_path / "run" / "outputs" / "slide" / "demo_slide_report.html").is_file()
    assert "Open:" in done.stdout and "Next, on your own images" in done.stdout
