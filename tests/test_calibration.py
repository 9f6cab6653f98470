"""Temperature scaling: fitting recovers a known temperature, lowers ECE, and main_classify.py stores it."""
import numpy as np
import pytest
import torch

import main_classify
from tools.calibration import (
    TEMPERATURE_RANGE,
    fit_temperature,
    temperature_nll,
    view_logits_of_cells,
)
from tools.cell_cache import PreparedCells
from tools.inference import CellPipeline
from tools.layouts.record import CellRecord
from tools.metrics import expected_calibration_error
from utils.preprocessing import cell_channels


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def overconfident_logits(true_temperature, num_cells=20000, num_classes=5, seed=0):
    """Labels drawn from softmax(z); the model reports z * true_temperature, so softmax(logits / T) is calibrated at T = true."""
    rng = np.random.default_rng(seed)
    calibrated_logits = rng.normal(0.0, 2.0, size=(num_cells, num_classes))
    cumulative = softmax(calibrated_logits).cumsum(axis=1)
    labels = (rng.random((num_cells, 1)) > cumulative).sum(axis=1)
    return calibrated_logits * true_temperature, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_known_temperature(true_temperature):
    logits, labels = overconfident_logits(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_calibration_lowers_ece_of_overconfident_model():
    logits, labels = overconfident_logits(3.0, seed=1)
    temperature = fit_temperature(logits, labels)
    ece_before = expected_calibration_error(labels, softmax(logits))
    ece_after = expected_calibration_error(labels, softmax(logits / temperature))
    assert ece_before > 0.1
    assert ece_after < 0.5 * ece_before


def test_temperature_stops_at_the_bounds():
    labels = np.arange(40) % 4
    # every cell right: the NLL keeps falling as T -> 0
    separable = np.eye(4)[labels] * 1.0
    # the logits say nothing about the labels: the NLL keeps falling as T -> infinity (uniform probabilities)
    uninformative = np.random.default_rng(0).normal(0.0, 3.0, size=(40, 4))
    assert fit_temperature(separable, labels) == pytest.approx(TEMPERATURE_RANGE[0])
    assert fit_temperature(uninformative, labels) == pytest.approx(TEMPERATURE_RANGE[1])


def test_views_are_averaged_in_probability_space():
    # two views of one cell: the NLL is that of the mean of their softmaxes, as CellPipeline.class_probs reports
    views = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]], dtype=torch.float64)  # [V=2, N=1, K=2]
    nll = temperature_nll(views, torch.tensor([0]), torch.tensor(1.0, dtype=torch.float64))
    assert float(nll) == pytest.approx(-np.log(0.5))


def test_view_logits_of_cells_batch_the_prepared_cells_in_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    masks = (rng.random((5, 2, 8, 8)) < 0.5).astype(np.uint8)
    records = [CellRecord(f"c{i}", None, ["b", "a"][i % 2], f"c{i}") for i in range(5)]
    seen = []

    def classifier(batch, *rest):
        seen.append(len(batch))
        return batch.mean(axis=(2, 3))  # [3B, 5]: the same for every flip

    logits, labels = view_logits_of_cells(CellPipeline(None, 0, classifier, 8), PreparedCells(images, masks, records),
                                          ["a", "b"], batch_size=2)
    assert seen == [6, 6, 3]  # batches of 2, 2 and 1 cells, three views each
    expected = np.stack([cell_channels(images[i], masks[i]).mean(axis=(1, 2)) for i in range(5)])
    assert logits.shape == (3, 5, 5)
    np.testing.assert_allclose(logits, np.stack([expected] * 3), rtol=1e-5)
    assert labels.tolist() == [1, 0, 1, 0, 1]


def test_main_classify_stores_temperature_in_both_checkpoints(demo_root, tmp_path):
    run_dir = tmp_path / "run"
    main_classify.main(["--data-root", str(demo_root), "--output-dir", str(run_dir), "--mask-source", "gt",
                        "--backbone", "test_convnext", "--img-size", "64", "--no-pretrained", "--workers", "0",
                        "--device", "cpu", "--epochs", "1", "--batch-size", "8"])
    for name in ("best", "last"):
        checkpoint = torch.load(run_dir / "checkpoints" / f"classification_{name}.pth", weights_only=False)
        low, high = TEMPERATURE_RANGE
        assert low <= checkpoint["temperature"] <= high
        assert checkpoint["temperature"] != 1.0  # fitted, not the default
