"""Behaviour of tools/inference.py: the two-stage CellPipeline around numpy backends, and the PyTorch backend."""
import cv2
import numpy as np
import pytest
import torch
from tiny_checkpoints import DEMO_CLASSES, save_untrained_checkpoints

from tools.data_loader import ClassificationDataset, prepare_cells
from tools.inference import (
    FLIPS,
    CellPipeline,
    TorchBackend,
    masks_from_probs,
    sigmoid,
    softmax,
    torch_pipeline,
)
from tools.layouts.cells import read_records
from tools.layouts.record import CellRecord
from tools.masks import ground_truth_masks
from utils.errors import UserError
from utils.preprocessing import normalize_image

S = 16


class RecordingBackend:
    """A numpy backend that keeps every batch it is given and answers with `respond(batch)`."""

    def __init__(self, respond):
        self.respond, self.batches = respond, []

    def __call__(self, batch, *rest):
        self.batches.append(batch.copy())
        return self.respond(batch)


def ramp_image(size=S):
    """RGB whose red channel is the x coordinate and green the y coordinate: every flip shows in it."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs * 255 // (size - 1), ys * 255 // (size - 1), np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def coordinate_segmenter():
    """Cell logits = the input's x-coordinate channel, nucleus logits = its y channel, pixel for pixel."""
    return RecordingBackend(lambda batch: batch[:, :2].copy())


# ---------------------------------------------------------------- flips

def test_flips_are_one_backend_call_of_three_b_images():
    segmenter = coordinate_segmenter()
    pipeline = CellPipeline(segmenter, S, seg_flips=FLIPS)
    images = [ramp_image(), 255 - ramp_image()]
    pipeline.mask_probs(images)
    (batch,) = segmenter.batches
    assert len(FLIPS) == 3 and batch.shape == (3 * len(images), 3, S, S)
    identity = np.stack([normalize_image(image) for image in images])
    np.testing.assert_array_equal(batch[:2], identity)
    np.testing.assert_array_equal(batch[2:4], identity[..., ::-1])  # horizontal: x mirrored
    np.testing.assert_array_equal(batch[4:], identity[..., ::-1, :])  # vertical: y mirrored


def test_flipped_outputs_are_averaged_back_in_the_identity_orientation():
    """A backend that maps each pixel to its input's x (cell) and y (nucleus) gives back the identity's maps."""
    images = [ramp_image(), 255 - ramp_image()]
    probs = CellPipeline(coordinate_segmenter(), S, seg_flips=FLIPS).mask_probs(images)
    for (cell_prob, nuc_prob), image in zip(probs, images):
        expected = sigmoid(normalize_image(image)[:2])
        np.testing.assert_allclose(cell_prob, expected[0], rtol=1e-6)
        np.testing.assert_allclose(nuc_prob, expected[1], rtol=1e-6)
        assert not np.allclose(cell_prob, cell_prob[:, ::-1])  # the map is not flip-symmetric: the test can fail


def test_mask_probs_come_back_at_each_images_own_size():
    images = [np.zeros((10, 24, 3), np.uint8), np.zeros((30, 12, 3), np.uint8)]
    probs = CellPipeline(RecordingBackend(lambda batch: np.zeros((len(batch), 2, S, S), np.float32)), S).mask_probs(images)
    assert [p[0].shape for p in probs] == [(10, 24), (30, 12)]
    assert all(np.allclose(p, 0.5) for pair in probs for p in pair)  # logit 0 everywhere


def mean_logits(batch):
    """Logits from each channel's mean: the same for every flip of a cell."""
    return batch.mean(axis=(2, 3))[:, :3] * np.array([3.0, -2.0, 1.0])


def test_class_probs_divide_the_logits_by_the_temperature():
    cells = np.random.default_rng(0).normal(size=(4, 5, 8, 8))  # float64: flips sum in another order
    classifier = RecordingBackend(mean_logits)
    pipeline = CellPipeline(None, 0, classifier, 8, temperature=2.5)
    logits = mean_logits(cells)
    view_logits = pipeline.view_logits(cells)
    assert view_logits.shape == (3, 4, 3) and classifier.batches[0].shape == (12, 5, 8, 8)  # one call, 3B cells
    np.testing.assert_allclose(view_logits, np.stack([logits] * 3), rtol=1e-9)
    np.testing.assert_allclose(pipeline.class_probs(cells), softmax(logits / 2.5), rtol=1e-5)  # the fitted T
    for temperature in (1.0, 0.5, 3.0):
        np.testing.assert_allclose(pipeline.class_probs(cells, temperature=temperature),
                                   softmax(logits / temperature), rtol=1e-5)


