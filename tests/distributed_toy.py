"""A toy run of the shared engine, started either by torchrun (one process per rank) or in-process.

    torchrun --standalone --nproc_per_node=2 tests/distributed_toy.py OUT_DIR PER_RANK_BATCH

tests/test_distributed.py compares two ranks with batch b to one process with batch 2b: DDP averages
the ranks' gradients, so both runs must end with the same weights and the same validation metrics.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script by torchrun

from tools import distributed  # noqa: E402
from tools.checkpoint import RunState  # noqa: E402
from tools.data_loader import make_loader  # noqa: E402
from tools.engine import Task, fit, seed_everything  # noqa: E402
from tools.optim import adamw, warmup_cosine  # noqa: E402


class Blobs(torch.utils.data.Dataset):
    """Two Gaussian blobs; items are requested as (index, seed) like the real datasets."""

    takes_sample_seeds = True

    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 2
        self.points = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])[self.labels] + torch.randn(count, 2, generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        index, _ = item
        return self.points[index], self.labels[index]


class LossAndAccuracyMeter:
    def __init__(self):
        self.correct, self.seen, self.ids = 0, 0, []

    def update(self, outputs, targets):
        self.correct += int((outputs.argmax(1) == targets).sum())
        self.seen += len(targets)

    def merge(self, other):
        self.correct += other.correct
        self.seen += other.seen

    def compute(self):
        return {"accuracy": self.correct / self.seen, "cells": self.seen}


def run(out_dir: Path, batch_size: int, epochs: int = 3):
    device = distributed.setup(torch.device("cpu"))
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    train_loader = make_loader(Blobs(32, 1), batch_size, True, 0, device, seed=0, drop_last=True)
    val_loader = make_loader(Blobs(13, 2), batch_size, False, 0, device, seed=0)  # 13: the ranks get 7 and 6
    optimizer = adamw(model, 0.05, 0.01)
    scheduler = warmup_cosine(optimizer, epochs * len(train_loader), len(train_loader))
    task = Task("toy", F.cross_entropy, LossAndAccuracyMeter, monitor="accuracy")
    run_state = RunState("toy", {"batch_size": batch_size}, {})
    best = fit(model, task, train_loader, val_loader, optimizer, scheduler, device, epochs, run_state,
               out_dir / "checkpoints", out_dir / "logs")
    (out_dir / f"rank{distributed.rank()}-of-{distributed.world_size()}.done").touch()  # rank 1 prints nothing
    distributed.teardown()
    return best


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
