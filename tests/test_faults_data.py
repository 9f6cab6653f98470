"""Fault injection through the real entry points: bad image files, masks, boundary files and data roots, and --skip-bad.

Every bad input ends either in ONE line on stderr, `error: <file>: <what is wrong>; <what to do>`, with
exit code 2 and no traceback, or in a run that works and gives the right result. A bad flag ends in argparse's
usage and one line naming it (exit code 2), Ctrl-C in one `interrupted: <what was kept>` line (exit code 130).
Datasets are tiny and training is one epoch of timm's test ConvNeXt at 64 px, so the whole file stays well
under a minute.
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from faults import (
    bgr_of,
    classify_args,
    copy_tree,
    evaluate_args,
    expect_user_error,
    half_of,
    read_metrics,
    run,
    segment_args,
)

import evaluate
import main_classify
import main_segment
import predict
from tools.layouts.cells import read_records
from tools.masks import ground_truth_masks
from tools.run_dir import RunPaths
from tools.splits import load_split
from utils.preprocessing import read_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

# ---------------------------------------------------------------- image files

@pytest.mark.parametrize("fault", ["truncated_png", "truncated_bmp", "zero_bytes"])
def test_unreadable_image_stops_with_its_name(paired_root, tmp_path, capsys, fault):
    root = copy_tree(paired_root, tmp_path)
    image = root / "normal" / "2.BMP"
    if fault == "truncated_png":
        cv2.imwrite(str(root / "normal" / "2.png"), bgr_of(image))
        image.unlink()
        image = root / "normal" / "2.png"
        image.write_bytes(half_of(image))
        problem = "cannot read this image, truncated, damaged or not an image"
    elif fault == "truncated_bmp":
        image.write_bytes(half_of(image))
        problem = "cannot read this image, truncated, damaged or not an image"
    else:
        image.write_bytes(b"")
        problem = "cannot read this image, empty file"
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"), image, problem,
                      "replace or remove it", "--skip-bad")


def test_odd_but_valid_image_files_are_read_as_rgb(paired_root, trained, tmp_path):
    """PNG bytes named .BMP, grayscale, RGBA and 16-bit TIFF cells: read as RGB uint8 and run through evaluation."""
    root = copy_tree(paired_root, tmp_path)
    folder = root / "abnormal"
    bgr = {n: bgr_of(folder / f"{n}.BMP") for n in (1, 2, 3, 4)}
    for n in (2, 3, 4):
        (folder / f"{n}.BMP").unlink()
    assert cv2.imwrite(str(tmp_path / "lying.png"), bgr[1])
    shutil.copy(tmp_path / "lying.png", folder / "1.BMP")  # the extension lies; OpenCV goes by the bytes
    gray = cv2.cvtColor(bgr[2], cv2.COLOR_BGR2GRAY)
    assert cv2.imwrite(str(folder / "2.png"), gray)
    assert cv2.imwrite(str(folder / "3.png"), cv2.cvtColor(bgr[3], cv2.COLOR_BGR2BGRA))
    assert cv2.imwrite(str(folder / "4.tif"), bgr[4].astype(np.uint16) * 257)  # full 16-bit range

    rgb = {n: cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for n, image in bgr.items()}
    expected = {"1.BMP": rgb[1], "2.png": np.repeat(gray[..., None], 3, axis=2), "3.png": rgb[3], "4.tif": rgb[4]}
    for name, want in expected.items():
        image = read_image(folder / name)
        assert image.dtype == np.uint8 and image.shape == want.shape
        assert np.array_equal(image, want), name

    out = tmp_path / "eval"
    run(evaluate.main, evaluate_args(root, out, trained, "--split", "all"))
    assert read_metrics(out)["num_cells"] == 12


# ---------------------------------------------------------------- masks

def test_mask_of_another_size_stops_with_its_name(paired_root, tmp_path, capsys):
    root = copy_tree(paired_root, tmp_path)
    cv2.imwrite(str(root / "abnormal" / "1N.png"), np.zeros((10, 10), np.uint8))
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"),
                      root / "abnormal" / "1N.png", "mask is 10x10 but its image is 56x40", "redraw the mask at its image's size",
                      "--skip-bad")


def test_empty_cell_mask_is_an_error(paired_root, tmp_path, capsys):
    """Nothing outlined in a single-cell image means a lost annotation, not a cell-free image (see ground_truth_masks)."""
    root = copy_tree(paired_root, tmp_path)
    for name in ("1C.png", "1N.png"):
        cv2.imwrite(str(root / "abnormal" / name), np.zeros((40, 56), np.uint8))
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"),
                      root / "abnormal" / "1C.png", "the cell mask is empty", "outline the cell or remove it")


def test_empty_nucleus_mask_and_rgba_mask_are_data(paired_root, trained, tmp_path):
    """No nucleus drawn is legitimate (anucleate or out-of-focus); an opaque RGBA mask is not all foreground."""
    root = copy_tree(paired_root, tmp_path)
    cv2.imwrite(str(root / "abnormal" / "1N.png"), np.zeros((40, 56), np.uint8))
    cyt = cv2.imread(str(root / "abnormal" / "2C.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "abnormal" / "2C.png"), cv2.cvtColor(cyt, cv2.COLOR_GRAY2BGRA))  # alpha 255 everywhere

    records = {r.sample_id: r for r in read_records(root)[0]}
    cell, nucleus = ground_truth_masks(records["abnormal/1"], (40, 56))
    assert cell.any() and not nucleus.any()
    cell, nucleus = ground_truth_masks(records["abnormal/2"], (40, 56))
    assert np.array_equal(cell, (cyt > 0) | nucleus) and not cell.all()

    out = tmp_path / "eval"
    run(evaluate.main, evaluate_args(root, out, trained, "--split", "all", "--mask-source", "gt"))
    assert read_metrics(out)["num_cells"] == 12


@pytest.mark.parametrize("classes", [("abnormal", "normal"), ("normal",)], ids=["every_class", "one_class"])
def test_upper_case_mask_names_are_masks_of_the_paired_layout(paired_root, trained, tmp_path, classes):
    """1N.PNG and 1C.PNG (as some Windows tools save them) are 1.BMP's masks, not cells of a labels-only layout."""
    root = copy_tree(paired_root, tmp_path)
    for mask in [path for name in classes for path in (root / name).glob("*.png")]:
        mask.rename(mask.with_suffix(".PNG"))
    records, layout = read_records(root)
    assert layout == "paired" and len(records) == 12 and all(r.has_masks for r in records)

    out = tmp_path / "eval"
    run(evaluate.main, evaluate_args(root, out, trained, "--split", "all", "--mask-source", "gt"))
    metrics = read_metrics(out)
    assert metrics["num_cells"] == 12 and "dice_nuc" in metrics["segmentation"]  # scored against the .PNG masks


