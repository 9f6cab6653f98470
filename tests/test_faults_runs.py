"""Fault injection through the real entry points: small or odd data at evaluation and prediction, checkpoints, a full
disk and Ctrl-C, output folders, flags out of range, names checked first.

Every bad input ends either in ONE line on stderr, `error: <file>: <what is wrong>; <what to do>`, with
exit code 2 and no traceback, or in a run that works and gives the right result. A bad flag ends in argparse's
usage and one line naming it (exit code 2), Ctrl-C in one `interrupted: <what was kept>` line (exit code 130).
Datasets are tiny and training is one epoch of timm's test ConvNeXt at 64 px, so the whole file stays well
under a minute.
"""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import (
    CPU,
    SEGMENT,
    classify_args,
    copy_tree,
    evaluate_args,
    expect_interrupted,
    expect_usage_error,
    expect_user_error,
    half_of,
    read_metrics,
    run,
    segment_args,
)

import evaluate
import main_classify
import main_segment
from tools import checkpoint as checkpoint_module
from tools import engine
from tools.run_dir import RunPaths

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

# ---------------------------------------------------------------- checkpoints

def test_class_the_classifier_does_not_know(paired_root, trained, tmp_path, capsys):
    root = copy_tree(paired_root, tmp_path)
    (root / "mystery").mkdir()
    for name in ("1.BMP", "1N.png", "1C.png"):
        shutil.copy(root / "normal" / name, root / "mystery" / name)
    expect_user_error(capsys, evaluate.main, evaluate_args(root, tmp_path / "eval", trained, "--split", "all"),
                      "classification_best.pth", "does not know class(es) mystery", "rename the folders")


def test_checkpoint_of_the_other_stage(paired_root, trained, tmp_path, capsys):
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", trained / "classification_best.pth")
    expect_user_error(capsys, evaluate.main, argv, "classification_best.pth",
                      "is a classification checkpoint, expected segmentation", "pass the segmentation checkpoint")


def test_segmentation_checkpoint_with_edited_weights(paired_root, trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "segmentation_best.pth", map_location="cpu", weights_only=False)
    checkpoint["model"].pop(next(iter(checkpoint["model"])))
    edited = tmp_path / "edited.pth"
    torch.save(checkpoint, edited)
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", edited)
    expect_user_error(capsys, evaluate.main, argv, edited, "weights do not fit the model", "retrain")


def test_truncated_checkpoint_file(paired_root, trained, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(half_of(trained / "segmentation_best.pth"))
    argv = evaluate_args(paired_root, tmp_path, trained, "--seg-checkpoint", truncated)
    expect_user_error(capsys, evaluate.main, argv, truncated, "not a readable checkpoint", "retrain or pass another file")


def test_resume_with_another_backbone_names_both(paired_root, trained, tmp_path, capsys):
    resume = trained / "classification_last.pth"
    argv = classify_args(paired_root, tmp_path, "--mask-source", "gt", "--resume", resume, "--backbone", "test_efficientnet")
    expect_user_error(capsys, main_classify.main, argv, resume, "backbone test_convnext", "backbone test_efficientnet",
                      "drop --resume")


def test_resume_on_another_data_root_names_both(paired_root, trained, tmp_path, capsys):
    """The same cells elsewhere still refuse: the split manifest and the best score belong to the other root."""
    root, out = copy_tree(paired_root, tmp_path), tmp_path / "run"
    resume = trained / "segmentation_last.pth"
    expect_user_error(capsys, main_segment.main, segment_args(root, out, "--resume", resume), resume, "cannot resume",
                      f"data_root {paired_root.resolve()}", f"data_root {root.resolve()}", "drop --resume")
    assert not RunPaths(out).checkpoints.exists()


# ---------------------------------------------------------------- a full disk and Ctrl-C while training

@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/3: file write failed"),
], ids=["enospc", "zip_writer"])
def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(paired_root, tmp_path, capsys, monkeypatch, failure):
    real_save, saves = torch.save, []

    def save(state, path, *args, **kwargs):  # epoch 1 writes last and best; the disk fills while epoch 2 writes last
        saves.append(path)
        if len(saves) == 3:
            raise failure
        real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    last = RunPaths(tmp_path / "run").checkpoint("segmentation", "last")
    expect_user_error(capsys, main_segment.main, segment_args(paired_root, tmp_path / "run", "--epochs", "2", "--skip-export"),
                      last, "checkpoint could not be written", "the previous one is kept", "free disk space",
                      "resume with --resume")
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["segmentation_best.pth", "segmentation_last.pth"]  # no temporary


