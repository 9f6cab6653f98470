"""Fault injection through the real entry points.

Every bad input ends either in ONE line on stderr, `error: <file>: <what is wrong>; <what to do>`, with
exit code 2 and no traceback, or in a run that works and gives the right result. A bad flag ends in argparse's
usage and one line naming it (exit code 2), Ctrl-C in one `interrupted: <what was kept>` line (exit code 130).
Datasets are tiny and training is one epoch of timm's test ConvNeXt at 64 px, so the whole file stays well
under a minute.
"""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
import main_classify
import main_segment
import predict
from tools import checkpoint as checkpoint_module
from tools import engine
from tools.layouts import read_records
from tools.masks import ground_truth_masks
from tools.run_dir import RunPaths
from tools.splits import load_split
from utils.preprocessing import read_image

CPU = ["--workers", "0", "--device", "cpu"]
TRAIN = [*CPU, "--backbone", "test_convnext", "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--no-pretrained"]
SEGMENT = [*TRAIN, "--decoder-channels", "32", "16", "16"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Other jobs share this machine's 2 cores; two PyTorch threads each then mostly wait (runs get ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers

def visible_lines(text: str):
    """The lines a terminal shows: progress bars redraw their line with \\r and clear it when they close."""
    return [shown for shown in (line.split("\r")[-1] for line in text.split("\n")) if shown.strip()]


def run(main, argv) -> None:
    """Call a script's main() as the shell would, every argument a string."""
    main([str(arg) for arg in argv])


def expect_user_error(capsys, main, argv, *fragments) -> str:
    """Run an entry point that must stop with exit code 2 and one `error: <file>: <what>; <what to do>` line."""
    capsys.readouterr()  # drop what earlier steps of the test printed
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    # a finished progress bar (kept on screen by design) may come before it; the error itself is one line
    assert "Traceback" not in stderr and [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    message = lines[-1]
    assert "; " in message, f"no advice after '; ': {message}"
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def expect_usage_error(capsys, main, argv, flag, *fragments) -> str:
    """argparse's refusal: exit code 2, its usage block, then ONE line `<prog>: error: ...` naming the flag."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    usage, message = lines[:-1], lines[-1]
    assert "Traceback" not in stderr and usage and usage[0].startswith("usage: "), lines
    assert all(line.startswith(" ") for line in usage[1:]), lines  # the rest of the usage block, wrapped and indented
    assert ": error: " in message and flag in message, message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def expect_interrupted(capsys, main, argv) -> str:
    """Ctrl-C: exit code 130 and ONE line `interrupted: <what was kept>`, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 130
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    assert "Traceback" not in stderr and [line for line in lines if line.startswith(("interrupted", "error"))] == lines[-1:]
    assert lines[-1].startswith("interrupted: "), lines
    return lines[-1]


def copy_tree(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def segment_args(root: Path, out: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *SEGMENT, *extra]


def classify_args(root: Path, out: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *TRAIN, *extra]


@pytest.fixture(scope="module")
def trained(paired_root, tmp_path_factory):
    """Stage 1 and stage 2 checkpoints trained one epoch on the paired data."""
    run_dir = tmp_path_factory.mktemp("trained")
    run(main_segment.main, segment_args(paired_root, run_dir))
    run(main_classify.main, classify_args(paired_root, run_dir))
    return run_dir / "checkpoints"


def evaluate_args(root: Path, out: Path, checkpoints: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *CPU, "--seg-checkpoint", checkpoints / "segmentation_best.pth",
            "--cls-checkpoint", checkpoints / "classification_best.pth", *extra]


def read_metrics(out: Path):
    return json.loads((out / "outputs" / "eval" / "metrics.json").read_text())


def half_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:len(data) // 2]


def bgr_of(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


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


# ---------------------------------------------------------------- checkpoints

def test_class_the_classifier_does_not_know(paired_root, trained, tmp_path, capsys):
    root = copy_tree(paired_root, tmp_path)
    (root / "mystery").mkdir()
    for name in ("1.BMP", "1N.png", "1C.png"):
        shutil.copy(root / "normal" / name, root / "mystery" / name)
    expect_user_error(capsys, evaluate.main, evaluate_args(root, tmp_path / "eval", trained, "--split", "all"),
                      "classification_best.pth", "does not know class(es) mystery", "rename the folders")


def test_checkpoint_of_the_other_stage(paired_root, trained, tmp_path, capsys):
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", trained / "classification_best.pth")
    expect_user_error(capsys, evaluate.main, argv, "classification_best.pth",
                      "is a classification checkpoint, expected segmentation", "pass the segmentation checkpoint")


def test_segmentation_checkpoint_with_edited_weights(paired_root, trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "segmentation_best.pth", map_location="cpu", weights_only=False)
    checkpoint["model"].pop(next(iter(checkpoint["model"])))
    edited = tmp_path / "edited.pth"
    torch.save(checkpoint, edited)
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", edited)
    expect_user_error(capsys, evaluate.main, argv, edited, "weights do not fit the model", "retrain")


def test_truncated_checkpoint_file(paired_root, trained, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(half_of(trained / "segmentation_best.pth"))
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", truncated)
    expect_user_error(capsys, evaluate.main, argv, truncated, "not a readable checkpoint", "retrain or pass another file")


def test_resume_with_another_backbone_names_both(paired_root, trained, tmp_path, capsys):
    resume = trained / "classification_last.pth"
    argv = classify_args(paired_root, tmp_path, "--mask-source", "gt", "--resume", resume, "--backbone", "test_efficientnet")
    expect_user_error(capsys, main_classify.main, argv, resume, "backbone test_convnext", "backbone test_efficientnet",
                      "drop --resume")


def test_resume_on_another_data_root_names_both(paired_root, trained, tmp_path, capsys):
    """The same cells elsewhere still refuse: the split manifest and the best score belong to the other root."""
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    resume = trained / "segmentation_last.pth"
    expect_user_error(capsys, main_segment.main, segment_args(root, out, "--resume", resume), resume, "cannot resume",
                      f"data_root {paired_root.resolve()}", f"data_root {root.resolve()}", "drop --resume")
    assert not RunPaths(out).checkpoints.exists()


# ---------------------------------------------------------------- a full disk and Ctrl-C while training

@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/3: file write failed"),
], ids=["enospc", "zip_writer"])
def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(paired_root, tmp_path, capsys, monkeypatch, failure):
    real_save, saves = torch.save, []

    def save(state, path, *args, **kwargs):  # epoch 1 writes last and best; the disk fills while epoch 2 writes last
        saves.append(path)
        if len(saves) == 3:
            raise failure
        real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    last = RunPaths(tmp_path / "run").checkpoint("segmentation", "last")
    expect_user_error(capsys, main_segment.main, segment_args(paired_root, tmp_path / "run", "--epochs", "2", "--skip-export"),
                      last, "checkpoint could not be written", "the previous one is kept", "free disk space",
                      "resume with --resume")
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["segmentation_best.pth", "segmentation_last.pth"]  # no temporary


def interrupt_in_epoch(monkeypatch, stop: int) -> None:
    """Ctrl-C while epoch `stop` trains."""
    real = engine.train_one_epoch

    def train_one_epoch(model, loader, task, optimizer, scheduler, device, epoch, *args, **kwargs):
        if epoch == stop:
            raise KeyboardInterrupt
        return real(model, loader, task, optimizer, scheduler, device, epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)


def test_ctrl_c_exits_130_saying_what_was_kept(paired_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    paths = RunPaths(out)
    interrupt_in_epoch(monkeypatch, 2)
    message = expect_interrupted(capsys, main_segment.main, segment_args(paired_root, out, "--epochs", "2", "--skip-export"))
    assert f"segmentation checkpoints up to epoch 1 are kept in {paths.checkpoints}" in message and "--resume" in message
    assert torch.load(paths.checkpoint("segmentation", "last"), map_location="cpu", weights_only=False)["epoch"] == 1
    assert not (out / ".lock").exists()

    # another run stopped before its first checkpoint: nothing kept, and not the first run's checkpoints either
    monkeypatch.undo()
    interrupt_in_epoch(monkeypatch, 1)
    message = expect_interrupted(capsys, main_classify.main, classify_args(paired_root, tmp_path / "fresh", "--mask-source", "gt"))
    assert "nothing" in message and str(paths.checkpoints) not in message
    assert not RunPaths(tmp_path / "fresh").checkpoints.exists()


# ---------------------------------------------------------------- output folder

@pytest.mark.parametrize("script", ["segment", "classify", "evaluate"])
def test_output_folder_under_a_file(paired_root, tmp_path, capsys, script):
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "run"
    argv = {"segment": segment_args(paired_root, out), "classify": classify_args(paired_root, out),
            "evaluate": ["--data-root", paired_root, "--output-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_user_error(capsys, main, argv, out, "output folder cannot be written", "pass a writable --run-dir")


@pytest.mark.parametrize("script", ["segment", "classify", "evaluate"])
def test_run_folder_inside_the_data_root(paired_root, tmp_path, capsys, script):
    root = copy_tree(paired_root, tmp_path)
    out = root / "run"
    argv = {"segment": segment_args(root, out), "classify": classify_args(root, out),
            "evaluate": ["--data-root", root, "--run-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_user_error(capsys, main, argv, out, "lies inside --data-root", "pass a --run-dir outside the data")
    assert not out.exists()  # refused before anything was written there


def write_lock(folder: Path, pid: int) -> Path:
    """The .lock another run would hold in `folder` (tools/run_dir.RunLock's format)."""
    folder.mkdir(parents=True)
    lock = folder / ".lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "main_segment.py --run-dir runs/a",
                                "started": "2025-01-01 09:00:00"}))
    return lock


def test_second_run_into_a_locked_run_folder_is_refused(paired_root, tmp_path, capsys):
    out = tmp_path / "run"
    other = subprocess.Popen(["sleep", "60"])  # the run holding the folder, alive
    try:
        lock = write_lock(out, other.pid)
        expect_user_error(capsys, main_classify.main, classify_args(paired_root, out, "--mask-source", "gt"), out,
                          f"another run (pid {other.pid}", "main_segment.py --run-dir runs/a", "is writing here",
                          "wait for it to end or pass another --run-dir")
    finally:
        other.kill()
        other.wait()
    assert json.loads(lock.read_text())["pid"] == other.pid  # the other run's lock is left alone
    assert not RunPaths(out).checkpoints.exists()


def test_stale_lock_of_an_ended_run_is_taken_over(paired_root, tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # killed or crashed: its lock stayed behind
    out = tmp_path / "run"
    lock = write_lock(out, ended.pid)
    run(main_segment.main, segment_args(paired_root, out, "--skip-export"))
    assert RunPaths(out).checkpoint("segmentation").is_file() and not lock.exists()


OUT_OF_RANGE = "is out of range; expected"


@pytest.mark.parametrize("script,flags,fragment", [
    ("classify", ["--batch-size", "1"], "--batch-size 1: the classifier's BatchNorm layers need at least 2"),
    ("classify", ["--epochs", "0"], f"argument --epochs: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("segment", ["--epochs", "0"], f"argument --epochs: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("segment", ["--lr", "-1"], f"argument --lr: -1 {OUT_OF_RANGE} a number > 0"),
    ("segment", ["--img-size", "100"], f"argument --img-size: 100 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--img-size", "0"], f"argument --img-size: 0 {OUT_OF_RANGE} a multiple of 32"),
    ("classify", ["--img-size", "-32"], f"argument --img-size: -32 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--img-size", "48"], f"argument --img-size: 48 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--batch-size", "0"], f"argument --batch-size: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("classify", ["--workers", "-1"], f"argument --workers: -1 {OUT_OF_RANGE} a whole number >= 0"),
    ("segment", ["--seed", "-1"], f"argument --seed: -1 {OUT_OF_RANGE} a whole number >= 0"),
    ("classify", ["--label-smoothing", "2"], f"argument --label-smoothing: 2 {OUT_OF_RANGE} a number from 0 up to"),
    ("segment", ["--device", "gpu"], "argument --device: unknown 'gpu'; did you mean cuda?"),
    ("classify", ["--backbone", "convnext_tny"], "argument --backbone: unknown 'convnext_tny'; did you mean convnext_tiny"),
    ("segment", ["--split-seed", "-3"], f"argument --split-seed: -3 {OUT_OF_RANGE} a whole number >= 0"),
    ("evaluate", ["--batch-size", "0"], f"argument --batch-size: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("evaluate", ["--device", "gpu"], "argument --device: unknown 'gpu'; did you mean cuda?"),
    ("segment", ["--layout", "paird"], "argument --layout: unknown 'paird'; did you mean paired? (known: auto, sipakmed, "),
    ("classify", ["--preset", "cpuu"], "argument --preset: unknown 'cpuu'; did you mean cpu? (known: cpu)"),
    ("evaluate", ["--mask-source", "predcted"], "argument --mask-source: unknown 'predcted'; did you mean predicted? "
                                                "(known: predicted, gt)"),
    ("evaluate", ["--normal-classes"], "argument --normal-classes: expected at least one argument"),
])
def test_out_of_range_flags_stop_at_the_command_line(paired_root, tmp_path, capsys, script, flags, fragment):
    out = tmp_path / "run"
    argv = {"segment": segment_args(paired_root, out), "classify": classify_args(paired_root, out),
            "evaluate": ["--data-root", paired_root, "--run-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_usage_error(capsys, main, [*argv, *flags], flags[0], fragment)
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_output_folder(paired_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        expect_user_error(capsys, main_segment.main, segment_args(paired_root, locked / "run"),
                          "locked", "output folder cannot be written", "pass a writable --run-dir")
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- names: each is checked against what exists, first

def test_a_mistyped_normal_class_is_refused_not_counted_as_abnormal(paired_root, trained, tmp_path, capsys):
    """The reported case: with the folder normal_superficiel, --normal-classes normal_superficial counted no class as
    normal and reported "normal vs abnormal: accuracy 1.0000"."""
    out = tmp_path / "run"
    expect_user_error(capsys, evaluate.main, evaluate_args(paired_root, out, trained, "--split", "all",
                                                           "--normal-classes", "normall"),
                      "--normal-classes: unknown class 'normall'; did you mean normal? (known: abnormal, normal)",
                      "name the classes as", "classification_best.pth knows them")
    assert not (out / "outputs" / "eval" / "metrics.json").exists()
    run(evaluate.main, evaluate_args(paired_root, out, trained, "--split", "all", "--normal-classes", "normal"))
    confusion = read_metrics(out)["normal_vs_abnormal"]["confusion_matrix"]  # [[TN, FP], [FN, TP]], abnormal positive
    assert [sum(row) for row in confusion] == [6, 6]  # 6 normal cells counted as normal (before: none)


@pytest.mark.parametrize("flags,fragments", [
    (["--class-order", "normal", "abnormall"], ["--class-order: unknown class 'abnormall'; did you mean abnormal?"]),
    (["--class-order", "normal"], ["--class-order: leaves out abnormal", "list each class of"]),
    (["--class-order", "normal", "abnormal", "normal"], ["--class-order: names normal twice"]),
    (["--masks-dir", "{tmp}"], ["--masks-dir {tmp}: no masks.json there", "pass a run's outputs/masks folder"]),
    (["--split-file", "{tmp}/herlev.jsn"], ["herlev.jsn: no such file, unknown split manifest 'herlev.jsn'",
                                             "pass an existing manifest to --split-file"]),
    (["--seg-checkpoint", "{checkpoints}/segmentaton_best.pth"],
     ["segmentaton_best.pth: no such file, unknown checkpoint 'segmentaton_best.pth'; did you mean segmentation_best.pth? "
      "(known: classification_best.pth, classification_last.pth, segmentation_best.pth, segmentation_last.pth); train"]),
], ids=["order_typo", "order_short", "order_twice", "masks_dir", "split_file", "checkpoint"])
def test_evaluate_checks_every_name_before_scoring(paired_root, trained, tmp_path, capsys, flags, fragments):
    names = {"tmp": tmp_path, "checkpoints": trained}
    argv = evaluate_args(paired_root, tmp_path / "run", trained, *[flag.format(**names) for flag in flags])
    expect_user_error(capsys, evaluate.main, argv, *[fragment.format(**names) for fragment in fragments])
    assert not (tmp_path / "run" / "outputs" / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("script,flags,fragments", [
    ("segment", ["--split-file", "{tmp}/split.json"], ["split.json: no such file, unknown split manifest", "leave the flag out"]),
    ("segment", ["--resume"], ["no such file, unknown checkpoint 'segmentation_last.pth' (known: none); drop --resume"]),
    ("classify", ["--seg-checkpoint", "{tmp}/seg.pth"], ["seg.pth: no such file, unknown checkpoint 'seg.pth'"]),
    ("segment", ["--nuc-suffix", "_nuc.png"], ["--nuc-suffix: unknown mask suffix '_nuc.png'", "(known: C.png, N.png)"]),
], ids=["split_file", "resume", "seg_checkpoint", "suffix"])
def test_training_checks_every_name_before_training(paired_root, tmp_path, capsys, script, flags, fragments):
    """A mistyped --nuc-suffix read a Herlev root as labels-only and trained its masks as cells; the others failed late
    (after the cells were decoded), or made a new split."""
    out = tmp_path / "run"
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    argv = segment_args(paired_root, out, *flags) if script == "segment" else classify_args(paired_root, out, *flags)
    expect_user_error(capsys, main_segment.main if script == "segment" else main_classify.main, argv, *fragments)
    assert not RunPaths(out).checkpoints.exists() and not (tmp_path / "split.json").exists()


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
