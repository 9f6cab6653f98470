"""benchmarks/gpu_check.py with a tiny model on CPU: both stages trained, evaluated and timed, both throughput runs tabled.

Data: the Herlev-like paired_root fixture (the layout the check runs on), which, unlike the 2-clusters-per-class
demo set, has a test split for evaluate.py to score (that set's 10 cluster images leave none aside).
"""
import json
import math

import pytest
import torch

from benchmarks import gpu_check

TINY = ["--backbone", "test_convnext", "--img-size", "64", "--batch-size", "4", "--epochs", "1", "--steps", "1",
        "--workers", "0", "--no-pretrained", "--decoder-channels", "16", "16", "16"]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_both_stages_and_both_throughput_runs_recorded(paired_root, tmp_path, capsys):
    out = tmp_path / "check"
    gpu_check.main(["--data-root", str(paired_root), "--output-dir", str(out), "--device", "cpu", *TINY])

    results = json.loads((out / "gpu_check.json").read_text())
    assert results["device"] == "cpu" and results["device_name"].startswith("CPU")
    assert results["torch"] == torch.__version__ and results["commit"]
    for step in ("segment", "classify", "evaluate", "throughput_default_flags", "throughput_flags_off", "total"):
        assert finite(results["seconds"][step]) and results["seconds"][step] > 0, step
    assert results["seconds"]["total"] >= sum(results["seconds"][s] for s in ("segment", "classify", "evaluate"))
    for stage in ("segmentation", "classification"):  # the flags given here reached the training scripts
        assert len(results["epoch_seconds"][stage]) == 1
        config = results["config"][stage]
        assert (config["backbone"], config["img_size"], config["batch_size"], config["epochs"]) == ("test_convnext", 64, 4, 1)
    for metric in ("dice_cyt", "dice_nuc", "accuracy", "macro_f1"):
        assert finite(results["metrics"][metric]) and 0 <= results["metrics"][metric] <= 1, metric

    for run in ("default_flags", "flags_off"):
        rows = results["throughput"][run]
        assert [row["model"] for row in rows] == ["segmentation", "classification"]
        for row in rows:
            assert (row["backbone"], row["img_size"], row["batch_size"], row["flags"]) == ("test_convnext", 64, 4, "fp32")
            assert finite(row["train_images_per_s"]) and row["train_images_per_s"] > 0
            assert finite(row["inference_images_per_s"]) and row["inference_images_per_s"] > 0

    markdown = (out / "gpu_check.md").read_text()
    assert markdown in capsys.readouterr().out  # printed as written
    table = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    assert [cells[0] for cells in table[1:4]] == ["| main_segment.py", "| main_classify.py", "| evaluate.py"]
    assert f"Dice cell {results['metrics']['dice_cyt']:.3f}" in markdown
    assert f"macro-F1 {results['metrics']['macro_f1']:.3f}" in markdown
    throughput_rows = [(cells[0], cells[1]) for cells in table if cells[0] in ("| segmentation", "| classification")]
    assert throughput_rows == [("| segmentation", "defaults"), ("| classification", "defaults"),
                               ("| segmentation", "all off"), ("| classification", "all off")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="says so only where there is no GPU")
def test_without_a_gpu_it_says_the_numbers_are_cpu_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:  # a missing data root stops it right after the device is chosen
        gpu_check.main(["--data-root", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "check")])
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert "No GPU found" in captured.out and "not GPU numbers" in captured.out
    assert "missing: no such folder" in captured.err