def test_cell_mask_that_is_all_white_is_refused(paired_root, tmp_path, capsys):
    """A blank white export (or an inverted mask) would teach that the whole crop is cell."""
    root = copy_tree(paired_root, tmp_path)
    cv2.imwrite(str(root / "normal" / "2C.png"), np.full((40, 56), 255, np.uint8))
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"), root / "normal" / "2C.png",
                      "the cell mask covers 100% of its image", "fix it or remove the cell")


def test_nucleus_drawn_outside_its_cell_is_refused(paired_root, tmp_path, capsys):
    root = copy_tree(paired_root, tmp_path)
    nucleus = np.zeros((40, 56), np.uint8)
    cv2.circle(nucleus, (4, 4), 3, 255, -1)  # in the corner, which the cell's ellipse never reaches
    cv2.imwrite(str(root / "normal" / "2N.png"), nucleus)
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"), root / "normal" / "2C.png",
                      "2N.png", "the nucleus lies outside its cell", "fix them or remove the cell")


@pytest.mark.parametrize("change", ["same_size", "new_size"])
def test_image_changed_after_its_masks_were_predicted(paired_root, trained, tmp_path, capsys, change):
    """The masks main_segment.py exported (copied from the trained run, as if it had run into this folder) are of the
    old image; with a new size too the advice is to predict them again, not to redraw a mask nobody drew."""
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    shutil.copytree(trained.parent / "outputs" / "masks", RunPaths(out).masks)
    image = load_split(read_records(root)[0], RunPaths(out).manifest(root), root, "paired")["train"][0].image_path
    bgr = bgr_of(image)
    if change == "same_size":
        assert cv2.imwrite(str(image), 255 - bgr)
    else:  # another cell with its own annotation: the ground truth fits the new image, the predicted masks do not
        size = (64, 48)
        assert cv2.imwrite(str(image), cv2.resize(bgr, size))
        for mask in (image.with_name(f"{image.stem}N.png"), image.with_name(f"{image.stem}C.png")):
            gray = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
            assert cv2.imwrite(str(mask), cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST))
    message = expect_user_error(capsys, main_classify.main, classify_args(root, out), image,
                                "the image changed after its masks", "run main_segment.py again")
    assert "redraw" not in message


