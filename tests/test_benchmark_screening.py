"""benchmarks/screening.py: the run's split picks the fields, a predictions folder is read by its summary.json."""
import json

import pytest
from cric_data import make_cric_root

from benchmarks import screening
from tools.geojson import cell_feature, write_geojson
from tools.layouts.points import BETHESDA_CLASSES, read_field_points
from tools.run_dir import RunPaths
from utils.errors import UserError

CLASSES = sorted(BETHESDA_CLASSES)


@pytest.fixture
def cric_root(tmp_path):
    return make_cric_root(tmp_path / "cric")


def write_manifest(path, splits):
    """A cells manifest of the cric layout: samples <field>/<cell>, grouped by field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [{"id": f"{field}/{i}", "label": "NILM", "group": field, "split": split} for field, split in splits.items()
               for i in range(2)]
    path.write_text(json.dumps({"samples": samples}))


def nucleus_feature(x, y, p_nilm):
    probs = {f"prob_{name}": (p_nilm if name == "NILM" else (1 - p_nilm) / 5) for name in CLASSES}
    return cell_feature([[x - 15, y - 15], [x + 15, y - 15], [x + 15, y + 15], [x - 15, y + 15]],
                        [[x - 4, y - 4], [x + 4, y - 4], [x + 4, y + 4], [x - 4, y + 4]], measurements=probs)


def test_the_fields_of_the_runs_test_split(cric_root, tmp_path):
    run_dir = tmp_path / "run"
    write_manifest(RunPaths(run_dir).manifest(cric_root), {"a": "train", "b": "val", "c": "test", "d": "test"})
    args = screening.get_args(["--data-root", str(cric_root), "--run-dir", str(run_dir)])
    chosen = screening.fields_of_split(read_field_points(cric_root), screening.manifest_path(args), "test")
    assert [f.field_id for f in chosen] == ["c", "d"]


def test_a_manifest_of_another_root_or_none_is_refused(cric_root, tmp_path):
    args = screening.get_args(["--data-root", str(cric_root), "--run-dir", str(tmp_path / "run")])
    with pytest.raises(UserError, match="no split manifest of .* pass --split-file, or --split all"):
        screening.manifest_path(args)
    other = tmp_path / "other.json"
    write_manifest(other, {"a": "train", "x": "test"})
    with pytest.raises(UserError, match=r"field b \(3 in all\) is in no split"):
        screening.fields_of_split(read_field_points(cric_root), other, "test")


def test_scores_a_predictions_folder_named_by_its_summary(cric_root, tmp_path, capsys):
    run_dir, predictions = tmp_path / "run", tmp_path / "predicted"
    write_manifest(RunPaths(run_dir).manifest(cric_root), {"a": "train", "b": "train", "c": "test", "d": "test"})
    predictions.mkdir()
    # c: HSIL (60, 70), SCC (150, 40), ASC-US (100, 120); d: NILM (80, 60), ASC-H (130, 30). Outputs under other names
    write_geojson(predictions / "field_c.geojson", [nucleus_feature(60, 70, 0.1), nucleus_feature(150, 42, 0.3)])
    write_geojson(predictions / "field_d.geojson", [nucleus_feature(80, 60, 0.95), nucleus_feature(130, 30, 0.2),
                                                     nucleus_feature(20, 100, 0.6)])
    (predictions / "summary.json").write_text(json.dumps({"fields": {
        "field_c": {"input": str(cric_root / "c.jpg")}, "field_d": {"input": str(cric_root / "d.png")}}}))
    output = tmp_path / "screening.json"
    screening.main(["--data-root", str(cric_root), "--run-dir", str(run_dir), "--predictions", str(predictions),
                    "--no-slide", "--output-json", str(output)])
    results = json.loads(output.read_text())["fields_alone"]
    assert results["detection"]["detection_recall"] == pytest.approx(4 / 5)
    assert results["detection"]["predicted_per_annotated"] == pytest.approx(5 / 5)
    assert results["cells"]["nilm_vs_abnormal"]["roc_auc"] == pytest.approx(1.0)  # NILM 0.05 below every abnormal one
    assert results["fields"]["top10_hit_rate"] == pytest.approx(1.0)
    assert "| fields alone | 5 | 0.8 | 1.0 |" in capsys.readouterr().out


def test_a_missing_prediction_is_named(cric_root, tmp_path):
    with pytest.raises(UserError, match=r"no a.geojson for .*a.png \(4 fields missing\)"):
        screening.predicted_cells(read_field_points(cric_root), tmp_path)


def test_the_slide_holds_every_field(cric_root):
    fields = read_field_points(cric_root)
    side = screening.slide_side(fields)
    assert side % 16 == 0 and side >= 2 * (200 + 64)  # 4 fields: a 2 x 2 grid of the largest field and its gap


def test_a_field_models_manifest_of_other_splits_is_said(cric_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_manifest(RunPaths(run_dir).manifest(cric_root), {"a": "train", "b": "val", "c": "test", "d": "test"})
    write_manifest(RunPaths(run_dir).manifest(cric_root, "fields"), {"a": "test", "b": "val", "c": "test", "d": "train"})
    args = screening.get_args(["--data-root", str(cric_root), "--run-dir", str(run_dir)])
    fields = read_field_points(cric_root)
    screening.check_models_agree(args, fields, screening.fields_of_split(fields, screening.manifest_path(args), "test"))
    assert "puts 1 of these 2 test fields in another split (e.g. d)" in capsys.readouterr().out
