"""tools/review/app.py through Flask's test client: every endpoint on a genuine predict.py --fields output, and
every bad request answered with its status and one line, nothing written."""
import json
import re

import pytest
from review_fixtures import GALLERY, screened_output

from tools.review.app import create_app
from utils.errors import UserError


@pytest.fixture(scope="module")
def output(demo_root, tmp_path_factory):
    return screened_output(demo_root, tmp_path_factory.mktemp("review_app"))


@pytest.fixture
def client(output):
    for path in output.glob("*_review.csv"):
        path.unlink()  # each test starts unreviewed
    app = create_app(output)
    yield app.test_client()
    app.config["station"].flush()


def one_line(response, status: int) -> str:
    text = response.get_data(as_text=True)
    assert response.status_code == status and response.mimetype == "text/plain", text
    assert text.count("\n") == 1 and text.startswith(f"{status} "), text
    return text


def test_the_index_lists_every_input_with_its_call_rate_and_progress(client, output):
    page = client.get("/").get_data(as_text=True)
    summary = json.loads((output / "slide_summary.json").read_text())
    row = re.search(r"<tr data-name=\"slide\">(.*?)</tr>", page, re.S).group(1)
    assert f">{summary['call']}<" in row and f"<td>{summary['abnormal_per_1000']}</td>" in row
    assert f'<td class="progress">0 / {GALLERY}</td>' in row
    assert 'data-name="field"' in page
    first = summary["most_suspicious"][0]["id"]
    client.post("/api/slide/decision", json={"cell": first, "decision": "accept"})
    page = client.get("/").get_data(as_text=True)
    assert f'<td class="progress">1 / {GALLERY}</td>' in re.search(r"<tr data-name=\"slide\">(.*?)</tr>", page, re.S).group(1)


def test_info_gives_classes_gallery_in_review_order_and_both_calls(client, output):
    info = client.get("/api/slide/info").get_json()
    summary = json.loads((output / "slide_summary.json").read_text())
    assert info["classes"] == list(summary["counts"]) and set(info["colours"]) == set(info["classes"]) | {"rejected"}
    assert [c["id"] for c in info["gallery"]] == [c["id"] for c in summary["most_suspicious"]]
    review = client.get("/api/slide/review").get_json()
    assert info["model"]["call"] == summary["call"] and review["reviewed"]["counts"] == summary["counts"]
    assert review["reviewed"]["call"] == summary["call"] and review["decisions"] == {}
    assert info["dzi"]["width"] == info["dzi"]["height"] == 2048 and info["dzi"]["levels"] == 12
    assert client.get("/slide/slide").status_code == 200


def test_dzi_and_tiles_are_served_and_tiles_out_of_range_are_404(client):
    import cv2
    import numpy as np

    assert b'Width="2048"' in client.get("/api/slide.dzi").data
    top = client.get("/api/slide/tiles/11/0_0.jpeg")
    assert top.status_code == 200 and top.mimetype == "image/jpeg"
    tile = cv2.imdecode(np.frombuffer(top.data, np.uint8), cv2.IMREAD_COLOR)
    assert tile.shape == (255, 255, 3)  # 254 + the overlap on the right and bottom
    one_line(client.get("/api/slide/tiles/12/0_0.jpeg"), 404)
    one_line(client.get("/api/slide/tiles/11/9_0.jpeg"), 404)


def test_cells_in_view_are_outlines_dots_or_density_and_filtered(client):
    whole = "x0=0&y0=0&x1=2048&y1=2048"
    outlines = client.get(f"/api/slide/cells?{whole}&scale=0.5").get_json()
    assert outlines["mode"] == "outlines" and outlines["total"] == len(outlines["cells"]) > 10
    assert all(len(cell["ring"]) >= 4 for cell in outlines["cells"])
    dots = client.get(f"/api/slide/cells?{whole}&scale=0.01").get_json()
    assert dots["mode"] == "dots" and sorted(dots["id"]) == sorted(c["id"] for c in outlines["cells"])
    only_first = client.get(f"/api/slide/cells?{whole}&scale=0.01&classes=0").get_json()
    assert set(only_first["c"]) == {0} and 0 < only_first["total"] < dots["total"]
    sure = client.get(f"/api/slide/cells?{whole}&scale=0.01&min_p=0.9").get_json()
    assert 0 < sure["total"] < dots["total"]
    corner = client.get("/api/slide/cells?x0=0&y0=0&x1=10&y1=10&scale=1").get_json()
    assert corner["total"] == 0


def test_one_cell_gives_its_row_and_its_crop(client):
    cell = client.get("/api/slide/cell/3").get_json()
    assert cell["id"] == 3 and cell["values"]["id"] == "3" and "nc_ratio" in cell["values"] and cell["decision"] is None
    crop = client.get("/api/slide/crop/3.jpeg")
    assert crop.status_code == 200 and crop.data[:2] == b"\xff\xd8"