def test_class_probs_average_the_views_in_probability_space():
    def view_dependent(batch):  # identity: class 0 sure; each mirror: class 1 sure
        logits = np.zeros((len(batch), 2))
        logits[: len(batch) // 3, 0] = 10.0
        logits[len(batch) // 3:, 1] = 10.0
        return logits

    probs = CellPipeline(None, 0, RecordingBackend(view_dependent), 8).class_probs(np.zeros((2, 5, 8, 8), np.float32))
    expected = (softmax(np.array([10.0, 0.0])) + 2 * softmax(np.array([0.0, 10.0]))) / 3
    np.testing.assert_allclose(probs, np.stack([expected] * 2))


def test_a_pipeline_without_classifier_says_how_to_get_one():
    with pytest.raises(UserError, match="no classifier checkpoint.*main_classify.py"):
        CellPipeline(coordinate_segmenter(), S).view_logits(np.zeros((1, 5, S, S), np.float32))


# ---------------------------------------------------------------- masks

def test_masks_are_one_solid_cell_with_its_nuclei_inside():
    cell_prob = np.zeros((20, 30))
    cell_prob[2:18, 2:16] = 0.9  # the cell, with a hole
    cell_prob[8:10, 8:10] = 0.1
    cell_prob[5:8, 22:26] = 0.9  # a smaller blob: not the cell
    nuc_prob = np.zeros((20, 30))
    nuc_prob[7:11, 7:11] = 0.8  # inside the cell
    nuc_prob[6:7, 23:25] = 0.8  # in the dropped blob: dropped with it
    cell, nucleus = masks_from_probs(cell_prob, nuc_prob)
    expected_cell = np.zeros((20, 30), bool)
    expected_cell[2:18, 2:16] = True
    expected_nucleus = np.zeros((20, 30), bool)
    expected_nucleus[7:11, 7:11] = True
    assert np.array_equal(cell, expected_cell) and np.array_equal(nucleus, expected_nucleus)


def test_predict_with_given_masks_classifies_them():
    image = ramp_image()
    cell = np.zeros((S, S), bool)
    cell[2:14, 3:12] = True
    nucleus = np.zeros((S, S), bool)
    nucleus[6:9, 6:9] = True
    pipeline = CellPipeline(coordinate_segmenter(), S, RecordingBackend(mean_logits), S, ["a", "b", "c"], 1.5)
    (prediction,) = pipeline.predict([image], [(cell, nucleus)])
    assert pipeline.segmenter.batches == []  # the masks were given: stage 1 did not run
    inputs, _ = pipeline.classifier_inputs([image], [(cell, nucleus)])
    np.testing.assert_allclose(prediction.probs, softmax(mean_logits(inputs[0])[0] / 1.5), rtol=1e-5)
    assert prediction.view_logits.shape == (3, 3) and prediction.cell_mask is cell
    (masks_only,) = CellPipeline(coordinate_segmenter(), S).predict([image])
    assert masks_only.probs is None and masks_only.cell_mask.shape == (S, S)


# ---------------------------------------------------------------- the classifier's input and the PyTorch backend

def test_classifier_input_is_built_as_in_training(demo_root, tmp_path):
    records, _ = read_records(demo_root)
    record: CellRecord = records[0]
    image = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
    masks = ground_truth_masks(record, image.shape[:2])
    dataset = ClassificationDataset(prepare_cells([record], 64), DEMO_CLASSES, train=False)
    inputs, _ = CellPipeline(None, 0, None, 64).classifier_inputs([image], [masks])
    assert torch.equal(torch.from_numpy(inputs[0][0]), dataset[0][0])


class MeanColourClassifier(torch.nn.Module):
    """Logits from each channel's mean: the same for every flip, so flip averaging leaves softmax(logits / T) exact."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0]])


def test_predict_class_probs_divides_logits_by_temperature():
    inputs = torch.randn(4, 2, 8, 8)
    logits = MeanColourClassifier()(inputs).numpy()
    for temperature in (1.0, 0.5, 3.0):
        pipeline = CellPipeline(None, 0, TorchBackend(MeanColourClassifier(), torch.device("cpu")), 8)
        probs = pipeline.class_probs(inputs.numpy(), temperature=temperature)
        np.testing.assert_allclose(probs, softmax(logits / temperature), rtol=1e-5)


def test_torch_pipeline_reads_sizes_classes_and_temperature(tmp_path):
    seg_path, cls_path = save_untrained_checkpoints(tmp_path, temperature=1.7, img_size=32)
    pipeline, seg, cls = torch_pipeline(seg_path, cls_path, torch.device("cpu"))
    assert (pipeline.seg_size, pipeline.cls_size, pipeline.class_names) == (32, 32, DEMO_CLASSES)
    assert pipeline.temperature == 1.7 and seg["stage"] == "segmentation" and cls["stage"] == "classification"
    (prediction,) = pipeline.predict([ramp_image(40)])
    assert prediction.cell_mask.shape == (40, 40) and prediction.probs.sum() == pytest.approx(1.0, abs=1e-5)
    seg_only, _, none = torch_pipeline(seg_path, None, torch.device("cpu"))
    assert seg_only.classifier is None and none is None
    uncalibrated = save_untrained_checkpoints(tmp_path / "old", img_size=32)[1]  # made before calibration: T = 1
    assert torch_pipeline(seg_path, uncalibrated, torch.device("cpu"))[0].temperature == 1.0
