"""Behaviour of tools/config.py: stage defaults under a preset, explicit flags winning, values checked by argparse."""
import argparse
from pathlib import Path

import pytest

from tools.config import PRESETS, STAGE_DEFAULTS, name_flag, parse_stage_args, training_parser, unknown_name
from utils.errors import UserError


def parse(stage, *argv):
    parser = argparse.ArgumentParser(parents=[training_parser(stage)])
    if stage == "segmentation":
        parser.add_argument("--decoder-channels", type=int, nargs=3)
    return parse_stage_args(parser, stage, list(argv))


@pytest.mark.parametrize("stage", ["segmentation", "classification"])
def test_preset_values_override_the_stage_defaults(stage):
    plain, preset = parse(stage), parse(stage, "--preset", "cpu")
    for name, value in STAGE_DEFAULTS[stage].items():
        assert getattr(plain, name) == value, name
        assert getattr(preset, name) == PRESETS["cpu"][stage].get(name, value), name


def test_a_flag_on_the_command_line_wins_over_the_preset():
    args = parse("classification", "--preset", "cpu", "--epochs", "3", "--backbone", "test_convnext")
    assert (args.epochs, args.backbone, args.img_size) == (3, "test_convnext", PRESETS["cpu"]["classification"]["img_size"])


def test_run_dir_has_output_dir_as_its_alias_and_resume_defaults_into_it(tmp_path):
    assert parse("segmentation", "--output-dir", str(tmp_path)).run_dir == tmp_path
    with pytest.raises(UserError, match="no such file, unknown checkpoint 'segmentation_last.pth'"):  # nothing to resume
        parse("segmentation", "--run-dir", str(tmp_path), "--resume")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "segmentation_last.pth").write_bytes(b"")
    args = parse("segmentation", "--run-dir", str(tmp_path), "--resume")
    assert args.resume == tmp_path / "checkpoints" / "segmentation_last.pth"
    assert parse("segmentation").run_dir == Path(".")


def test_the_run_folders_flag_is_remembered_as_the_user_gave_it(tmp_path):
    """Messages about the run folder (tools/run_dir.RunLock) name the flag typed, not always --run-dir."""
    assert parse("segmentation", "--output-dir", str(tmp_path)).run_dir_flag == "--output-dir"
    assert parse("segmentation", "--run-dir", str(tmp_path)).run_dir_flag == "--run-dir"
    assert parse("segmentation").run_dir_flag == "--run-dir"


@pytest.mark.parametrize("flag,value,expected", [
    ("--epochs", "0", "a whole number >= 1"),
    ("--lr", "nan", "a number > 0"),
    ("--ema-decay", "1", "up to (not including) 1"),
    ("--img-size", "96.5", "is not a number"),
    ("--backbone", "convnext_tiyn", "did you mean convnext_tiny"),
    ("--device", "gpu", "unknown 'gpu'"),
])
def test_bad_values_end_with_argparses_usage_error(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        parse("classification", flag, value)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and expected in error


def test_an_unknown_name_gets_the_closest_one_and_the_known_ones():
    assert unknown_name("normal_superficial", ["abnormal", "normal_superficiel"], "class") == (
        "unknown class 'normal_superficial'; did you mean normal_superficiel? (known: abnormal, normal_superficiel)")
    assert unknown_name("zzz", []) == "unknown 'zzz' (known: none)"
    many = [f"model_{index}" for index in range(100)]
    assert unknown_name("model_x", many, "backbone", listing="timm.list_models()").endswith("(known: see timm.list_models())")


def test_a_name_flag_lists_its_names_in_help_and_answers_a_typo(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--layout", default="auto", **name_flag(["auto", "paired"]))
    assert parser.parse_args([]).layout == "auto" and parser.parse_args(["--layout", "paired"]).layout == "paired"
    with pytest.raises(SystemExit):
        parser.parse_args(["--layout", "piared"])
    assert "argument --layout: unknown 'piared'; did you mean paired? (known: auto, paired)" in capsys.readouterr().err
    parser.print_help()
    assert "{auto,paired}" in capsys.readouterr().out
