"""Behaviour of tools/engine.py: seeding and the shared fit() loop (train, validate, checkpoint, log, resume)."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tools.checkpoint import RunState, load_checkpoint, save_checkpoint
from tools.data_loader import make_loader
from tools.engine import Task, TrainingDiverged, fit, seed_everything
from tools.optim import warmup_cosine
from utils.errors import UserError

CPU = torch.device("cpu")


# ---------------------------------------------------------------- seeding

def test_seed_everything_makes_draws_repeatable():
    seed_everything(11)
    first = (torch.randn(5), np.random.rand(3))
    seed_everything(11)
    second = (torch.randn(5), np.random.rand(3))
    seed_everything(12)
    other = torch.randn(5)
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not torch.equal(first[0], other)


# ---------------------------------------------------------------- fit()

class AccuracyMeter:
    def __init__(self):
        self.correct, self.seen = 0, 0

    def update(self, outputs, targets):
        self.correct += int((outputs.argmax(1) == targets).sum())
        self.seen += len(targets)

    def compute(self):
        return {"accuracy": self.correct / max(self.seen, 1)}


def toy_data(n, seed):
    """Two Gaussian blobs far apart: linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centres = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    return TensorDataset(centres[labels] + 0.5 * torch.randn(n, 2, generator=generator), labels)


def setup_run(tmp_path, epochs_planned=8, loss=F.cross_entropy):
    seed_everything(0)
    model = torch.nn.Linear(2, 2)
    train = make_loader(toy_data(64, 1), 16, True, 0, CPU, 0)
    val = make_loader(toy_data(32, 2), 16, False, 0, CPU, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, epochs_planned * len(train), len(train))
    task = Task("toy", loss, AccuracyMeter, monitor="accuracy")
    run = RunState("toy", {"lr": 0.1, "path": Path("x")}, {"in_features": 2})
    return dict(model=model, task=task, train_loader=train, val_loader=val, optimizer=optimizer,
                scheduler=scheduler, device=CPU, run=run, checkpoint_dir=tmp_path / "checkpoints",
                log_dir=tmp_path / "logs")


def log_lines(tmp_path):
    return [json.loads(line) for line in (tmp_path / "logs" / "log.txt").read_text().splitlines()]


def test_fit_learns_logs_and_checkpoints(tmp_path):
    parts = setup_run(tmp_path)
    best = fit(**parts, epochs=4)
    assert best["accuracy"] > 0.9 and 1 <= best["epoch"] <= 4
    lines = log_lines(tmp_path)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert {"train_loss", "train_lr", "val_loss", "val_accuracy", "seconds"} <= set(lines[0])
    assert lines[-1]["val_accuracy"] > 0.9 and lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert json.loads((tmp_path / "logs" / "args.json").read_text()) == {"lr": 0.1, "path": "x"}
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))  # TensorBoard scalars
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["toy_best.pth", "toy_last.pth"]
    last, best_ckpt = load_checkpoint(checkpoints / "toy_last.pth", "toy"), load_checkpoint(checkpoints / "toy_best.pth", "toy")
    assert last["epoch"] == 4 and best_ckpt["epoch"] == best["epoch"]
    assert last["monitor"] == "accuracy" and last["model_config"] == {"in_features": 2}
    assert last["best_metric"] == pytest.approx(best["accuracy"])
    for name, value in parts["model"].state_dict().items():
        assert torch.equal(last["model"][name], value)


def test_fit_with_keep_final_keeps_the_last_epoch_as_best(tmp_path, capsys):
    parts = setup_run(tmp_path)
    parts["task"] = dataclasses.replace(parts["task"], keep_final=True)
    inputs, labels = toy_data(32, 2).tensors
    parts["val_loader"] = make_loader(TensorDataset(inputs, 1 - labels), 16, False, 0, CPU, 0)  # learning worsens it
    kept = fit(**parts, epochs=3)
    scores = [line["val_accuracy"] for line in log_lines(tmp_path)]
    assert scores[-1] <= scores[0]  # so the best-scoring epoch would be the first
    assert kept["epoch"] == 3 and kept["accuracy"] == pytest.approx(scores[-1])
    best_ckpt = load_checkpoint(tmp_path / "checkpoints" / "toy_best.pth", "toy")
    assert best_ckpt["epoch"] == 3
    for name, value in parts["model"].state_dict().items():
        assert torch.equal(best_ckpt["model"][name], value)
    assert "(best)" not in capsys.readouterr().out


