"""Shared fixtures: tiny datasets written into temporary folders (the tests never read /work/shared)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for model weights

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from faults import classify_args, run, segment_args
from hypothesis import HealthCheck, settings

import main_classify
import main_segment
from tools.config import CELL_CACHE_ENV
from tools.demo_data import make_demo_dataset

# Property tests (tests/hostile.py): few examples, the same ones every run (a suite that passes keeps passing), no
# time limit per example (the machine is shared). HYPOTHESIS_PROFILE=explore hunts with many new ones.
settings.register_profile("suite", max_examples=12, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.fixture(scope="session", autouse=True)
def cell_cache_in_tmp(tmp_path_factory):
    """Scripts run by the tests (in-process or as subprocesses) keep their cell cache here, never in ~/.cache."""
    previous = os.environ.get(CELL_CACHE_ENV)
    os.environ[CELL_CACHE_ENV] = str(tmp_path_factory.mktemp("cell_cache"))
    yield
    if previous is None:
        os.environ.pop(CELL_CACHE_ENV)
    else:
        os.environ[CELL_CACHE_ENV] = previous


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A SIPaKMeD-layout demo dataset (5 classes x 2 cluster images). Read-only: copy it before editing."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", clusters_per_class=2, seed=0)


def write_paired_dataset(root: Path, classes=("abnormal", "normal"), cells_per_class=3, size=(40, 56)) -> Path:
    """A Herlev-like folder: <class>/<n>.BMP with <n>N.png (nucleus) and <n>C.png (cytoplasm WITHOUT nucleus).

    Cell k of every class is an ellipse of cytoplasm with a round nucleus in it; images are BGR on disk.
    """
    height, width = size
    for class_index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for cell in range(1, cells_per_class + 1):
            centre = (width // 2 + cell - 2, height // 2)
            cell_mask = np.zeros((height, width), np.uint8)
            cv2.ellipse(cell_mask, centre, (width // 3, height // 3), 0, 0, 360, 255, -1)
            nuc_mask = np.zeros((height, width), np.uint8)
            cv2.circle(nuc_mask, centre, 4 + class_index + cell, 255, -1)
            image = np.full((height, width, 3), 220, np.uint8)
            image[cell_mask > 0] = (180, 120, 200)
            image[nuc_mask > 0] = (90, 40, 60)
            stem = folder / f"{cell}"
            assert cv2.imwrite(f"{stem}.BMP", image)
            assert cv2.imwrite(f"{stem}N.png", nuc_mask)
            assert cv2.imwrite(f"{stem}C.png", np.where(nuc_mask > 0, 0, cell_mask).astype(np.uint8))
    return root


@pytest.fixture
def make_paired():
    """The write_paired_dataset helper, as a fixture: make_paired(root, classes=..., cells_per_class=...)."""
    return write_paired_dataset


@pytest.fixture(scope="session")
def paired_root(tmp_path_factory) -> Path:
    """A Herlev-like dataset, 2 classes x 6 cells (split 4 / 1 / 1 per class). Read-only: copy it before editing."""
    return write_paired_dataset(tmp_path_factory.mktemp("paired") / "herlev", cells_per_class=6)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One PyTorch thread for a test file that asks (test_faults_*.py: pytestmark): other jobs share this machine's
    2 cores, and two PyTorch threads each then mostly wait (runs get ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained(paired_root, tmp_path_factory):
    """Stage 1 and stage 2 checkpoints trained one epoch on the paired data, once for every test file that uses them."""
    run_dir = tmp_path_factory.mktemp("trained")
    run(main_segment.main, segment_args(paired_root, run_dir))
    run(main_classify.main, classify_args(paired_root, run_dir))
    return run_dir / "checkpoints"
