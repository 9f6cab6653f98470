"""Behaviour of tools/run_dir.py: where a run's files land, one run per folder, and the folder checks."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tools.run_dir import RunLock, RunPaths, check_outside_data, check_writable
from utils.errors import UserError


def test_default_manifest_path_is_per_data_root(tmp_path):
    a = RunPaths(tmp_path / "run").manifest(tmp_path / "data" / "herlev")
    b = RunPaths(tmp_path / "run").manifest(tmp_path / "other" / "herlev")
    assert a.parent == tmp_path / "run" / "splits" and a.name.startswith("herlev-") and a.suffix == ".json"
    assert a != b
    assert a == RunPaths(tmp_path / "run").manifest(tmp_path / "data" / "x" / ".." / "herlev")


def test_run_paths_follow_the_documented_layout(tmp_path):
    paths = RunPaths(tmp_path)
    assert paths.checkpoint("segmentation") == tmp_path / "checkpoints" / "segmentation_best.pth"
    assert paths.checkpoint("classification", "last") == tmp_path / "checkpoints" / "classification_last.pth"
    assert paths.logs("classification") == tmp_path / "logs" / "classification"
    assert (paths.masks, paths.eval) == (tmp_path / "outputs" / "masks", tmp_path / "outputs" / "eval")
    assert paths.skipped_cells == tmp_path / "skipped_cells.txt"


def test_lock_is_held_while_running_and_removed_at_exit(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UserError, match=rf"another run \(pid {os.getpid()}.*is writing here.*--run-dir"):
            RunLock(tmp_path / "run").__enter__()
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_second_run_is_told_to_change_the_flag_that_named_the_folder(tmp_path):
    with RunLock(tmp_path / "out", "--output-dir"):
        with pytest.raises(UserError, match=r"is writing here; wait for it to end or pass another --output-dir$"):
            RunLock(tmp_path / "out", "--output-dir").__enter__()
    (tmp_path / "out" / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "x"}))
    with pytest.raises(UserError, match=r"or pass another --output-dir$"):
        RunLock(tmp_path / "out", "--output-dir").__enter__()


def test_lock_of_a_finished_process_is_stale_and_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "command": "x"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    (tmp_path / ".lock").write_text("{half written")  # a run that died while taking it
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()


def test_lock_of_another_host_is_left_alone(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "main_segment.py"}))
    with pytest.raises(UserError, match=r"pid 1 on elsewhere: main_segment\.py.*delete .*\.lock"):
        RunLock(tmp_path).__enter__()
    assert (tmp_path / ".lock").exists()


def test_run_folder_inside_the_data_root_is_refused(tmp_path):
    check_outside_data(tmp_path / "run", tmp_path / "data")
    with pytest.raises(UserError, match=r"run folder lies inside --data-root.*--run-dir outside the data"):
        check_outside_data(tmp_path / "data" / "run", tmp_path / "data")


def test_unwritable_folder_is_a_user_error(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=r"afile/run: output folder cannot be written.*pass a writable --run-dir"):
        check_writable(tmp_path / "afile" / "run")
    check_writable(tmp_path / "fine")
    assert list((tmp_path / "fine").iterdir()) == []  # the probe is gone
