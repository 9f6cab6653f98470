"""tools/screening.py: predict.py --fields GeoJSON scored against annotated nucleus points, on hand-made cells."""
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tools.geojson import cell_feature, write_geojson
from tools.layouts.points import BETHESDA_CLASSES, FieldPoints
from tools.screening import (
    MATCH_RADIUS_PX,
    cells_on_slide_fields,
    match_points,
    read_predicted_cells,
    score_fields,
)

CLASSES = sorted(BETHESDA_CLASSES)  # as a classifier trained on the cric layout orders them


def square(cx, cy, half):
    return [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]]


def feature(cx, cy, nucleus_half=4, probs=None, with_nucleus=True):
    """A predicted cell: a 40 px square around a square nucleus centred on (cx, cy)."""
    measurements = {f"prob_{name}": p for name, p in zip(CLASSES, probs)} if probs is not None else {}
    return cell_feature(square(cx, cy, 20), square(cx, cy, nucleus_half) if with_nucleus else None,
                        measurements=measurements)


def nilm(p_nilm):
    """Probabilities with P(NILM) = p_nilm, the rest on LSIL."""
    probs = dict.fromkeys(CLASSES, 0.0)
    probs.update(NILM=p_nilm, LSIL=1 - p_nilm)
    return [probs[name] for name in CLASSES]


def field(field_id, points, labels):
    return FieldPoints(field_id, None, "0", tuple(str(i) for i in range(len(points))),
                       np.array(points, np.float32).reshape(-1, 2), tuple(labels), (400, 300))


def cells(tmp_path, name, features):
    path = tmp_path / f"{name}.geojson"
    write_geojson(path, features)
    return read_predicted_cells(path)


def test_reads_nucleus_centres_and_probabilities(tmp_path):
    predicted = cells(tmp_path, "f", [feature(50, 60, probs=nilm(0.9)), feature(200, 100, with_nucleus=False)])
    assert predicted.class_names == CLASSES
    assert predicted.centres[0] == pytest.approx([50, 60]) and np.isnan(predicted.centres[1]).all()
    assert predicted.cell_centres[1] == pytest.approx([200, 100])
    assert predicted.probs[0, CLASSES.index("NILM")] == pytest.approx(0.9)


def test_a_point_is_found_inside_the_nucleus_or_near_its_centre(tmp_path):
    predicted = cells(tmp_path, "f", [feature(100, 100, nucleus_half=30), feature(300, 100),
                                      feature(300, 250, with_nucleus=False)])
    points = np.array([
        [125, 120],  # inside the large nucleus, 32 px from its centre
        [300 + MATCH_RADIUS_PX - 1, 100],  # outside the small nucleus, within the radius
        [300, 100 + MATCH_RADIUS_PX + 2],  # outside, beyond the radius: the small nucleus is taken anyway
        [300, 250],  # at a cell without nucleus: nothing to find it
    ], np.float32)
    assert match_points(points, predicted).tolist() == [0, 1, -1, -1]
    assert match_points(points[2:3], predicted).tolist() == [-1]


def test_one_prediction_finds_one_point_the_closest(tmp_path):
    predicted = cells(tmp_path, "f", [feature(100, 100)])
    assert match_points(np.array([[108, 100], [103, 100]], np.float32), predicted).tolist() == [-1, 0]


def test_scores_on_two_hand_made_fields(tmp_path):
    # Field a: NILM at (50, 50) found (P(NILM) 0.9); LSIL at (200, 50) found (0.2); HSIL at (300, 200) missed;
    # plus a false cell (blood) at (350, 40) scored 0.6. Field b: two NILM cells, one found (0.7), and nothing else.
    a = field("a", [[50, 50], [200, 50], [300, 200]], ["NILM", "LSIL", "HSIL"])
    b = field("b", [[60, 60], [250, 150]], ["NILM", "NILM"])
    cells_of = {"a": cells(tmp_path, "a", [feature(52, 51, probs=nilm(0.9)), feature(200, 50, probs=nilm(0.2)),
                                           feature(350, 40, probs=nilm(0.4))]),
                "b": cells(tmp_path, "b", [feature(60, 60, probs=nilm(0.7))])}
    metrics, results = score_fields([a, b], cells_of)
    detection = metrics["detection"]
    assert detection["detection_recall"] == pytest.approx(3 / 5)
    assert detection["predicted_per_annotated"] == pytest.approx(4 / 5)
    assert detection["recall_per_class"] == {"NILM": pytest.approx(2 / 3), "LSIL": 1.0, "HSIL": 0.0}
    cell_scores = metrics["cells"]["nilm_vs_abnormal"]
    assert cell_scores["roc_auc"] == pytest.approx(roc_auc_score([0, 1, 0], [0.1, 0.8, 0.3]))
    assert cell_scores["sensitivity_at_90_specificity"] == pytest.approx(1.0)
    six = metrics["cells"]["bethesda"]["six_classes"]
    assert six["num_samples"] == 3 and six["accuracy"] == pytest.approx(1.0)  # NILM, LSIL, NILM all right
    fields = metrics["fields"]
    assert fields["fields"] == 2 and fields["abnormal_fields"] == 1
    assert results[0].field_score() == pytest.approx(0.8) and results[1].field_score() == pytest.approx(0.3)
    assert fields["field_auc"] == pytest.approx(1.0) and fields["top10_hit_rate"] == pytest.approx(1.0)
    assert json.loads(json.dumps(metrics)) == metrics