def test_fit_resumes_at_the_next_epoch(tmp_path, capsys):
    fit(**setup_run(tmp_path), epochs=3)
    last = tmp_path / "checkpoints" / "toy_last.pth"
    saved = load_checkpoint(last, "toy")
    steps_done = saved["scheduler"]["last_epoch"]
    assert steps_done == 3 * 4

    parts = setup_run(tmp_path)  # a fresh process: new model, optimizer, scheduler
    best = fit(**parts, epochs=5, resume=last)
    assert "at epoch 4" in capsys.readouterr().out
    assert [line["epoch"] for line in log_lines(tmp_path)] == [1, 2, 3, 4, 5]
    resumed = load_checkpoint(last, "toy")
    assert resumed["epoch"] == 5
    assert resumed["scheduler"]["last_epoch"] == steps_done + 2 * 4  # the schedule continued, not restarted
    assert best["accuracy"] >= saved["best_metric"]

    # nothing left to do: resuming with as many epochs as done trains nothing
    fit(**setup_run(tmp_path), epochs=5, resume=last)
    assert len(log_lines(tmp_path)) == 5


def test_fit_with_ema_scores_and_saves_the_average_and_resumes_from_the_raw_weights(tmp_path):
    parts = setup_run(tmp_path)
    fit(**parts, epochs=2, ema_decay=0.9)
    last = load_checkpoint(tmp_path / "checkpoints" / "toy_last.pth", "toy")
    for name, value in parts["model"].state_dict().items():
        assert torch.equal(last["raw_model"][name], value)  # what training goes on from
        assert not torch.equal(last["model"][name], value)  # what was validated: the average
    resumed = setup_run(tmp_path)
    fit(**resumed, epochs=3, ema_decay=0.9, resume=tmp_path / "checkpoints" / "toy_last.pth")
    assert load_checkpoint(tmp_path / "checkpoints" / "toy_last.pth", "toy")["epoch"] == 3
    assert [line["epoch"] for line in log_lines(tmp_path)] == [1, 2, 3]


def test_fit_resume_refuses_another_stage(tmp_path):
    save_checkpoint(tmp_path / "other.pth", {"stage": "segmentation"})
    with pytest.raises(UserError, match="expected toy"):
        fit(**setup_run(tmp_path), epochs=2, resume=tmp_path / "other.pth")


def test_nan_loss_raises_training_diverged_naming_epoch_and_step(tmp_path):
    calls = {"train": 0}

    def loss(outputs, targets):
        value = F.cross_entropy(outputs, targets)
        if torch.is_grad_enabled():  # training steps only (validation runs under no_grad)
            calls["train"] += 1
            if calls["train"] == 4 + 3:  # epoch 2 (4 batches per epoch), step 2
                return value * float("nan")
        return value

    with pytest.raises(TrainingDiverged, match=r"toy: loss became nan at epoch 2, step 2") as error:
        fit(**setup_run(tmp_path, loss=loss), epochs=3)
    assert isinstance(error.value, UserError)  # scripts print it as one line
    # the last good checkpoint is kept: epoch 1
    assert load_checkpoint(tmp_path / "checkpoints" / "toy_last.pth", "toy")["epoch"] == 1
    assert [line["epoch"] for line in log_lines(tmp_path)] == [1]


def test_infinite_loss_also_diverges(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss became inf at epoch 1, step 0"):
        fit(**setup_run(tmp_path, loss=lambda o, t: F.cross_entropy(o, t) * math.inf), epochs=1)
