"""tools/distributed.py and the engine under torchrun: two CPU processes (gloo) against one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_toy
import pytest
import torch

from tools import distributed
from tools.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def torchrun(*script_args, nproc=2, timeout=300):
    """Run a script under torchrun on this machine; returns the finished process (output captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, script_args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("pad, rank_of_two, expected", [
    (True, 0, [0, 2, 4]), (True, 1, [1, 3, 0]),  # padded with the head: both ranks take 3 steps
    (False, 0, [0, 2, 4]), (False, 1, [1, 3]),   # evaluation: every item exactly once
])
def test_shard_deals_items_round_robin(monkeypatch, pad, rank_of_two, expected):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: rank_of_two)
    assert distributed.shard([0, 1, 2, 3, 4], pad=pad) == expected


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.is_main_process()
    assert distributed.sum_across_ranks(1.5, 2.0) == (1.5, 2.0)
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.shard([3, 1, 2], pad=True) == [3, 1, 2]


def test_two_ranks_match_one_process_with_twice_the_batch(tmp_path):
    finished = torchrun("tests/distributed_toy.py", tmp_path / "ddp", 4)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.done")) == ["rank0-of-2.done", "rank1-of-2.done"]
    assert finished.stdout.count("toy epoch 3/3") == 1  # rank 0 speaks for both

    torch.set_num_threads(1)
    reference = distributed_toy.run(tmp_path / "single", 8)

    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "toy_last.pth", "toy")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "toy_last.pth", "toy")
    for name, weight in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=1e-5, atol=1e-6)
    assert ddp["scheduler"]["last_epoch"] == single["scheduler"]["last_epoch"] == 3 * 4  # 32 cells / (2 x 4) per step
    ddp_log = [json.loads(line) for line in (tmp_path / "ddp" / "logs" / "log.txt").read_text().splitlines()]
    single_log = [json.loads(line) for line in (tmp_path / "single" / "logs" / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in ddp_log] == [1, 2, 3]  # rank 0 alone wrote the log
    for ddp_line, single_line in zip(ddp_log, single_log):
        assert ddp_line["val_cells"] == 13  # both ranks' shares merged, none scored twice
        assert ddp_line["val_accuracy"] == single_line["val_accuracy"]
        assert ddp_line["val_loss"] == pytest.approx(single_line["val_loss"], rel=1e-5)
        assert ddp_line["train_loss"] == pytest.approx(single_line["train_loss"], rel=1e-5)
    assert reference["accuracy"] > 0.6


TINY = ["--backbone", "test_convnext", "--img-size", "64", "--workers", "0", "--device", "cpu", "--no-pretrained",
        "--epochs", "2", "--batch-size", "2"]


def test_both_stages_run_under_torchrun(paired_root, tmp_path):
    common = ["--data-root", paired_root, "--output-dir", tmp_path, *TINY]
    segmented = torchrun("main_segment.py", *common, "--decoder-channels", "16", "16", "16", "--oof-folds", "0")
    assert segmented.returncode == 0, segmented.stderr[-3000:]
    classified = torchrun("main_classify.py", *common)
    assert classified.returncode == 0, classified.stderr[-3000:]

    for stage, finished in (("segmentation", segmented), ("classification", classified)):
        assert finished.stdout.count(f"{stage} epoch 2/2") == 1  # rank 0 alone speaks ...
        log = (tmp_path / "logs" / stage / "log.txt").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in log] == [1, 2]  # ... and logs
        assert load_checkpoint(tmp_path / "checkpoints" / f"{stage}_last.pth", stage)["epoch"] == 2
    masks = sorted((tmp_path / "outputs" / "masks").rglob("*.png"))
    assert len(masks) == 2 * 12  # cytoplasm + nucleus for each of the 12 cells, by rank 0
    assert "temperature" in load_checkpoint(tmp_path / "checkpoints" / "classification_best.pth", "classification")