# ---------------------------------------------------------------- SIPaKMeD boundary files

def first_crop_boundary(root: Path) -> Path:
    return sorted(root.glob("im_*/im_*/CROPPED/*_cyt.dat"))[0]


@pytest.mark.parametrize("text,fragments", [
    ("12.5,30\nabc,def\n40,50\n", [":2: expected 'x,y' numbers, found 'abc,def'", "fix or remove the file"]),
    ("1,2\nnan,3\n4,5\n", [":2: point is not a finite number", "fix or remove the file"]),
    ("1,2\n3,4\n", ["a polygon needs at least 3 points, found 2", "fix or remove the file"]),
    ("5000,5000\n5100,5000\n5100,5100\n", ["outside its", "--sipakmed-source clusters"]),
], ids=["garbage", "nan", "two_points", "outside"])
def test_bad_boundary_file_stops_with_its_name(demo_root, tmp_path, capsys, text, fragments):
    root = copy_tree(demo_root, tmp_path)
    boundary = first_crop_boundary(root)
    boundary.write_text(text)
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"), boundary.name, *fragments,
                      "--skip-bad")


# ---------------------------------------------------------------- data roots

def test_empty_class_folder(paired_root, tmp_path, capsys):
    root = copy_tree(paired_root, tmp_path)
    (root / "unlabelled").mkdir()
    expect_user_error(capsys, main_segment.main, segment_args(root, tmp_path / "run"),
                      root, "class folder(s) unlabelled hold no usable images", "add images or remove the folder")


def test_data_root_without_a_known_layout(tmp_path, capsys):
    root = tmp_path / "notes"
    (root / "class_a").mkdir(parents=True)
    (root / "class_a" / "readme.txt").write_text("no images here")
    expect_user_error(capsys, main_classify.main, classify_args(root, tmp_path / "run"),
                      root, "no known data layout found", "point --data-root at the folder that holds the class folders")


def test_data_root_that_does_not_exist(trained, tmp_path, capsys):
    # evaluate.py loads the checkpoints first (the classifier's split manifest decides which cells it may score)
    root = tmp_path / "nowhere"
    expect_user_error(capsys, evaluate.main, evaluate_args(root, tmp_path / "run", trained),
                      root, "data root does not exist", "pass --data-root")


def test_manifest_that_no_longer_matches_the_files(paired_root, tmp_path, capsys):
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    manifest = RunPaths(out).manifest(root)
    load_split(read_records(root)[0], manifest, root, "paired")
    for name in ("3.BMP", "3N.png", "3C.png"):
        (root / "normal" / name).unlink()
    expect_user_error(capsys, main_segment.main, segment_args(root, out), manifest.name,
                      "1 listed cells are gone", "normal/3", "delete it to re-split")


