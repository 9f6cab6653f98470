"""End to end on the demo data's fields of view: train both field models, predict whole fields, evaluate them.

The models are trained for one epoch, so their numbers mean nothing: these tests check what each step writes
and that the steps fit together (the checkpoints carry what prediction needs), not how well they segment.
"""
import csv
import json

import cv2
import numpy as np
import pytest
import torch

import evaluate
import main_segment
import predict
import tools.fields.segment

TINY = ["--backbone", "test_convnext", "--no-pretrained", "--img-size", "64", "--instance-size", "64", "--epochs", "1",
        "--instance-epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--decoder-channels", "16", "16", "16"]


@pytest.fixture(scope="module")
def fields_run(demo_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fields_run")
    main_segment.main(["--data-root", str(demo_root), "--layout", "sipakmed-fields", "--run-dir", str(run_dir), *TINY])
    return run_dir


def crowded_fields(demo_root):
    """The crowded cluster image of every class (cluster 002: touching and overlapping cells)."""
    fields = sorted(demo_root.glob("im_*/im_*/002.bmp"))
    assert len(fields) == 5
    return fields


def test_training_writes_both_models_with_how_they_see_a_field(fields_run):
    for stage in ("fields", "instances"):
        checkpoint = torch.load(fields_run / "checkpoints" / f"{stage}_best.pth", weights_only=False, map_location="cpu")
        args = checkpoint["args"]
        assert isinstance(args["field_scale"], float) and 0.25 <= args["field_scale"] <= 1.0
        assert 5 < args["nucleus_px"] <= 22  # the demo's nuclei (~17 px) at the model scale, never enlarged
        assert args["tile_size"] == 64
        assert isinstance(args["cell_window"], int) and args["cell_window"] % 32 == 0 and args["cell_window"] > 0
        assert checkpoint["model_config"]["in_chans"] == (3 if stage == "fields" else 4)
        log = [json.loads(line) for line in (fields_run / "logs" / stage / "log.txt").read_text().splitlines()]
        assert len(log) == 1 and "val_dice_mean" in log[0]
    assert list((fields_run / "splits").glob("*-fields.json"))  # the fields' own split manifest


def test_predict_fields_writes_per_field_outputs_and_run_tables(fields_run, demo_root, tmp_path):
    out = tmp_path / "predictions"
    fields = crowded_fields(demo_root)
    code = predict.main([*map(str, fields), "--fields", "--run-dir", str(fields_run), "--output-dir", str(out),
                         "--device", "cpu"])
    assert code == 0
    geojsons = sorted(out.rglob("*.geojson"))
    assert len(geojsons) == len(fields)
    for geojson in geojsons:
        stem = geojson.with_suffix("")
        image = cv2.imread(str(fields[0]))
        collection = json.loads(geojson.read_text())
        assert collection["type"] == "FeatureCollection" and isinstance(collection["features"], list)
        for name in ("cells", "nuclei"):
            labels = cv2.imread(f"{stem}_{name}.png", cv2.IMREAD_UNCHANGED)
            assert labels.dtype.name == "uint16" and labels.shape == image.shape[:2]
            assert labels.max() <= len(collection["features"])
        assert cv2.imread(f"{stem}_overlay.png").shape == image.shape
    with open(out / "cells.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["cells"] == len(rows) == sum(part["cells"] for part in summary["fields"].values())
    assert len(summary["fields"]) == len(fields) and summary["settings"]["failed"] == []
    assert summary["settings"]["cls_checkpoint"] is None  # no classifier in this run: cells segmented only


def test_predict_fields_on_onnx_runtime_finds_the_cells_pytorch_finds(fields_run, demo_root, tmp_path, monkeypatch):
    """The CPU's default backend (both field models exported once into RUN_DIR/outputs/onnx) against PyTorch."""
    monkeypatch.setattr(tools.fields.segment, "NUCLEUS_THRESHOLD", 0.5)  # a one-epoch model is rarely sure of a nucleus
    fields = crowded_fields(demo_root)
    summaries, labels = {}, {}
    for backend in ("onnx", "torch"):
        out = tmp_path / backend
        assert predict.main([*map(str, fields), "--fields", "--run-dir", str(fields_run), "--output-dir", str(out),
                             "--device", "cpu", "--backend", backend]) == 0
        summaries[backend] = json.loads((out / "summary.json").read_text())
        labels[backend] = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(out.rglob("*_cells.png"))]
    assert {path.name for path in (fields_run / "outputs" / "onnx").glob("*.onnx")} >= {"fields.onnx", "instances.onnx"}
    assert [summaries[b]["settings"]["backend"] for b in ("onnx", "torch")] == ["onnx", "torch"]
    assert summaries["torch"]["overall"]["cells"] > 0, "no cell found: the comparison would be empty"
    cells = {backend: {name: field["cells"] for name, field in summaries[backend]["fields"].items()} for backend in summaries}
    assert cells["onnx"] == cells["torch"]  # the same number of cells in every field
    for onnx_labels, torch_labels in zip(labels["onnx"], labels["torch"]):
        assert np.mean(onnx_labels == torch_labels) > 0.999


def test_evaluate_fields_writes_nucleus_and_cell_scores(fields_run, demo_root):
    evaluate.main(["--data-root", str(demo_root), "--layout", "sipakmed-fields", "--split", "all",
                   "--run-dir", str(fields_run), "--device", "cpu", "--workers", "0"])
    metrics = json.loads((fields_run / "outputs" / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["num_fields"] == 10
    for section in ("nuclei", "cells"):
        assert isinstance(metrics[section], dict) and metrics[section]
        assert all(isinstance(value, (int, float)) for value in metrics[section].values())
    assert set(metrics["nuclei"]) >= {"f1", "precision", "recall", "tp", "fn"}
    assert set(metrics["cells"]) >= {"dice", "fno", "aji", "n_gt"}
    assert metrics["cells"]["n_gt"] > 0
    assert len(metrics["by_folder"]) == 5  # one per class folder


def test_int8_field_models_are_quantised_once_on_the_training_fields(fields_run, demo_root, tmp_path, capsys):
    import onnx

    fields = crowded_fields(demo_root)[:2]
    args = [*map(str, fields), "--fields", "--run-dir", str(fields_run), "--device", "cpu", "--precision", "int8"]
    assert predict.main([*args, "--output-dir", str(tmp_path / "first")]) == 0
    assert capsys.readouterr().out.count("(int8, once per checkpoint)") == 2
    for stage in ("fields", "instances"):
        graph = onnx.load(str(fields_run / "outputs" / "onnx" / f"{stage}.int8.onnx"))
        ops = {node.name: node.op_type for node in graph.graph.node}
        assert "QuantizeLinear" in ops.values()
        metadata = {prop.key: prop.value for prop in graph.metadata_props}
        assert metadata["precision"] == "int8" and "tile_size" in metadata
    assert predict.main([*args, "--output-dir", str(tmp_path / "again")]) == 0
    assert "int8, once per checkpoint" not in capsys.readouterr().out  # reused
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("first", "again")]
    assert summaries[0]["fields"].keys() == summaries[1]["fields"].keys()


def test_int8_without_the_training_fields_runs_in_float32_with_a_note(fields_run, demo_root, tmp_path, capsys):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(fields_run / "checkpoints", moved / "checkpoints")  # its args still name the demo data's run folder
    checkpoint = torch.load(moved / "checkpoints" / "fields_best.pth", weights_only=False, map_location="cpu")
    checkpoint["provenance"]["data_root"] = str(tmp_path / "gone")
    checkpoint["args"]["data_root"] = tmp_path / "gone"
    torch.save(checkpoint, moved / "checkpoints" / "fields_best.pth")
    fields = crowded_fields(demo_root)[:1]
    assert predict.main([*map(str, fields), "--fields", "--run-dir", str(moved), "--device", "cpu", "--precision", "int8",
                         "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "the fields model runs in float32, not int8" in out and "gone" in out
    assert not (moved / "outputs" / "onnx" / "fields.int8.onnx").exists()
