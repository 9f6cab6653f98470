"""benchmarks/onnx_steps.py: one flip per call computes what the batched call does, and every step runs on a tiny run."""
import argparse

import numpy as np
from tiny_checkpoints import save_untrained_classification, save_untrained_segmentation

from benchmarks import onnx_steps
from tools.layouts.cells import read_records
from tools.run_dir import RunPaths
from tools.splits import load_split


def test_one_call_per_view_returns_the_stacked_call():
    def backend(cells, measurements):  # depends on each row and on the batch's size
        return cells.sum(axis=(2, 3)) * len(cells) + measurements[:, :2]

    cells, measurements = np.arange(6 * 2 * 2 * 2, dtype=np.float32).reshape(6, 2, 2, 2), np.ones((6, 3), np.float32)
    per_view = onnx_steps.ViewPerCall(backend, 3)(cells, measurements)
    stacked = np.concatenate([backend(cells[i:i + 2], measurements[i:i + 2]) for i in (0, 2, 4)])
    np.testing.assert_array_equal(per_view, stacked)


def test_every_step_runs_and_float_steps_agree(paired_root, tmp_path):
    run_dir = tmp_path / "run"
    save_untrained_segmentation(run_dir / "checkpoints" / "segmentation_best.pth", img_size=32)
    save_untrained_classification(run_dir / "checkpoints" / "classification_best.pth", ["abnormal", "normal"], img_size=32)
    records, layout = read_records(paired_root)
    load_split(records, RunPaths(run_dir).manifest(paired_root), paired_root, layout)
    args = argparse.Namespace(run_dir=run_dir, data_root=paired_root, repeats=1, batch_size=2, calibration_cells=4)
    rows = {row["step"]: row for row in onnx_steps.measure(args)}
    assert len(rows) == 9 and all(row["cells"] == 2 for row in rows.values())  # 1 test cell per class
    float32 = [row for name, row in rows.items() if "int8" not in name]
    assert {row["accuracy"] for row in float32} == {rows["PyTorch (eager)"]["accuracy"]}
    assert all(row["same_class"] == 1.0 and row["same_nucleus_pixels"] > 0.99 for row in float32)
    assert rows["PyTorch (eager)"]["speedup"] == 1.0
    assert "| ONNX 'all', int8 classifier |" in onnx_steps.markdown_table(list(rows.values()))
