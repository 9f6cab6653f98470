"""predict.py on a folder of mixed images: masks, overlays, Grad-CAMs, tables, and the unreadable file named."""
import contextlib
import csv
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tiny_checkpoints import (
    DEMO_CLASSES,
    save_untrained_checkpoints,
    save_untrained_classification,
    save_untrained_field_models,
)

import main_segment
import predict
import tools.fields.segment
from tools import predict_cells
from tools.inference import CellPrediction
from tools.inputs import OUTPUT_MARKER
from tools.morphometry import FEATURE_NAMES
from utils.errors import UserError
from utils.preprocessing import read_image

TEMPERATURE = 2.0
GOOD_NAMES = ["a/cell", "b/cell", "gray", "deep/cell16"]


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory):
    """A segmentation model trained for a few epochs (so that masks are real) and an untrained classifier."""
    run = tmp_path_factory.mktemp("run")
    main_segment.main(["--data-root", str(demo_root), "--output-dir", str(run), "--backbone", "test_convnext",
                       "--img-size", "64", "--workers", "0", "--device", "cpu", "--no-pretrained", "--epochs", "8",
                       "--batch-size", "4", "--lr", "3e-3", "--decoder-channels", "32", "16", "16"])
    save_untrained_classification(run / "checkpoints" / "classification_best.pth", temperature=TEMPERATURE)
    return run


def demo_crops(demo_root, count):
    return [cv2.imread(str(p)) for p in sorted(demo_root.glob("*/*/CROPPED/*.bmp"))[::7][:count]]


@pytest.fixture(scope="module")
def input_dir(demo_root, tmp_path_factory):
    """RGB and RGBA PNGs with the same name in two folders, a grayscale BMP, a 16-bit TIFF, a corrupt PNG, a hidden file."""
    root = tmp_path_factory.mktemp("inputs")
    for folder in ("a", "b", "deep"):
        (root / folder).mkdir()
    rgb, rgba, gray, deep = demo_crops(demo_root, 4)
    assert cv2.imwrite(str(root / "a" / "cell.png"), rgb)
    assert cv2.imwrite(str(root / "b" / "cell.png"), cv2.cvtColor(rgba, cv2.COLOR_BGR2BGRA))
    assert cv2.imwrite(str(root / "gray.bmp"), cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY))
    assert cv2.imwrite(str(root / "deep" / "cell16.tif"), deep.astype(np.uint16) * 257)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (root / "._cell.png").write_bytes(b"macOS resource fork")  # hidden: never an input
    return root


