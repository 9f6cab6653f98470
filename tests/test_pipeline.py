"""End to end on generated data: segment, export masks, classify on predicted masks, evaluate."""
import json

import cv2
import pytest

import evaluate
import main_classify
import main_segment
from tools.data_loader import read_records
from tools.demo_data import make_demo_dataset

# tiny but real: timm's test ConvNeXt, 64 px, a few epochs on ~45 cells
TINY = ["--backbone", "test_convnext", "--img-size", "64", "--workers", "0", "--device", "cpu", "--no-pretrained"]


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    data_root = make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", clusters_per_class=4, seed=1)
    run_dir = tmp_path_factory.mktemp("run")
    common = ["--data-root", str(data_root), "--output-dir", str(run_dir), *TINY]
    main_segment.main([*common, "--epochs", "10", "--batch-size", "4", "--lr", "3e-3", "--decoder-channels", "32", "16", "16"])
    main_classify.main([*common, "--epochs", "12", "--batch-size", "8", "--lr", "2e-3"])
    evaluate.main(["--data-root", str(data_root), "--output-dir", str(run_dir), "--device", "cpu", "--workers", "0"])
    return data_root, run_dir


def test_segmentation_learns(pipeline_run):
    _, run_dir = pipeline_run
    log = read_log(run_dir / "logs" / "segmentation" / "log.txt")
    assert len(log) == 10
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    assert max(entry["val_dice_cyt"] for entry in log) > 0.75


def test_masks_exported_for_every_cell_at_image_size(pipeline_run):
    data_root, run_dir = pipeline_run
    records, _ = read_records(data_root)
    for record in records:
        image = cv2.imread(str(record.image_path))
        for head in ("cyt", "nuc"):
            mask = cv2.imread(str(run_dir / "outputs" / "masks" / f"{record.sample_id}_{head}.png"), cv2.IMREAD_GRAYSCALE)
            assert mask is not None and mask.shape == image.shape[:2]
            assert set(mask.ravel()) <= {0, 255}


def test_classification_learns(pipeline_run):
    _, run_dir = pipeline_run
    log = read_log(run_dir / "logs" / "classification" / "log.txt")
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    assert max(entry["val_accuracy"] for entry in log) > 0.4  # 5 classes: chance is 0.2


def test_checkpoints_hold_what_resume_and_evaluation_need(pipeline_run):
    import torch

    _, run_dir = pipeline_run
    checkpoint = torch.load(run_dir / "checkpoints" / "classification_best.pth", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "epoch", "best_metric", "args", "class_names", "model_config"):
        assert key in checkpoint
    assert checkpoint["class_names"] == sorted(checkpoint["class_names"]) and len(checkpoint["class_names"]) == 5
    assert (run_dir / "checkpoints" / "segmentation_last.pth").exists()


def test_evaluation_writes_metrics_and_plots(pipeline_run):
    _, run_dir = pipeline_run
    eval_dir = run_dir / "outputs" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("dice_cyt", "dice_nuc", "iou_cyt", "iou_nuc", "pixel_acc_cyt", "pixel_acc_nuc"):
        assert 0.0 <= metrics["segmentation"][key] <= 1.0
    assert metrics["segmentation"]["dice_cyt"] > 0.6
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "per_class", "confusion_matrix", "class_names"):
        assert key in metrics["classification"]
    assert sum(map(sum, metrics["classification"]["confusion_matrix"])) == metrics["num_cells"]
    for name in ("confusion_matrix.png", "roc_curves.png", "overlays.png"):
        assert (eval_dir / name).stat().st_size > 1000


def test_evaluation_on_another_root_rejects_unknown_class(pipeline_run, tmp_path, capsys):
    data_root, run_dir = pipeline_run
    other = tmp_path / "other"
    (other / "im_Unknown").mkdir(parents=True)
    image = cv2.imread(str(next(data_root.glob("im_Parabasal/im_Parabasal/CROPPED/*.bmp"))))
    cv2.imwrite(str(other / "im_Unknown" / "cell.png"), image)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--data-root", str(other), "--split", "all", "--output-dir", str(run_dir), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "im_Unknown" in capsys.readouterr().err


def test_cric_cells_train_and_evaluate_in_bethesda_classes(tmp_path):
    """--layout cric: windows at the points, masks from another run's stage 1, metrics in Bethesda's classes."""
    from cric_data import grid_fields, make_cric_root
    from tiny_checkpoints import save_untrained_segmentation

    data_root = make_cric_root(tmp_path / "cric", grid_fields(12))
    seg = save_untrained_segmentation(tmp_path / "other_run" / "segmentation_best.pth")
    common = ["--data-root", str(data_root), "--layout", "cric", "--run-dir", str(tmp_path / "run"), "--seg-checkpoint", str(seg)]
    main_classify.main([*common, *TINY, "--epochs", "1", "--batch-size", "8", "--no-measurement-model"])
    evaluate.main([*common, "--device", "cpu", "--workers", "0", "--backend", "torch"])
    manifest = json.loads(next((tmp_path / "run" / "splits").glob("cric-*.json")).read_text())
    splits_of_field = {}
    for sample in manifest["samples"]:
        splits_of_field.setdefault(sample["group"], set()).add(sample["split"])
    assert len(splits_of_field) == 12 and all(len(splits) == 1 for splits in splits_of_field.values())
    metrics = json.loads((tmp_path / "run" / "outputs" / "eval" / "metrics.json").read_text())
    assert metrics["classification"]["class_names"] == ["HSIL", "LSIL", "NILM"]
    assert metrics["classification"]["grade_order"] == ["NILM", "LSIL", "HSIL"]
    assert metrics["bethesda_grades"]["class_names"] == ["NILM", "low", "high"]
    assert set(metrics["normal_vs_abnormal"]) >= {"roc_auc", "sensitivity_at_90_specificity", "sensitivity_at_95_specificity"}
    assert (tmp_path / "run" / "outputs" / "masks" / "f00" / "1_cyt.png").is_file()  # <field>/<cell id>
