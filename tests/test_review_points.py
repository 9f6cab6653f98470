"""tools/review/points.py and main_classify.py --layout review: reviewed cells exported as CRIC-style points read
back as CellRecords with the reviewer's classes, and a relabelled cell changes the next model (tiny, real)."""
import csv
import json

import cv2
import pytest
import torch
from review_fixtures import screened_output
from tiny_checkpoints import save_untrained_segmentation

import main_classify
import review
from tools.layouts.cells import read_records
from tools.layouts.points import CSV_COLUMNS
from tools.review.app import create_app
from utils.errors import UserError

TINY = ["--backbone", "test_convnext", "--img-size", "64", "--workers", "0", "--device", "cpu", "--no-pretrained",
        "--deterministic", "--seed", "0", "--epochs", "2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def reviewed(demo_root, tmp_path_factory):
    """An output folder whose every cell is accepted, but for one rejected; and its app's test client."""
    out = screened_output(demo_root, tmp_path_factory.mktemp("review_points"))
    app = create_app(out)
    client = app.test_client()
    for name in ("slide", "field"):
        for cell_id in app.config["station"].get(name).index.ids.tolist():
            client.post(f"/api/{name}/decision", json={"cell": cell_id, "decision": "accept"})
    client.post("/api/slide/decision", json={"cell": 1, "decision": "reject"})
    return out, client


def export(out, folder):
    assert review.main([str(out), "--export-points", str(folder)]) == 0
    with open(folder / "classifications.csv", newline="") as table:
        return list(csv.DictReader(table))


def test_export_writes_cric_columns_and_a_picture_per_kept_cell(reviewed, tmp_path):
    out, client = reviewed
    rows = export(out, tmp_path / "points")
    assert tuple(rows[0])[:len(CSV_COLUMNS)] == CSV_COLUMNS
    cells = sum(client.get(f"/api/{name}/info").get_json()["cells"] for name in ("slide", "field"))
    assert len(rows) == cells - 1 and "slide_1" not in {row["image_id"] for row in rows}  # the rejected one is not
    row = next(r for r in rows if r["image_id"] == "slide_2")
    picture = cv2.imread(str(tmp_path / "points" / "images" / row["image_filename"]))
    assert picture is not None
    assert 0 < float(row["nucleus_x"]) < picture.shape[1] and 0 < float(row["nucleus_y"]) < picture.shape[0]
    records, layout = read_records(tmp_path / "points", "review")
    assert layout == "review" and len(records) == len(rows)
    assert {r.sample_id: r.label for r in records}["images/slide_2"] == row["bethesda_system"]
    assert not any(r.has_masks for r in records)  # stage 1 predicts them


def test_a_data_root_without_points_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no classifications.csv"):
        read_records(tmp_path, "review")


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "classification_last.pth", map_location="cpu", weights_only=False)["model"]


def train(points, run_dir, segmentation, split_file=None, init_from=None):
    flags = ["--split-file", str(split_file)] if split_file else []
    flags += ["--init-from", str(init_from)] if init_from else []
    main_classify.main(["--data-root", str(points), "--layout", "review", "--run-dir", str(run_dir),
                        "--seg-checkpoint", str(segmentation), *TINY, *flags])
    return weights(run_dir)


def test_a_relabelled_cell_changes_the_next_model(reviewed, tmp_path, capsys):
    out, client = reviewed
    segmentation = save_untrained_segmentation(tmp_path / "segmentation.pth")
    before = export(out, tmp_path / "before")
    first = train(tmp_path / "before", tmp_path / "run_before", segmentation)
    manifest = next((tmp_path / "run_before" / "splits").glob("*.json"))
    in_train = {s["id"] for s in json.loads(manifest.read_text())["samples"] if s["split"] == "train"}
    again = train(tmp_path / "before", tmp_path / "run_again", segmentation, manifest)
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same points: the same model, to the bit
    # relabel a training cell the model learnt as abnormal_cells to normal_cells (the same split: only the label differs)
    labels = {row["image_id"]: row["bethesda_system"] for row in before}
    candidates = [i for i in labels if labels[i] == "abnormal_cells" and f"images/{i}" in in_train]
    name, cell_id = candidates[0].rsplit("_", 1)
    client.post(f"/api/{name}/decision", json={"cell": int(cell_id), "decision": "relabel", "class": "normal_cells"})
    after = export(out, tmp_path / "after")
    assert {row["image_id"]: row["bethesda_system"] for row in after}[candidates[0]] == "normal_cells"
    changed = train(tmp_path / "after", tmp_path / "run_after", segmentation, manifest)
    assert any(not torch.equal(first[k], changed[k]) for k in first)
    # the run fine-tuned on the corrections (main_classify.py --init-from) starts from the first model, not ImageNet's
    capsys.readouterr()
    tuned = train(tmp_path / "after", tmp_path / "run_tuned", segmentation, manifest,
                  init_from=tmp_path / "run_before" / "checkpoints" / "classification_last.pth")
    assert "fine-tuned from" in capsys.readouterr().out
    assert any(not torch.equal(changed[k], tuned[k]) for k in first)