def test_a_single_class_cannot_train_a_classifier(paired_root, tmp_path, capsys):
    root = tmp_path / "one_class"
    shutil.copytree(paired_root / "normal", root / "normal")
    expect_user_error(capsys, main_classify.main, classify_args(root, tmp_path / "run", "--mask-source", "gt"),
                      root, "only one class (normal) found", "at least two class folders")


def test_a_class_too_small_for_val_and_test_trains_with_a_note(paired_root, trained, make_paired, tmp_path, capsys):
    """Two cells go to train and val, none to test; the note says so, and the test's macro averages leave the class out."""
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    make_paired(root, classes=("rare",), cells_per_class=2)
    capsys.readouterr()
    run(main_classify.main, classify_args(root, out, "--mask-source", "gt"))
    printed = capsys.readouterr().out
    note = next(line for line in printed.splitlines() if line.startswith("note: ") and "rare" in line)
    assert "class(es) rare have no cell in the test split" in note and "macro averages leave them out" in note

    run(evaluate.main, evaluate_args(root, out, trained, "--mask-source", "gt",
                                     "--cls-checkpoint", out / "checkpoints" / "classification_best.pth"))
    metrics = read_metrics(out)["classification"]
    per_class = metrics["per_class"]
    assert per_class["rare"]["support"] == 0 and metrics["roc_auc_per_class"]["rare"] is None
    for average in ("f1", "recall", "precision"):
        present = np.mean([per_class[name][average] for name in ("abnormal", "normal")])
        assert metrics[f"macro_{average}"] == pytest.approx(present), average


def test_one_cell_stored_under_two_extensions(paired_root, tmp_path, capsys):
    root = tmp_path / "labels"  # images only: the labels-only layout
    for image in paired_root.glob("*/[0-9].BMP"):
        (root / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / image.parent.name / f"{image.stem}.bmp")
    assert cv2.imwrite(str(root / "normal" / "3.png"), bgr_of(root / "normal" / "3.bmp"))
    expect_user_error(capsys, main_classify.main, classify_args(root, tmp_path / "run"), root / "normal" / "3.bmp",
                      "3.png", "one cell stored twice under two extensions", "keep one of them")


