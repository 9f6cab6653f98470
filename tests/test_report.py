"""report.html: one self-contained page with every section, every image an inline PNG; evaluate.py writes it."""
import base64
import json
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from tiny_checkpoints import save_untrained_checkpoints

import evaluate
from utils.report import SECTIONS, ErrorExample, worst_errors, write_report
from utils.visualization import plot_confusion_matrix

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects section headings, image sources and every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.headings, self.image_sources, self.links, self.tags = [], [], [], []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        self._in_heading = tag == "h2"
        if tag == "h2":
            self.headings.append("")
        if tag == "img":
            self.image_sources.append(attributes.get("src", ""))
        self.links += [value for name, value in attrs if name in ("href", "src") and value]

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings[-1] += data


def parse(path):
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decoded_png(source):
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix), source[:40]
    png = base64.b64decode(source[len(prefix):], validate=True)
    assert png.startswith(PNG_SIGNATURE)
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    return png


def assert_self_contained(page):
    assert page.headings == list(SECTIONS)
    assert page.image_sources and all(decoded_png(source) for source in page.image_sources)
    assert all(link.startswith(("data:", "#")) for link in page.links)  # nothing fetched from elsewhere
    assert not {"link", "script", "iframe"} & set(page.tags)


def synthetic_results():
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for name in ("normal_a", "<abnormal>")}
    return {
        "data_root": "data/x", "split": "test", "num_cells": 4, "mask_source": "predicted",
        "segmentation": {"dice_cyt": 0.9, "iou_cyt": 0.8, "pixel_acc_cyt": 0.95,
                         "dice_nuc": 0.7, "iou_nuc": 0.6, "pixel_acc_nuc": 0.97},
        "classification": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_precision": 0.5, "macro_recall": 0.5,
                           "macro_f1": 0.5, "weighted_f1": 0.5, "roc_auc_macro": None,
                           "roc_auc_per_class": {"normal_a": None, "<abnormal>": 0.75}, "per_class": per_class,
                           "num_samples": 4, "accuracy_ci95": [0.1, 0.9],
                           "most_confused": [{"true": "<abnormal>", "predicted": "normal_a", "count": 1, "share": 0.5}]},
        "normal_vs_abnormal": None,
        "calibration": {"temperature": 1.5, "ece_before": 0.2, "ece_after": 0.05},
    }


def test_report_is_self_contained_with_every_section(tmp_path):
    plot = plot_confusion_matrix(np.array([[1, 1], [1, 1]]), ["normal_a", "<abnormal>"], tmp_path / "confusion_matrix.png")
    error = ErrorExample("cells/<1>", np.full((30, 20, 3), 200, np.uint8), "normal_a", "<abnormal>", 0.91)
    path = write_report(tmp_path / "report.html", synthetic_results(), {"confusion_matrix": plot}, [error])
    page = parse(path)
    assert_self_contained(page)
    assert len(page.image_sources) == 2  # the one plot given, the one error; missing plots are said, not broken
    text = path.read_text()
    assert "&lt;abnormal&gt;" in text and "<abnormal>" not in text  # names are escaped
    assert "<td>&lt;abnormal&gt;</td><td>normal_a</td><td>1</td><td>50%</td>" in text  # the most confused pair


def test_report_notes_a_temperature_stopped_at_its_bound(tmp_path):
    results = synthetic_results()
    assert "stopped at a bound" not in write_report(tmp_path / "inside.html", results, {}, []).read_text()
    results["calibration"]["at_bound"] = True
    assert "stopped at a bound" in write_report(tmp_path / "bound.html", results, {}, []).read_text()


def test_worst_errors_are_the_most_confident_mistakes():
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    assert worst_errors(labels, probs, limit=10) == [2, 1, 4]
    assert worst_errors(labels, probs, limit=2) == [2, 1]


@pytest.fixture(scope="module")
def evaluation(demo_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    save_untrained_checkpoints(run_dir / "checkpoints", temperature=2.0)
    evaluate.main(["--data-root", str(demo_root), "--split", "all", "--output-dir", str(run_dir), "--device", "cpu",
                   "--workers", "0", "--num-errors", "4"])
    return run_dir / "outputs" / "eval"


def test_evaluate_reports_calibration(evaluation):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] == 2.0
    assert 0.0 <= calibration["ece_before"] <= 1.0 and 0.0 <= calibration["ece_after"] <= 1.0
    assert calibration["ece_before"] != calibration["ece_after"]  # the temperature was applied
    assert calibration["at_bound"] is False  # T = 2 lies inside the fitting range
    assert "quadratic_weighted_kappa" not in metrics["classification"]  # SIPaKMeD's classes are kinds, not grades
    assert (evaluation / "reliability.png").read_bytes().startswith(PNG_SIGNATURE)


def test_evaluate_writes_the_report(evaluation):
    page = parse(evaluation / "report.html")
    assert_self_contained(page)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    confusion = np.array(metrics["classification"]["confusion_matrix"])
    errors = metrics["num_cells"] - np.trace(confusion)
    most_confused = metrics["classification"]["most_confused"][0]
    names = metrics["classification"]["class_names"]
    off_diagonal = confusion - np.diag(np.diag(confusion))
    assert most_confused["count"] == off_diagonal.max() == confusion[names.index(most_confused["true"]),
                                                                      names.index(most_confused["predicted"])]
    assert len(page.image_sources) == 3 + min(4, errors)  # confusion matrix, ROC, reliability + the gallery