def test_decisions_change_the_reviewed_counts_and_call_and_are_on_disk_at_once(client, output):
    info = client.get("/api/slide/info").get_json()
    info.update(client.get("/api/slide/review").get_json())
    abnormal, normal = info["classes"]
    flagged = [c["id"] for c in info["gallery"]]
    response = client.post("/api/slide/decision", json={"cell": flagged[0], "decision": "relabel", "class": normal})
    reviewed = response.get_json()["reviewed"]
    assert reviewed["counts"][normal] == info["reviewed"]["counts"][normal] + 1
    assert reviewed["abnormal_cells"] == info["reviewed"]["abnormal_cells"] - 1
    assert f",{flagged[0]},relabel,{normal},{abnormal}" in (output / "slide_review.csv").read_text()
    reviewed = client.post("/api/slide/decision", json={"cell": flagged[1], "decision": "reject"}).get_json()["reviewed"]
    assert reviewed["cells"] == info["reviewed"]["cells"] - 1 and reviewed["rejected"] == 1
    reviewed = client.post("/api/slide/decision", json={"cell": flagged[1], "decision": "clear"}).get_json()["reviewed"]
    assert reviewed["cells"] == info["reviewed"]["cells"] and reviewed["reviewed"] == 1
    assert client.get(f"/api/slide/cell/{flagged[0]}").get_json()["decision"] == {"decision": "relabel", "class": normal}
    assert client.get("/api/slide/review").get_json()["decisions"] == {str(flagged[0]): {"decision": "relabel", "class": normal}}


def test_every_cell_rejected_leaves_the_slide_unsatisfactory(client):
    info = client.get("/api/field/info").get_json()
    count = info["cells"]
    for cell_id in range(1, count + 1):
        reviewed = client.post("/api/field/decision", json={"cell": cell_id, "decision": "reject"}).get_json()["reviewed"]
    assert reviewed["cells"] == 0 and reviewed["call"] == "unsatisfactory" and reviewed["rejected"] == count


def test_the_geojson_follows_the_decisions_for_qupath(client, output):
    client.post("/api/slide/decision", json={"cell": 2, "decision": "relabel", "class": "normal_cells"})
    client.post("/api/slide/decision", json={"cell": 4, "decision": "reject"})
    client.application.config["station"].flush()
    features = json.loads((output / "slide.geojson").read_text())["features"]
    assert features[1]["properties"]["classification"]["name"] == "normal_cells"
    metadata = features[1]["properties"]["metadata"]
    assert metadata == {"review": "relabel", "model_class": metadata["model_class"]}
    assert features[3]["properties"]["classification"]["name"] == "rejected"
    client.post("/api/slide/decision", json={"cell": 2, "decision": "clear"})
    client.application.config["station"].flush()
    features = json.loads((output / "slide.geojson").read_text())["features"]
    assert "metadata" not in features[1]["properties"]  # undone: the model's class again
    rows = (output / "slide_cells.csv").read_text().splitlines()
    assert features[1]["properties"]["classification"]["name"] == rows[2].split(",")[8]


@pytest.mark.parametrize("url, status", [
    ("/slide/nowhere", 404), ("/api/nowhere/info", 404), ("/api/nowhere/review", 404), ("/api/nowhere.dzi", 404),
    ("/api/slide/cell/99999", 404), ("/api/slide/crop/0.jpeg", 404),
    ("/api/slide/cells?x0=0&y0=0&x1=a&y1=5", 400), ("/api/slide/cells?x0=5&y0=0&x1=1&y1=5", 400),
    ("/api/slide/cells?x0=0&y0=0&x1=5&y1=5&classes=7", 400), ("/files/../slide.tiff", 404),
    ("/files/%2e%2e/slide.tiff", 404), ("/files/..%2fslide.tiff", 404), ("/files//etc/passwd", 404),
    ("/static/../review.py", 404), ("/files/slide_cells.csv.bak", 404),
])
def test_bad_requests_are_one_line(client, url, status):
    one_line(client.get(url), status)


@pytest.mark.parametrize("body", [
    {"cell": 1, "decision": "maybe"}, {"cell": 1, "decision": "relabel", "class": "nonsense"},
    {"cell": 1, "decision": "relabel"}, {"cell": "1", "decision": "accept"}, {"decision": "accept"}, [1, 2], "accept",
])
def test_malformed_decisions_are_400_and_write_nothing(client, output, body):
    one_line(client.post("/api/slide/decision", json=body), 400)
    assert not (output / "slide_review.csv").exists()


def test_unknown_cells_and_inputs_write_nothing(client, output):
    one_line(client.post("/api/slide/decision", json={"cell": 99999, "decision": "accept"}), 404)
    one_line(client.post("/api/nowhere/decision", json={"cell": 1, "decision": "accept"}), 404)
    assert not list(output.glob("*_review.csv"))


def test_output_files_named_by_the_summaries_are_served(client, output):
    assert client.get("/files/slide_report.html").status_code == 200
    assert client.get("/files/slide_cells.csv").data == (output / "slide_cells.csv").read_bytes()


def test_a_folder_without_screened_inputs_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no screened input found"):
        create_app(tmp_path)


def test_two_tabs_deciding_at_once_lose_no_decision(client, output):
    """Two clients (tabs) post decisions on one slide from two threads at once: every one is in the file."""
    import threading

    count = client.get("/api/slide/info").get_json()["cells"]
    ids = list(range(1, count + 1))

    def tab(cells, decision):
        own = client.application.test_client()
        for cell_id in cells:
            assert own.post("/api/slide/decision", json={"cell": cell_id, "decision": decision}).status_code == 200

    tabs = [threading.Thread(target=tab, args=(ids[0::2], "accept")), threading.Thread(target=tab, args=(ids[1::2], "reject"))]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join()
    decisions = client.get("/api/slide/review").get_json()["decisions"]
    assert {int(k): v["decision"] for k, v in decisions.items()} == {i: "accept" if i % 2 else "reject" for i in ids}
    assert len((output / "slide_review.csv").read_text().splitlines()) == 1 + count
