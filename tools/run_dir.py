"""The run folder: where everything a run writes lands (RunPaths), and one run at a time in it (RunLock).

    <run>/checkpoints/<stage>_{best,last}.pth, checkpoints/oof/fold<k>/   weights
    <run>/logs/<stage>/                                                 TensorBoard, log.txt, args.json
    <run>/outputs/masks/ eval/ predictions/ fields/ onnx/               what the scripts produce
    <run>/splits/<root>-<hash>.json                                     the split manifest
    <run>/skipped_cells.txt                                             with --skip-bad
"""
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from utils.errors import UserError

STAGES = ("segmentation", "classification")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, stage: str, which: str = "best") -> Path:
        return self.checkpoints / f"{stage}_{which}.pth"

    def oof_checkpoints(self, fold: int) -> Path:
        return self.checkpoints / "oof" / f"fold{fold}"

    def logs(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def oof_logs(self, fold: int) -> Path:
        return self.root / "logs" / "segmentation_oof" / f"fold{fold}"

    @property
    def masks(self) -> Path:
        return self.root / "outputs" / "masks"

    @property
    def eval(self) -> Path:
        return self.root / "outputs" / "eval"

    @property
    def predictions(self) -> Path:
        return self.root / "outputs" / "predictions"

    @property
    def field_predictions(self) -> Path:
        return self.root / "outputs" / "fields"

    @property
    def onnx(self) -> Path:
        return self.root / "outputs" / "onnx"

    @property
    def skipped_cells(self) -> Path:
        return self.root / "skipped_cells.txt"

    def manifest(self, data_root: Path, kind: str = "cells") -> Path:
        """One manifest per data root and kind (cells, or fields of view: a SIPaKMeD root holds both), kept under
        the run folder (data roots are often read-only)."""
        root = Path(data_root).resolve()
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        return self.root / "splits" / f"{root.name}-{digest}{'' if kind == 'cells' else '-' + kind}.json"


def check_outside_data(folder: Path, data_root: Optional[Path]) -> None:
    """A run folder inside the data root would be read back as a class folder of cells."""
    if data_root is not None and Path(folder).resolve().is_relative_to(Path(data_root).resolve()):
        raise UserError(f"{folder}: the run folder lies inside --data-root {data_root}, where it would be read as a "
                        f"class of cells; pass a --run-dir outside the data")


def check_writable(folder: Path, flags: str = "--run-dir") -> None:
    """`flags`: what the user passes to name another folder (an output folder may come from --output-dir)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"  # per process: torchrun's ranks probe the same folder at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{folder}: output folder cannot be written ({error.strerror}); pass a writable {flags}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@contextlib.contextmanager
def open_run(run_dir: Path, data_root: Optional[Path] = None, flag: str = "--run-dir") -> Iterator[RunPaths]:
    """The run folder of a script that writes into it: checked (outside the data, writable), then held (RunLock).
    `flag`: the name the user gave the folder by (--run-dir or --output-dir: tools/config.run_dir_flag)."""
    paths = RunPaths(Path(run_dir))
    check_outside_data(paths.root, data_root)
    check_writable(paths.root)
    with RunLock(paths.root, flag):
        yield paths


class RunLock:
    """One writer per folder: `<folder>/.lock` holds the pid, host and command of the run that writes there.

    A second run is refused with a line naming the first. A lock whose process is gone (killed, crashed)
    on this host is stale and taken over; on another host (a shared disk) it cannot be checked, so the
    message says how to remove it. Under torchrun only rank 0 takes it: the ranks are one run. `flag`: the option
    that named the folder (--run-dir, or --output-dir where the user gave that), which the refusal tells to change.
    """

    def __init__(self, folder: Path, flag: str = "--run-dir"):
        self.path = Path(folder) / ".lock"
        self.flag = flag
        self.held = False

    def __enter__(self) -> "RunLock":
        if int(os.environ.get("RANK", 0)) != 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                with open(self.path, "x") as lock_file:
                    json.dump(holder, lock_file)
                self.held = True
                return self
            except FileExistsError:
                self.remove_if_stale()
        raise UserError(f"{self.path}: could not take the lock of this folder; try again")

    def remove_if_stale(self) -> None:
        try:
            other = json.loads(self.path.read_text())
            pid, host = int(other["pid"]), str(other["host"])
        except (OSError, ValueError, KeyError, TypeError):
            other, pid, host = {}, None, None  # half-written by a run that died at once: stale
        if pid is not None and host != socket.gethostname():
            raise UserError(f"{self.path.parent}: another run (pid {pid} on {host}: {other.get('command')}) holds this "
                            f"folder; if it is no longer running, delete {self.path}; or pass another {self.flag}")
        if pid is not None and process_alive(pid):
            raise UserError(f"{self.path.parent}: another run (pid {pid}, started {other.get('started')}: "
                            f"{other.get('command')}) is writing here; wait for it to end or pass another {self.flag}")
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
