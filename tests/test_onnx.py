"""ONNX export: both models run in onnxruntime with a dynamic batch axis and match PyTorch."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import export_onnx
from tiny_checkpoints import DEMO_CLASSES, save_untrained_checkpoints
from tools.checkpoint import load_model

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