def interrupt_in_epoch(monkeypatch, stop: int) -> None:
    """Ctrl-C while epoch `stop` trains."""
    real = engine.train_one_epoch

    def train_one_epoch(model, loader, task, optimizer, scheduler, device, epoch, *args, **kwargs):
        if epoch == stop:
            raise KeyboardInterrupt
        return real(model, loader, task, optimizer, scheduler, device, epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)


def test_ctrl_c_exits_130_saying_what_was_kept(paired_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    paths = RunPaths(out)
    interrupt_in_epoch(monkeypatch, 2)
    message = expect_interrupted(capsys, main_segment.main, segment_args(paired_root, out, "--epochs", "2", "--skip-export"))
    assert f"segmentation checkpoints up to epoch 1 are kept in {paths.checkpoints}" in message and "--resume" in message
    assert torch.load(paths.checkpoint("segmentation", "last"), map_location="cpu", weights_only=False)["epoch"] == 1
    assert not (out / ".lock").exists()

    # another run stopped before its first checkpoint: nothing kept, and not the first run's checkpoints either
    monkeypatch.undo()
    interrupt_in_epoch(monkeypatch, 1)
    message = expect_interrupted(capsys, main_classify.main,
                                 classify_args(paired_root, tmp_path / "fresh", "--mask-source", "gt"))
    assert "nothing" in message and str(paths.checkpoints) not in message
    assert not RunPaths(tmp_path / "fresh").checkpoints.exists()


# ---------------------------------------------------------------- output folder

@pytest.mark.parametrize("script", ["segment", "classify", "evaluate"])
def test_output_folder_under_a_file(paired_root, tmp_path, capsys, script):
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "run"
    argv = {"segment": segment_args(paired_root, out), "classify": classify_args(paired_root, out),
            "evaluate": ["--data-root", paired_root, "--output-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_user_error(capsys, main, argv, out, "output folder cannot be written", "pass a writable --run-dir")


@pytest.mark.parametrize("script", ["segment", "classify", "evaluate"])
def test_run_folder_inside_the_data_root(paired_root, tmp_path, capsys, script):
    root = copy_tree(paired_root, tmp_path)
    out = root / "run"
    argv = {"segment": segment_args(root, out), "classify": classify_args(root, out),
            "evaluate": ["--data-root", root, "--run-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_user_error(capsys, main, argv, out, "lies inside --data-root", "pass a --run-dir outside the data")
    assert not out.exists()  # refused before anything was written there


def write_lock(folder: Path, pid: int) -> Path:
    """The .lock another run would hold in `folder` (tools/run_dir.RunLock's format)."""
    folder.mkdir(parents=True)
    lock = folder / ".lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "main_segment.py --run-dir runs/a",
                                "started": "2025-01-01 09:00:00"}))
    return lock


def test_second_run_into_a_locked_run_folder_is_refused(paired_root, tmp_path, capsys):
    out = tmp_path / "run"
    other = subprocess.Popen(["sleep", "60"])  # the run holding the folder, alive
    try:
        lock = write_lock(out, other.pid)
        expect_user_error(capsys, main_classify.main, classify_args(paired_root, out, "--mask-source", "gt"), out,
                          f"another run (pid {other.pid}", "main_segment.py --run-dir runs/a", "is writing here",
                          "wait for it to end or pass another --output-dir")
    finally:
        other.kill()
        other.wait()
    assert json.loads(lock.read_text())["pid"] == other.pid  # the other run's lock is left alone
    assert not RunPaths(out).checkpoints.exists()


@pytest.mark.parametrize("flag", ["--run-dir", "--output-dir"])
def test_a_locked_run_folder_is_refused_naming_the_flag_given(paired_root, tmp_path, capsys, flag):
    out = tmp_path / "run"
    write_lock(out, os.getpid())  # this process: alive
    argv = ["--data-root", paired_root, flag, out, *SEGMENT]
    message = expect_user_error(capsys, main_segment.main, argv, out, "is writing here")
    assert message.endswith(f"wait for it to end or pass another {flag}")


def test_stale_lock_of_an_ended_run_is_taken_over(paired_root, tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # killed or crashed: its lock stayed behind
    out = tmp_path / "run"
    lock = write_lock(out, ended.pid)
    run(main_segment.main, segment_args(paired_root, out, "--skip-export"))
    assert RunPaths(out).checkpoint("segmentation").is_file() and not lock.exists()


OUT_OF_RANGE = "is out of range; expected"


@pytest.mark.parametrize("script,flags,fragment", [
    ("classify", ["--batch-size", "1"], "--batch-size 1: the classifier's BatchNorm layers need at least 2"),
    ("classify", ["--epochs", "0"], f"argument --epochs: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("segment", ["--epochs", "0"], f"argument --epochs: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("segment", ["--lr", "-1"], f"argument --lr: -1 {OUT_OF_RANGE} a number > 0"),
    ("segment", ["--img-size", "100"], f"argument --img-size: 100 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--img-size", "0"], f"argument --img-size: 0 {OUT_OF_RANGE} a multiple of 32"),
    ("classify", ["--img-size", "-32"], f"argument --img-size: -32 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--img-size", "48"], f"argument --img-size: 48 {OUT_OF_RANGE} a multiple of 32"),
    ("segment", ["--batch-size", "0"], f"argument --batch-size: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("classify", ["--workers", "-1"], f"argument --workers: -1 {OUT_OF_RANGE} a whole number >= 0"),
    ("segment", ["--seed", "-1"], f"argument --seed: -1 {OUT_OF_RANGE} a whole number >= 0"),
    ("classify", ["--label-smoothing", "2"], f"argument --label-smoothing: 2 {OUT_OF_RANGE} a number from 0 up to"),
    ("segment", ["--device", "gpu"], "argument --device: unknown 'gpu'; did you mean cuda?"),
    ("classify", ["--backbone", "convnext_tny"], "argument --backbone: unknown 'convnext_tny'; did you mean convnext_tiny"),
    ("segment", ["--split-seed", "-3"], f"argument --split-seed: -3 {OUT_OF_RANGE} a whole number >= 0"),
    ("evaluate", ["--batch-size", "0"], f"argument --batch-size: 0 {OUT_OF_RANGE} a whole number >= 1"),
    ("evaluate", ["--device", "gpu"], "argument --device: unknown 'gpu'; did you mean cuda?"),
    ("segment", ["--layout", "paird"], "argument --layout: unknown 'paird'; did you mean paired? (known: auto, sipakmed, "),
    ("classify", ["--preset", "cpuu"], "argument --preset: unknown 'cpuu'; did you mean cpu? (known: cpu)"),
    ("evaluate", ["--mask-source", "predcted"], "argument --mask-source: unknown 'predcted'; did you mean predicted? "
                                                "(known: predicted, gt)"),
    ("evaluate", ["--normal-classes"], "argument --normal-classes: expected at least one argument"),
])
def test_out_of_range_flags_stop_at_the_command_line(paired_root, tmp_path, capsys, script, flags, fragment):
    out = tmp_path / "run"
    argv = {"segment": segment_args(paired_root, out), "classify": classify_args(paired_root, out),
            "evaluate": ["--data-root", paired_root, "--run-dir", out, *CPU]}[script]
    main = {"segment": main_segment.main, "classify": main_classify.main, "evaluate": evaluate.main}[script]
    expect_usage_error(capsys, main, [*argv, *flags], flags[0], fragment)
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_output_folder(paired_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        expect_user_error(capsys, main_segment.main, segment_args(paired_root, locked / "run"),
                          "locked", "output folder cannot be written", "pass a writable --run-dir")
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- names: each is checked against what exists, first

def test_a_mistyped_normal_class_is_refused_not_counted_as_abnormal(paired_root, trained, tmp_path, capsys):
    """The reported case: with the folder normal_superficiel, --normal-classes normal_superficial counted no class as
    normal and reported "normal vs abnormal: accuracy 1.0000"."""
    out = tmp_path / "run"
    expect_user_error(capsys, evaluate.main, evaluate_args(paired_root, out, trained, "--split", "all",
                                                           "--normal-classes", "normall"),
                      "--normal-classes: unknown class 'normall'; did you mean normal? (known: abnormal, normal)",
                      "name the classes as", "classification_best.pth knows them")
    assert not (out / "outputs" / "eval" / "metrics.json").exists()
    run(evaluate.main, evaluate_args(paired_root, out, trained, "--split", "all", "--normal-classes", "normal"))
    confusion = read_metrics(out)["normal_vs_abnormal"]["confusion_matrix"]  # [[TN, FP], [FN, TP]], abnormal positive
    assert [sum(row) for row in confusion] == [6, 6]  # 6 normal cells counted as normal (before: none)


@pytest.mark.parametrize("flags,fragments", [
    (["--class-order", "normal", "abnormall"], ["--class-order: unknown class 'abnormall'; did you mean abnormal?"]),
    (["--class-order", "normal"], ["--class-order: leaves out abnormal", "list each class of"]),
    (["--class-order", "normal", "abnormal", "normal"], ["--class-order: names normal twice"]),
    (["--masks-dir", "{tmp}"], ["--masks-dir {tmp}: no masks.json there", "pass a run's outputs/masks folder"]),
    (["--split-file", "{tmp}/herlev.jsn"], ["herlev.jsn: no such file, unknown split manifest 'herlev.jsn'",
                                             "pass an existing manifest to --split-file"]),
    (["--seg-checkpoint", "{checkpoints}/segmentaton_best.pth"],
     ["segmentaton_best.pth: no such file, unknown checkpoint 'segmentaton_best.pth'; did you mean segmentation_best.pth? "
      "(known: classification_best.pth, classification_last.pth, segmentation_best.pth, segmentation_last.pth); train"]),
], ids=["order_typo", "order_short", "order_twice", "masks_dir", "split_file", "checkpoint"])
def test_evaluate_checks_every_name_before_scoring(paired_root, trained, tmp_path, capsys, flags, fragments):
    names = {"tmp": tmp_path, "checkpoints": trained}
    argv = evaluate_args(paired_root, tmp_path / "run", trained, *[flag.format(**names) for flag in flags])
    expect_user_error(capsys, evaluate.main, argv, *[fragment.format(**names) for fragment in fragments])
    assert not (tmp_path / "run" / "outputs" / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("script,flags,fragments", [
    ("segment", ["--split-file", "{tmp}/split.json"], ["split.json: no such file, unknown split manifest", "leave the flag out"]),
    ("segment", ["--resume"], ["no such file, unknown checkpoint 'segmentation_last.pth' (known: none); drop --resume"]),
    ("classify", ["--seg-checkpoint", "{tmp}/seg.pth"], ["seg.pth: no such file, unknown checkpoint 'seg.pth'"]),
    ("segment", ["--nuc-suffix", "_nuc.png"], ["--nuc-suffix: unknown mask suffix '_nuc.png'", "(known: C.png, N.png)"]),
], ids=["split_file", "resume", "seg_checkpoint", "suffix"])
def test_training_checks_every_name_before_training(paired_root, tmp_path, capsys, script, flags, fragments):
    """A mistyped --nuc-suffix read a Herlev root as labels-only and trained its masks as cells; the others failed late
    (after the cells were decoded), or made a new split."""
    out = tmp_path / "run"
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    argv = segment_args(paired_root, out, *flags) if script == "segment" else classify_args(paired_root, out, *flags)
    expect_user_error(capsys, main_segment.main if script == "segment" else main_classify.main, argv, *fragments)
    assert not RunPaths(out).checkpoints.exists() and not (tmp_path / "split.json").exists()
