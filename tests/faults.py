"""What the fault-injection tests (tests/test_faults_*.py) share: the scripts' flags for a one-epoch run on tiny data,
how a script is called as the shell calls it, and how its one-line error, usage error or Ctrl-C is checked."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

CPU = ["--workers", "0", "--device", "cpu"]
TRAIN = [*CPU, "--backbone", "test_convnext", "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--no-pretrained"]
SEGMENT = [*TRAIN, "--decoder-channels", "32", "16", "16"]


def visible_lines(text: str):
    """The lines a terminal shows: progress bars redraw their line with \\r and clear it when they close."""
    return [shown for shown in (line.split("\r")[-1] for line in text.split("\n")) if shown.strip()]


def run(main, argv) -> None:
    """Call a script's main() as the shell would, every argument a string."""
    main([str(arg) for arg in argv])


def expect_user_error(capsys, main, argv, *fragments) -> str:
    """Run an entry point that must stop with exit code 2 and one `error: <file>: <what>; <what to do>` line."""
    capsys.readouterr()  # drop what earlier steps of the test printed
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    # a finished progress bar (kept on screen by design) may come before it; the error itself is one line
    assert "Traceback" not in stderr and [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    message = lines[-1]
    assert "; " in message, f"no advice after '; ': {message}"
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def expect_usage_error(capsys, main, argv, flag, *fragments) -> str:
    """argparse's refusal: exit code 2, its usage block, then ONE line `<prog>: error: ...` naming the flag."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    usage, message = lines[:-1], lines[-1]
    assert "Traceback" not in stderr and usage and usage[0].startswith("usage: "), lines
    assert all(line.startswith(" ") for line in usage[1:]), lines  # the rest of the usage block, wrapped and indented
    assert ": error: " in message and flag in message, message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


def expect_interrupted(capsys, main, argv) -> str:
    """Ctrl-C: exit code 130 and ONE line `interrupted: <what was kept>`, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    assert exit_info.value.code == 130
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    assert "Traceback" not in stderr and [line for line in lines if line.startswith(("interrupted", "error"))] == lines[-1:]
    assert lines[-1].startswith("interrupted: "), lines
    return lines[-1]


def copy_tree(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def segment_args(root: Path, out: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *SEGMENT, *extra]


def classify_args(root: Path, out: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *TRAIN, *extra]


def evaluate_args(root: Path, out: Path, checkpoints: Path, *extra):
    return ["--data-root", root, "--output-dir", out, *CPU, "--seg-checkpoint", checkpoints / "segmentation_best.pth",
            "--cls-checkpoint", checkpoints / "classification_best.pth", *extra]


def read_metrics(out: Path):
    return json.loads((out / "outputs" / "eval" / "metrics.json").read_text())


def half_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:len(data) // 2]


def bgr_of(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)
