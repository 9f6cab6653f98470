"""ONNX export: both models run in onnxruntime with a dynamic batch axis and match PyTorch."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from tiny_checkpoints import (
    DEMO_CLASSES,
    save_untrained_checkpoints,
    save_untrained_field_models,
)

import export_onnx
from tools.checkpoint import load_checkpoint, load_model, save_checkpoint
from tools.fields.models import UNRECORDED_NUCLEUS_PX, onnx_field_models, torch_field_models
from tools.inference import GRAPH_OPTIMIZATIONS, OnnxBackend, TorchBackend, onnx_backend, onnx_pipeline
from utils.files import file_sha1

IMG_SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    save_untrained_checkpoints(run_dir / "checkpoints", temperature=1.7, img_size=IMG_SIZE)
    assert export_onnx.main(["--run-dir", str(run_dir), "--no-check"]) == 0
    return run_dir


def onnx_outputs(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})


def pytorch_and_onnx_outputs(exported, stage, inputs):
    """The checkpoint's PyTorch outputs and its exported ONNX model's outputs for the same inputs."""
    model, _ = load_model(exported / "checkpoints" / f"{stage}_best.pth", stage, torch.device("cpu"))
    with torch.no_grad():
        expected = model(inputs)
    return expected, onnx_outputs(exported / "outputs" / "onnx" / f"{stage}.onnx", inputs)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_segmentation_matches_pytorch(exported, batch_size):
    expected, (cyt, nuc) = pytorch_and_onnx_outputs(exported, "segmentation", torch.randn(batch_size, 3, IMG_SIZE, IMG_SIZE))
    assert cyt.shape == nuc.shape == (batch_size, 1, IMG_SIZE, IMG_SIZE)
    np.testing.assert_allclose(cyt, expected["cyt"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(nuc, expected["nuc"].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_classification_matches_pytorch(exported, batch_size):
    expected, (logits,) = pytorch_and_onnx_outputs(exported, "classification", torch.randn(batch_size, 5, IMG_SIZE, IMG_SIZE))
    assert logits.shape == (batch_size, len(DEMO_CLASSES))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("level", ["disable", "basic", "extended"])
def test_every_graph_optimisation_level_gives_the_default_levels_outputs(exported, level):
    """benchmarks/onnx_steps.py times each level: they must compute the same function."""
    path = exported / "outputs" / "onnx" / "classification.onnx"
    cells = np.random.default_rng(0).standard_normal((2, 5, IMG_SIZE, IMG_SIZE)).astype(np.float32)
    backend = OnnxBackend(path, 1, graph_optimization=level)
    assert backend.session.get_session_options().graph_optimization_level.name == GRAPH_OPTIMIZATIONS[level]
    np.testing.assert_allclose(backend(cells), OnnxBackend(path, 1)(cells), atol=1e-4, rtol=0)


def test_files_name_their_outputs_and_carry_what_a_user_needs(exported):
    segmentation = onnx.load(str(exported / "outputs" / "onnx" / "segmentation.onnx"))
    assert [output.name for output in segmentation.graph.output] == ["cyt", "nuc"]
    classification = onnx.load(str(exported / "outputs" / "onnx" / "classification.onnx"))
    metadata = {prop.key: prop.value for prop in classification.metadata_props}
    assert json.loads(metadata["class_names"]) == DEMO_CLASSES
    assert float(metadata["temperature"]) == 1.7 and metadata["img_size"] == str(IMG_SIZE)


def test_built_in_check_reports_the_difference(exported, capsys):
    assert export_onnx.main(["--run-dir", str(exported), "--output-dir", str(exported / "checked")]) == 0
    assert capsys.readouterr().out.count("max abs difference") == 2


def test_pipeline_of_the_classifier_alone_reuses_its_export(exported, capsys):
    """predict.py --fields classifies with the single-cell classifier only: no segmenter is exported or loaded."""
    checkpoint = exported / "checkpoints" / "classification_best.pth"
    pipeline = onnx_pipeline(exported / "outputs" / "onnx", None, checkpoint, threads=1)
    assert "exporting" not in capsys.readouterr().out  # the file made from this checkpoint is reused
    assert pipeline.segmenter is None and pipeline.class_names == DEMO_CLASSES and pipeline.temperature == 1.7


# ---------------------------------------------------------------- the two field models

FIELD_SETTINGS = dict(tile_size=64, instance_size=32, cell_window=96, field_scale=0.5, nucleus_px=12.5)


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    """Untrained field and instance checkpoints, exported once by onnx_field_models into the run's onnx folder."""
    run_dir = tmp_path_factory.mktemp("fields_run")
    save_untrained_field_models(run_dir / "checkpoints", **FIELD_SETTINGS)
    onnx_field_models(run_dir / "onnx", *field_checkpoints(run_dir), threads=1)
    return run_dir