def run_predict(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = predict.main(argv)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def prediction(run_dir, input_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("predictions")
    code, stderr = run_predict([str(input_dir), "--run-dir", str(run_dir), "--output-dir", str(output_dir),
                                "--device", "cpu", "--batch-size", "2", "--explain"])
    return code, stderr, output_dir


def read_csv(path):
    with open(path, newline="") as table:
        return list(csv.DictReader(table))


def image_size(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]


def test_unreadable_image_is_named_and_the_run_goes_on(prediction, input_dir):
    code, stderr, output_dir = prediction
    assert code == 1
    named = [line for line in stderr.splitlines() if "broken.png" in line]
    assert len(named) == 1 and "cannot read" in named[0]
    assert "._cell.png" not in stderr
    failed = json.loads((output_dir / "predictions.json").read_text())["failed"]
    assert [Path(f["file"]).name for f in failed] == ["broken.png"]


def test_rows_for_every_readable_image(prediction, input_dir):
    _, _, output_dir = prediction
    rows = read_csv(output_dir / "predictions.csv")
    assert sorted(row["name"] for row in rows) == sorted(GOOD_NAMES)
    cells = json.loads((output_dir / "predictions.json").read_text())["predictions"]
    assert [cell["name"] for cell in cells] == [row["name"] for row in rows]
    for row, cell in zip(rows, cells):
        probs = np.array([float(row[f"prob_{name}"]) for name in DEMO_CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert sum(cell["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert row["predicted_class"] == DEMO_CLASSES[int(probs.argmax())] == cell["predicted_class"]
        assert Path(row["file"]).exists()


def test_masks_overlays_and_gradcams_at_each_images_size(prediction, input_dir):
    _, _, output_dir = prediction
    for name in GOOD_NAMES:
        source = next(p for p in input_dir.rglob("*") if p.relative_to(input_dir).with_suffix("").as_posix() == name)
        size = image_size(source)
        for suffix in ("cyt", "nuc"):
            mask = cv2.imread(str(output_dir / f"{name}_{suffix}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == size and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        for suffix in ("overlay", "gradcam"):
            assert cv2.imread(str(output_dir / f"{name}_{suffix}.png")).shape == (*size, 3)


def test_morphometrics_match_the_written_masks(prediction):
    _, _, output_dir = prediction
    rows = read_csv(output_dir / "predictions.csv")
    for row in rows:
        cell = cv2.imread(str(output_dir / f"{row['name']}_cyt.png"), cv2.IMREAD_GRAYSCALE) > 0
        nucleus = cv2.imread(str(output_dir / f"{row['name']}_nuc.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert not (nucleus & ~cell).any()  # the nucleus lies in the cell
        assert int(row["nucleus_area_px"]) == nucleus.sum()
        assert int(row["cytoplasm_area_px"]) == (cell & ~nucleus).sum()
        if (cell & ~nucleus).any():
            assert float(row["nc_ratio"]) == pytest.approx(nucleus.sum() / (cell & ~nucleus).sum(), rel=1e-5)
    assert any(int(row["nucleus_area_px"]) > 0 and row["nc_ratio"] for row in rows)  # trained masks: not all empty


def test_json_records_the_temperature_and_definitions(prediction):
    summary = json.loads((prediction[2] / "predictions.json").read_text())
    assert summary["temperature"] == TEMPERATURE and summary["class_names"] == DEMO_CLASSES
    assert "cytoplasm" in summary["nc_ratio"]


def test_all_readable_exits_zero_and_explain_is_optional(run_dir, input_dir, tmp_path):
    code, _ = run_predict([str(input_dir / "a" / "cell.png"), str(input_dir / "gray.bmp"), "--run-dir", str(run_dir),
                           "--output-dir", str(tmp_path), "--device", "cpu"])
    assert code == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        OUTPUT_MARKER, "a/cell_cyt.png", "a/cell_nuc.png", "a/cell_overlay.png",
        "gray_cyt.png", "gray_nuc.png", "gray_overlay.png",
        "predictions.csv", "predictions.json"]


def test_batches_in_parallel_threads_give_the_rows_of_one_batch_at_a_time(run_dir, input_dir, tmp_path):
    tables = {}
    for workers in (1, 3):
        out = tmp_path / f"workers{workers}"
        code, stderr = run_predict([str(input_dir), "--run-dir", str(run_dir), "--output-dir", str(out), "--device", "cpu",
                                    "--backend", "onnx", "--batch-size", "1", "--workers", str(workers)])
        assert code == 1 and stderr.count("broken.png") == 1  # the unreadable file, named once
        tables[workers] = read_csv(out / "predictions.csv")
    assert [row["name"] for row in tables[3]] == [row["name"] for row in tables[1]]  # in the order of the inputs
    assert sorted(row["name"] for row in tables[1]) == sorted(GOOD_NAMES)
    for one, parallel in zip(tables[1], tables[3]):
        assert one["predicted_class"] == parallel["predicted_class"] and one["nucleus_area_px"] == parallel["nucleus_area_px"]


def test_bad_checkpoint_is_a_usage_error(run_dir, input_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(input_dir), "--run-dir", str(run_dir), "--output-dir", str(tmp_path), "--device", "cpu",
                      "--seg-checkpoint", str(run_dir / "checkpoints" / "classification_best.pth")])
    assert exit_info.value.code == 2
    assert "expected segmentation" in capsys.readouterr().err


def test_find_images_walks_folders_and_globs(input_dir):
    found = predict.find_images([str(input_dir)])
    assert sorted(p.relative_to(input_dir).as_posix() for p in found) == [
        "a/cell.png", "b/cell.png", "broken.png", "deep/cell16.tif", "gray.bmp"]
    assert [p.name for p in predict.find_images([str(input_dir / "*" / "*.png")])] == ["cell.png", "cell.png"]
    with pytest.raises(UserError, match="nowhere.png"):
        predict.find_images([str(input_dir / "nowhere.png")])


def test_find_images_leaves_out_the_masks_of_a_paired_layout(paired_root, tmp_path):
    found = predict.find_images([str(paired_root)])
    assert sorted(p.relative_to(paired_root).as_posix() for p in found) == [
        f"{c}/{n}.BMP" for c in ("abnormal", "normal") for n in range(1, 7)]
    lone = tmp_path / "lone"
    lone.mkdir()
    cv2.imwrite(str(lone / "7N.png"), np.zeros((4, 4), np.uint8))  # no 7.bmp beside it: an image like any other
    assert [p.name for p in predict.find_images([str(lone)])] == ["7N.png"]


def test_a_link_loop_and_earlier_outputs_give_each_image_once(run_dir, input_dir, tmp_path):
    """The reported case: DIR/back -> DIR made 'DIR/**/*.png' predict one image 41 times. A second run into an output
    folder inside the inputs must not take the first run's masks and overlays for cells either."""
    cells = tmp_path / "cells"
    (cells / "deep").mkdir(parents=True)
    cv2.imwrite(str(cells / "deep" / "cell.png"), cv2.imread(str(input_dir / "a" / "cell.png")))
    (cells / "back").symlink_to(cells)
    output_dir = cells / "predictions"
    for _ in range(2):
        code, _ = run_predict([f"{cells}/**/*.png", "--run-dir", str(run_dir), "--output-dir", str(output_dir),
                               "--device", "cpu"])
        assert code == 0 and [row["name"] for row in read_csv(output_dir / "predictions.csv")] == ["cell"]


@pytest.mark.parametrize("inside", ["", "deep"])
def test_an_output_folder_holding_the_inputs_is_refused(run_dir, tmp_path, capsys, inside):
    cells = tmp_path / "cells"
    (cells / "deep").mkdir(parents=True)
    cv2.imwrite(str(cells / "deep" / "cell.png"), np.full((20, 20, 3), 200, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(cells / inside), "--run-dir", str(run_dir), "--output-dir", str(cells), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert f"--output-dir {cells}: it holds the input folder" in capsys.readouterr().err
    assert not (cells / "predictions.csv").exists()


def test_a_locked_output_folder_is_refused_naming_output_dir(run_dir, input_dir, tmp_path, capsys):
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "x"}))
    with pytest.raises(SystemExit):
        predict.main([str(input_dir / "gray.bmp"), "--run-dir", str(run_dir), "--output-dir", str(tmp_path), "--device", "cpu"])
    assert capsys.readouterr().err.strip().endswith("wait for it to end or pass another --output-dir")


def test_the_output_folder_is_locked_while_predicting(run_dir, input_dir, tmp_path, capsys):
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "x"}))
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(input_dir / "gray.bmp"), "--run-dir", str(run_dir), "--output-dir", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2 and "another run" in capsys.readouterr().err
    (tmp_path / ".lock").unlink()
    code, _ = run_predict([str(input_dir / "gray.bmp"), "--run-dir", str(run_dir), "--output-dir", str(tmp_path),
                           "--device", "cpu"])
    assert code == 0 and not (tmp_path / ".lock").exists()  # taken while running, removed at exit


def test_outputs_default_into_the_run_folder_cells_and_fields_apart(tmp_path):
    cells = predict.get_args(["cells/", "--run-dir", str(tmp_path)])
    fields = predict.get_args(["slide.tif", "--fields", "--run-dir", str(tmp_path)])
    assert cells.output_dir == tmp_path / "outputs" / "predictions"
    assert fields.output_dir == tmp_path / "outputs" / "fields"
    assert fields.field_checkpoint == tmp_path / "checkpoints" / "fields_best.pth"
    assert fields.instance_checkpoint == tmp_path / "checkpoints" / "instances_best.pth"


def test_a_named_checkpoint_must_exist_even_where_it_is_optional(tmp_path):
    """--fields segments without classifying when the run has no classifier; a mistyped --cls-checkpoint is not that."""
    (tmp_path / "classification_best.pth").write_bytes(b"")
    with pytest.raises(UserError, match=r"clasification_best.pth: no such file, unknown checkpoint 'clasification_best.pth'; "
                                        r"did you mean classification_best.pth\?"):
        predict.get_args(["slide.tif", "--fields", "--cls-checkpoint", str(tmp_path / "clasification_best.pth")])


def test_fields_given_only_annotations_is_one_line(untrained_run, tmp_path, capsys):
    """This ran on no field at all and exited 0 ("found 0 cells in 0 of 0 fields")."""
    cv2.imwrite(str(tmp_path / "f_nuclei.png"), np.zeros((8, 8), np.uint16))
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path / "f_nuclei.png"), "--fields", "--run-dir", str(untrained_run), "--device", "cpu"])
    assert exit_info.value.code == 2 and "only annotations found" in capsys.readouterr().err


def test_output_names_never_collide(tmp_path):
    paths = [tmp_path / "x" / "cell.png", tmp_path / "y" / "cell.png", tmp_path / "x" / "cell.bmp", tmp_path / "x" / "other.tif"]
    assert predict.output_names(paths) == ["x/cell.png", "y/cell", "x/cell.bmp", "x/other"]
    assert predict.output_names([tmp_path / "one.png"]) == ["one"]


def test_morphometrics_of_a_drawn_cell():
    cell = np.zeros((50, 60), bool)
    cell[10:40, 10:50] = True  # 30 x 40 = 1200 px, nucleus included
    nucleus = np.zeros_like(cell)
    nucleus[20:30, 20:30] = True  # 100 px
    image = np.full((50, 60, 3), 200, np.uint8)
    measured = predict_cells.morphometrics(image, CellPrediction(cell, nucleus))
    assert {k: measured[k] for k in ("nucleus_area_px", "cytoplasm_area_px")} == {"nucleus_area_px": 100,
                                                                                   "cytoplasm_area_px": 1100}
    assert measured["nc_ratio"] == pytest.approx(100 / 1100)
    assert set(measured) == set(FEATURE_NAMES)  # every measurement of tools/morphometry.py
    assert predict_cells.morphometrics(image, CellPrediction(nucleus, nucleus))["nc_ratio"] is None  # no cytoplasm: undefined


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        predict.get_args(["-h"])
    help_text = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", help_text.split("options:")[1])[1:]  # one per option, its help included
    explained = {entry.split()[0].rstrip(","): len(entry.split()) for entry in entries}
    for flag in ("--run-dir", "--seg-checkpoint", "--cls-checkpoint", "--output-dir", "--batch-size", "--device", "--explain"):
        assert explained[flag] >= 5, f"{flag} has no help"
    assert "glob" in help_text.split("options:")[0]  # the positional INPUT is explained too


# ---------------------------------------------------------------- generated hostile inputs (tests/hostile.py)

@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run folder with untrained tiny models of both stages and both field models (no training: seconds)."""
    run = tmp_path_factory.mktemp("untrained_run")
    save_untrained_checkpoints(run / "checkpoints")
    save_untrained_field_models(run / "checkpoints")
    return run


def write_inputs(folder: Path, images) -> list:
    """The generated images written into `folder`; returns (path, whether a reader must decode it) per image."""
    folder.mkdir()
    return [(image.write(folder / f"image{index}"), image.readable) for index, image in enumerate(images)]


def assert_named_once_each(stderr: str, written) -> None:
    """Each unreadable image named in one line, the readable ones not at all, and no traceback."""
    assert "Traceback" not in stderr
    for path, readable in written:
        assert sum(f"skipped {path}: " in line for line in stderr.splitlines()) == (0 if readable else 1), stderr


@settings(max_examples=hostile.examples(8))
@given(st.lists(hostile.images(max_side=40), min_size=1, max_size=3))
@example([hostile.GeneratedImage(np.full((1, 1, 3), 200, np.uint8), ".png"),  # one pixel
          hostile.GeneratedImage(np.full((5, 1), np.nan, np.float32), ".tif")])
@example([hostile.GeneratedImage(np.full((9, 9, 3), 90, np.uint8), ".jpg", damage="cut")])  # was predicted on grey fill
def test_generated_cells_give_a_row_each_or_one_named_line(untrained_run, images):
    """Cells of any size, depth and format, some unreadable: masks at each image's size, probabilities, finite
    measurements, exit code 1 with each unreadable image named once."""
    with tempfile.TemporaryDirectory() as folder:
        written, output = write_inputs(Path(folder) / "cells", images), Path(folder) / "predictions"
        code, stderr = run_predict([str(Path(folder) / "cells"), "--run-dir", str(untrained_run), "--output-dir",
                                    str(output), "--device", "cpu", "--batch-size", "2"])
        assert code == (0 if all(readable for _, readable in written) else 1)
        assert_named_once_each(stderr, written)
        rows = {row["file"]: row for row in read_csv(output / "predictions.csv")}
        assert sorted(rows) == sorted(str(path) for path, readable in written if readable)
        for path, row in rows.items():
            height, width = read_image(Path(path)).shape[:2]
            assert image_size(output / f"{row['name']}_cyt.png") == (height, width)
            assert sum(float(row[f"prob_{name}"]) for name in DEMO_CLASSES) == pytest.approx(1, abs=1e-4)
            assert all(np.isfinite(float(row[name])) for name in FEATURE_NAMES if row[name] != "")


@settings(max_examples=hostile.examples(6))
@given(st.lists(hostile.images(max_side=90), min_size=1, max_size=2), st.sampled_from([256, 2048]))
@example([hostile.GeneratedImage(np.full((1, 1), 50, np.uint8), ".png")], 2048)  # one pixel, one block
@example([hostile.GeneratedImage(np.zeros((40, 30, 2), np.uint16), ".tif")], 256)  # grey + alpha: cv2.error when mapped
def test_generated_fields_give_their_cells_or_one_named_line(untrained_run, images, block):
    """Fields of any size, depth and format, some unreadable, in blocks of the smallest size or the default (blocks
    smaller than a field: tests/test_fields_slide.py): label images of the field's size, the tables agree, each
    unreadable field named once."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(tools.fields.segment, "NUCLEUS_THRESHOLD", 0.5)  # an untrained model is rarely sure of a nucleus
        written, output = write_inputs(Path(folder) / "fields", images), Path(folder) / "found"
        code, stderr = run_predict([str(Path(folder) / "fields"), "--fields", "--run-dir", str(untrained_run),
                                    "--output-dir", str(output), "--device", "cpu", "--block-size", str(block)])
        assert code == (0 if all(readable for _, readable in written) else 1)
        assert_named_once_each(stderr, written)
        summary = json.loads((output / "summary.json").read_text())
        assert sorted(summary["fields"]) == sorted(path.stem for path, readable in written if readable)
        assert summary["overall"]["cells"] == len(read_csv(output / "cells.csv"))
        for path, readable in written:
            if readable:
                for labels in ("cells", "nuclei"):
                    assert image_size(output / f"{path.stem}_{labels}.png") == read_image(path).shape[:2]