def test_top_k_counts_only_the_most_suspicious_cells(tmp_path):
    # An abnormal point found by a cell scored 0.5, under ten false cells scored 0.9: not in the top 10
    a = field("a", [[50, 50]], ["ASC-H"])
    false_cells = [feature(100 + 25 * k, 200, probs=nilm(0.1)) for k in range(10)]
    metrics, results = score_fields([a], {"a": cells(tmp_path, "a", [feature(50, 50, probs=nilm(0.5)), *false_cells])})
    assert not results[0].top_k_hit() and results[0].top_k_hit(k=11)
    assert metrics["fields"]["top10_hit_rate"] == 0.0 and metrics["fields"]["field_auc"] is None  # no normal field


def test_unclassified_cells_are_scored_for_detection_only(tmp_path):
    a = field("a", [[50, 50]], ["LSIL"])
    metrics, _ = score_fields([a], {"a": cells(tmp_path, "a", [feature(50, 50)])})
    assert metrics["detection"]["detection_recall"] == 1.0 and metrics["cells"] == {} and metrics["fields"] == {}


def test_slide_cells_are_moved_back_into_their_fields(tmp_path):
    image_a, image_b = tmp_path / "a.png", tmp_path / "b.png"
    a = FieldPoints("a", image_a, "1", ("1",), np.array([[50, 50]], np.float32), ("LSIL",), (400, 300))
    b = FieldPoints("b", image_b, "2", ("2",), np.array([[10, 20]], np.float32), ("NILM",), (400, 300))
    manifest = {"fields": [{"image": str(image_a), "x": 1000, "y": 2000, "width": 400, "height": 300},
                           {"image": str(image_b), "x": 3000, "y": 0, "width": 400, "height": 300}]}
    slide_cells = cells(tmp_path, "slide", [feature(1050, 2050, probs=nilm(0.3)), feature(3010, 20, probs=nilm(0.9)),
                                            feature(500, 500, probs=nilm(0.5))])  # the last lies on glass, in no field
    cells_of = cells_on_slide_fields(slide_cells, manifest, [a, b])
    assert cells_of["a"].centres.tolist() == [[50, 50]] and cells_of["b"].centres.tolist() == [[10, 20]]
    metrics, _ = score_fields([a, b], cells_of)
    assert metrics["detection"]["detection_recall"] == 1.0 and metrics["detection"]["predicted_cells"] == 2


def test_a_field_without_predicted_cells_scores_zero_and_misses(tmp_path):
    a = field("a", [[50, 50]], ["HSIL"])
    b = field("b", [[50, 50]], ["NILM"])
    c = field("c", [[50, 50]], ["LSIL"])
    cells_of = {"a": cells(tmp_path, "a", []), "b": cells(tmp_path, "b", [feature(50, 50, probs=nilm(0.6))]),
                "c": cells(tmp_path, "c", [feature(50, 50, probs=nilm(0.1))])}
    metrics, results = score_fields([a, b, c], cells_of)
    assert results[0].field_score() == 0.0 and not results[0].top_k_hit()
    # abnormal fields score 0 (a) and 0.9 (c), the normal one 0.4: 1 of 2 pairs ordered
    assert metrics["fields"]["field_auc"] == pytest.approx(0.5) and metrics["fields"]["top10_hit_rate"] == pytest.approx(0.5)
