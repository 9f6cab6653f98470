"""tools/fields/summary.py: the call follows its stated rule; the gallery lists the most suspicious cells first."""
import csv

import pytest

from tools.fields.summary import CallRule, abnormal_classes, summarise_cells, the_call

CLASSES = ["im_Dyskeratotic", "im_Koilocytotic", "im_Parabasal"]  # Parabasal is SIPaKMeD's normal class here


def write_cells(path, probabilities):
    with open(path, "w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["field", "id", "centroid_x", "centroid_y", "x0", "y0", "x1", "y1", "class"]
                        + [f"prob_{c}" for c in CLASSES])
        for number, probs in enumerate(probabilities, start=1):
            name = CLASSES[max(range(3), key=lambda i: probs[i])]
            writer.writerow(["slide", number, 10.5 * number, 20.0, 0, 0, 4, 4, name, *probs])
    return path


def test_abnormal_classes_are_the_ones_not_normal():
    assert abnormal_classes(CLASSES) == ["im_Dyskeratotic", "im_Koilocytotic"]


@pytest.mark.parametrize("cells, abnormal, classified, call", [
    (6000, 40, True, "abnormal"), (6000, 20, True, "NILM"), (4000, 400, True, "unsatisfactory"),
    (6000, 600, False, "not classified"), (6000, 30, True, "abnormal")])
def test_the_call_follows_the_rule(cells, abnormal, classified, call):
    assert the_call(cells, abnormal, classified, CallRule(abnormal_per_1000=5, min_cells=5000)) == call


def test_the_summary_counts_calls_and_lists_the_most_suspicious_first(tmp_path):
    probabilities = [[0.1, 0.1, 0.8], [0.5, 0.45, 0.05], [0.2, 0.5, 0.3], [0.05, 0.05, 0.9], [0.3, 0.3, 0.4]]
    cells_csv = write_cells(tmp_path / "cells.csv", probabilities)
    rule = CallRule(abnormal_probability=0.6, abnormal_per_1000=300, min_cells=5, gallery=3)
    summary = summarise_cells(cells_csv, CLASSES, rule, mpp=0.5)
    assert summary["cells"] == 5 and summary["counts"] == {"im_Dyskeratotic": 1, "im_Koilocytotic": 1, "im_Parabasal": 3}
    assert summary["abnormal_cells"] == 3 and summary["abnormal_per_1000"] == 600.0 and summary["call"] == "abnormal"
    assert [cell["id"] for cell in summary["most_suspicious"]] == [2, 3, 5]  # by Dyskeratotic + Koilocytotic
    assert summary["most_suspicious"][0] == {"id": 2, "class": "im_Dyskeratotic", "abnormal_probability": 0.95,
                                              "x": 21.0, "y": 20.0, "box": [0, 0, 4, 4], "x_um": 10.5, "y_um": 10.0}
    assert "300 per 1000" in summary["rule"]


def test_without_a_classifier_the_summary_counts_only(tmp_path):
    cells_csv = write_cells(tmp_path / "cells.csv", [[0.2, 0.2, 0.6]] * 3)
    assert summarise_cells(cells_csv, None, CallRule(), None) == {"cells": 3, "call": "not classified",
                                                                 "rule": CallRule().describe()}


def test_an_empty_slide_is_unsatisfactory(tmp_path):
    summary = summarise_cells(write_cells(tmp_path / "cells.csv", []), CLASSES, CallRule(), None)
    assert summary["cells"] == 0 and summary["call"] == "unsatisfactory" and summary["most_suspicious"] == []


def test_a_run_of_several_inputs_ranks_cells_whose_ids_repeat(tmp_path):
    """The run's cells.csv holds every input's cells, numbered from 1 in each: equal probabilities must not clash."""
    cells_csv = write_cells(tmp_path / "cells.csv", [[0.3, 0.3, 0.4]] * 2)
    with open(cells_csv, "a", newline="") as table:
        table.write(open(cells_csv).read().split("\n", 1)[1])  # the same rows again: ids 1, 2 once more
    summary = summarise_cells(cells_csv, CLASSES, CallRule(gallery=3), None)
    assert summary["cells"] == 4 and [cell["id"] for cell in summary["most_suspicious"]] == [1, 2, 1]