def field_checkpoints(run_dir):
    return run_dir / "checkpoints" / "fields_best.pth", run_dir / "checkpoints" / "instances_best.pth"


@pytest.mark.parametrize("stage, channels, side", [("fields", 3, 64), ("instances", 4, 32)])
def test_field_models_return_what_the_pytorch_backend_returns(field_run, stage, channels, side):
    """Both backends give [B, 2, S, S] logits (cyt, nuc concatenated) for any batch size, equal within 1e-4."""
    model, _ = load_model(field_run / "checkpoints" / f"{stage}_best.pth", stage, torch.device("cpu"))
    torch_backend, onnx = TorchBackend(model, torch.device("cpu")), OnnxBackend(field_run / "onnx" / f"{stage}.onnx", 1)
    for batch_size in (1, 3):
        batch = np.random.default_rng(batch_size).standard_normal((batch_size, channels, side, side)).astype(np.float32)
        expected, got = torch_backend(batch), onnx(batch)
        assert got.shape == expected.shape == (batch_size, 2, side, side)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_field_exports_carry_how_the_models_see_a_field(field_run):
    models = onnx_field_models(field_run / "onnx", *field_checkpoints(field_run), threads=1, batch_size=5)
    assert (models.scale, models.tile, models.window, models.instance_size, models.nucleus_px, models.batch_size) == \
        (0.5, 64, 96, 32, 12.5, 5)
    for stage in ("fields", "instances"):
        metadata = OnnxBackend(field_run / "onnx" / f"{stage}.onnx", 1).metadata
        assert metadata["source"] == file_sha1(field_run / "checkpoints" / f"{stage}_best.pth")


def test_field_models_of_a_run_without_nucleus_px_see_the_nuclei_it_was_trained_for(tmp_path):
    save_untrained_field_models(tmp_path / "checkpoints", **{**FIELD_SETTINGS, "nucleus_px": None})
    checkpoints = field_checkpoints(tmp_path)
    assert torch_field_models(*checkpoints, torch.device("cpu")).nucleus_px == UNRECORDED_NUCLEUS_PX
    assert onnx_field_models(tmp_path / "onnx", *checkpoints, threads=1).nucleus_px == UNRECORDED_NUCLEUS_PX


def test_an_export_is_reused_until_its_checkpoint_changes(field_run, tmp_path, capsys):
    onnx_dir, checkpoint = tmp_path / "onnx", tmp_path / "fields_best.pth"
    onnx_dir.mkdir()
    (onnx_dir / "fields.onnx").write_bytes((field_run / "onnx" / "fields.onnx").read_bytes())
    checkpoint.write_bytes((field_run / "checkpoints" / "fields_best.pth").read_bytes())  # the same file elsewhere
    capsys.readouterr()
    onnx_backend(onnx_dir, "fields", checkpoint, 1)
    assert "exporting" not in capsys.readouterr().out

    state = load_checkpoint(checkpoint, "fields")
    state["model"]["decoders.cyt.head.bias"] += 1.0
    save_checkpoint(checkpoint, state)  # retrained: the export no longer matches
    backend = onnx_backend(onnx_dir, "fields", checkpoint, 1)
    assert capsys.readouterr().out.count("exporting") == 1
    assert backend.metadata["source"] == file_sha1(checkpoint)
    model, _ = load_model(checkpoint, "fields", torch.device("cpu"))
    batch = np.zeros((1, 3, 64, 64), np.float32)
    np.testing.assert_allclose(backend(batch), TorchBackend(model, torch.device("cpu"))(batch), atol=1e-4, rtol=0)
    onnx_backend(onnx_dir, "fields", checkpoint, 1)
    assert "exporting" not in capsys.readouterr().out