def test_macos_metadata_files_are_not_cells(paired_root, tmp_path):
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    (root / "normal" / "._1.BMP").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (root / "abnormal" / "._2N.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    shutil.copytree(root / "normal", root / "__MACOSX" / "normal")  # a zip's shadow folder, real images in it
    run(main_classify.main, classify_args(root, out, "--mask-source", "gt"))
    manifest = json.loads(RunPaths(out).manifest(root).read_text())
    assert sorted(s["id"] for s in manifest["samples"]) == [f"{c}/{n}" for c in ("abnormal", "normal") for n in range(1, 7)]
    assert RunPaths(out).checkpoint("classification").is_file()


# ---------------------------------------------------------------- evaluate.py and predict.py on small or odd data

def test_evaluate_with_an_empty_test_split(make_paired, trained, tmp_path, capsys):
    """Two cells per class: each class gives one to train and one to val, none to test (three would fill all three)."""
    root, out = make_paired(tmp_path / "tiny", cells_per_class=2), tmp_path / "run"
    run(main_classify.main, classify_args(root, out, "--mask-source", "gt"))
    argv = evaluate_args(root, out, out / "checkpoints", "--seg-checkpoint", trained / "segmentation_best.pth")
    expect_user_error(capsys, evaluate.main, argv, RunPaths(out).manifest(root), "the test split is empty",
                      "add data, or score another root with --split all")


def test_predict_on_a_paired_class_folder_leaves_out_its_masks(paired_root, trained, tmp_path):
    folder = shutil.copytree(paired_root / "normal", tmp_path / "normal")
    (folder / "1N.png").rename(folder / "1N.PNG")  # masks are recognised whatever their case
    out = tmp_path / "predictions"
    code = predict.main([str(folder), "--run-dir", str(trained.parent), "--output-dir", str(out), "--device", "cpu",
                         "--backend", "torch"])
    rows = json.loads((out / "predictions.json").read_text())["predictions"]
    assert code == 0 and sorted(Path(row["file"]).name for row in rows) == [f"{n}.BMP" for n in range(1, 7)]




# ---------------------------------------------------------------- --skip-bad

def break_sipakmed_cells(root: Path):
    """Four bad cells in four classes, each bad in another way. Returns {fault: (crop image, the file at fault)}."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())[:4]
    crops = dict(zip(("truncated", "empty", "garbage", "outside"),
                     (sorted((root / c / c / "CROPPED").glob("*.bmp"))[0] for c in classes)))
    crops["truncated"].write_bytes(half_of(crops["truncated"]))
    crops["empty"].write_bytes(b"")
    boundary = {fault: crops[fault].with_name(f"{crops[fault].stem}_cyt.dat") for fault in ("garbage", "outside")}
    boundary["garbage"].write_text("1,2\nnot a point\n3,4\n")
    boundary["outside"].write_text("5000,5000\n5100,5000\n5100,5100\n")
    return {fault: (crop, boundary.get(fault, crop)) for fault, crop in crops.items()}


def test_skip_bad_trains_and_exports_without_the_bad_cells(demo_root, tmp_path, capsys):
    root, out = copy_tree(demo_root, tmp_path), tmp_path / "run"
    bad = break_sipakmed_cells(root)
    run(main_segment.main, segment_args(root, out, "--skip-bad"))

    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped ")]
    assert len(printed) == 1 and printed[0].startswith("skipped 4 bad cells: ")
    listed = RunPaths(out).skipped_cells.read_text().splitlines()
    assert len(listed) == 4
    for _, at_fault in bad.values():
        assert str(at_fault) in printed[0] and any(line.startswith(str(at_fault)) for line in listed)

    records = read_records(root, skip_bad=True)[0]
    manifest = json.loads(RunPaths(out).manifest(root).read_text())
    assert {s["id"] for s in manifest["samples"]} == {r.sample_id for r in records}  # bad cells listed, not used
    bad_images = {crop for crop, _ in bad.values()}
    for record in records:
        exported = (out / "outputs" / "masks" / f"{record.sample_id}_cyt.png").exists()
        assert exported == (record.image_path not in bad_images), record.sample_id

    # without --skip-bad the same data stops at the first bad cell (boundary files are read first), with the way past it
    expect_user_error(capsys, main_segment.main, segment_args(root, out), bad["garbage"][1], "--skip-bad")


def test_skip_bad_keeps_the_split_and_serves_every_script(paired_root, trained, tmp_path, capsys):
    """Cells break after the manifest was made: the manifest still holds, training and evaluation leave them out."""
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    split = load_split(read_records(root)[0], RunPaths(out).manifest(root), root, "paired")
    first, second, third = (r.image_path for r in split["train"][:3])
    first.with_name(f"{first.stem}C.png").unlink()  # found while the records are read
    cv2.imwrite(str(second.with_name(f"{second.stem}N.png")), np.zeros((10, 10), np.uint8))  # found when decoded
    third.write_bytes(half_of(third))

    run(main_classify.main, classify_args(root, out, "--skip-bad", "--mask-source", "gt"))
    printed = capsys.readouterr().out
    assert "skipped 3 bad cells: " in printed and f"{len(split['train']) - 3} train / 2 val cells" in printed
    assert len(RunPaths(out).skipped_cells.read_text().splitlines()) == 3

    # the test split, untouched, scored by the classifier trained on this split (evaluate.py refuses any other)
    run(evaluate.main, evaluate_args(root, out, trained, "--skip-bad",
                                     "--cls-checkpoint", out / "checkpoints" / "classification_best.pth"))
    assert read_metrics(out)["num_cells"] == len(split["test"])
