"""tools/review/decisions.py and qupath.py: decisions appended by two processes at once are all kept, a line cut
by a kill is skipped, the last decision of a cell wins, the reviewed call follows tools/fields/summary.py's rule,
and a server killed before the GeoJSON caught up brings it up to date when it starts again."""
import json
import multiprocessing

import numpy as np
import pytest
from review_fixtures import screened_output

from tools.fields.summary import CallRule
from tools.review.decisions import DecisionError, DecisionLog, check_decision, reviewed_classes, reviewed_summary

CLASSES = ["abnormal_cells", "normal_cells"]


def append_many(path, first: int, count: int) -> None:
    log = DecisionLog(path)
    for cell_id in range(first, first + count):
        log.append(cell_id, "relabel", "normal_cells", "abnormal_cells")


def test_two_processes_deciding_at_once_lose_nothing(tmp_path):
    path = tmp_path / "slide_review.csv"
    workers = [multiprocessing.get_context("fork").Process(target=append_many, args=(path, first, 150)) for first in (1, 1001)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    decisions = DecisionLog(path).decisions()
    assert sorted(decisions) == [*range(1, 151), *range(1001, 1151)]
    lines = path.read_text().splitlines()
    assert lines[0] == "time,cell_id,decision,class,model_class" and len(lines) == 301


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_starts_afresh(tmp_path):
    path = tmp_path / "slide_review.csv"
    log = DecisionLog(path)
    log.append(1, "accept", "abnormal_cells", "abnormal_cells")
    with open(path, "a") as file:
        file.write("2026-01-01T00:00:00Z,2,relab")  # the kill
    assert DecisionLog(path).decisions() == {1: ("accept", "abnormal_cells")}
    log.append(3, "reject", "", "abnormal_cells")
    assert DecisionLog(path).decisions() == {1: ("accept", "abnormal_cells"), 3: ("reject", "")}


def test_the_last_decision_wins_and_clear_takes_it_back(tmp_path):
    log = DecisionLog(tmp_path / "r.csv")
    log.append(5, "accept", "abnormal_cells", "abnormal_cells")
    assert log.decisions() == {5: ("accept", "abnormal_cells")}  # read incrementally: the same object reads on
    log.append(5, "relabel", "normal_cells", "abnormal_cells")
    log.append(6, "reject", "", "normal_cells")
    log.append(6, "clear", "", "normal_cells")
    assert log.decisions() == {5: ("relabel", "normal_cells")}


@pytest.mark.parametrize("decision, class_name", [("maybe", None), ("relabel", None), ("relabel", "other"), ("", None)])
def test_bad_decisions_are_refused(decision, class_name):
    with pytest.raises(DecisionError):
        check_decision(decision, class_name, CLASSES)


def test_reviewed_counts_and_call_follow_the_summary_rule():
    model_class = np.array([0, 0, 1, 1, 1, 1], np.int16)
    abnormal_probability = np.array([0.9, 0.6, 0.2, 0.1, 0.55, 0.0])
    rows = {i + 1: i for i in range(6)}
    rule = CallRule(abnormal_probability=0.5, abnormal_per_1000=300, min_cells=3)
    final, codes = reviewed_classes(model_class, rows, {}, CLASSES)
    unreviewed = reviewed_summary(final, codes, abnormal_probability, CLASSES, rule)
    assert unreviewed["abnormal_cells"] == 3 and unreviewed["call"] == "abnormal"  # 3 of 6 >= 300 per 1000
    decisions = {1: ("reject", ""), 2: ("relabel", "normal_cells"), 5: ("accept", "normal_cells")}
    final, codes = reviewed_classes(model_class, rows, decisions, CLASSES)
    reviewed = reviewed_summary(final, codes, abnormal_probability, CLASSES, rule)
    assert reviewed["cells"] == 5 and reviewed["counts"] == {"abnormal_cells": 0, "normal_cells": 5}
    assert reviewed["abnormal_cells"] == 0 and reviewed["call"] == "NILM" and reviewed["rejected"] == 1
    decisions.update({3: ("reject", ""), 4: ("reject", ""), 6: ("reject", "")})
    final, codes = reviewed_classes(model_class, rows, decisions, CLASSES)
    assert reviewed_summary(final, codes, abnormal_probability, CLASSES, rule)["call"] == "unsatisfactory"


def test_a_server_killed_before_the_geojson_caught_up_updates_it_when_it_starts(demo_root, tmp_path):
    from tools.review import qupath
    from tools.review.app import create_app

    out = screened_output(demo_root, tmp_path)
    before = (out / "slide.geojson").read_bytes()
    app = create_app(out)
    app.config["station"].get("slide").follower.write_now = lambda: None  # killed before it wrote
    app.test_client().post("/api/slide/decision", json={"cell": 7, "decision": "relabel", "class": "normal_cells"})
    assert (out / "slide.geojson").read_bytes() == before and ",7,relabel,normal_cells," in (out / "slide_review.csv").read_text()
    again = create_app(out)
    again.test_client().get("/api/slide/info")  # the input opens: its decisions reach the GeoJSON
    again.config["station"].flush()
    text = (out / "slide.geojson").read_text()
    feature = json.loads(text)["features"][6]
    colour = list(qupath.class_colours(CLASSES)["normal_cells"])
    assert feature["properties"]["classification"] == {"name": "normal_cells", "color": colour}
    assert text.count("\n") == before.decode().count("\n")  # still one feature per line
