"""Behaviour of tools/checkpoint.py: atomic saves, clear errors for wrong files, what a resume must match."""
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_checkpoints import save_untrained_classification

from model.classification_model import ConvNeXtAttentionClassifier
from tools.checkpoint import (
    RunState,
    check_resume_compatible,
    load_checkpoint,
    load_model,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    start_from,
)
from utils.errors import UserError


def test_save_checkpoint_is_atomic_and_loadable(tmp_path):
    path = tmp_path / "checkpoints" / "segmentation_last.pth"
    state = {"stage": "segmentation", "epoch": 3, "model": {"w": torch.arange(4.0)}}
    save_checkpoint(path, state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["segmentation_last.pth"]  # no .tmp left
    loaded = load_checkpoint(path, "segmentation")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    # overwriting replaces the file as a whole
    save_checkpoint(path, dict(state, epoch=4))
    assert load_checkpoint(path, "segmentation")["epoch"] == 4
    assert not list(path.parent.glob("*.tmp"))


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "classification_last.pth"
    save_checkpoint(path, {"stage": "classification", "epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"stage": "classification", "epoch": 2, "bad": lambda: None})  # not picklable
    assert load_checkpoint(path, "classification")["epoch"] == 1


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nothing\.pth: no such file, unknown checkpoint 'nothing\.pth' \(known: none\); "
                                        r"train the segmentation"):
        load_checkpoint(tmp_path / "nothing.pth", "segmentation")
    with pytest.raises(UserError, match="is a folder, not a checkpoint"):
        load_checkpoint(tmp_path, "segmentation")  # a folder is not a checkpoint


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04broken zip"])
def test_load_checkpoint_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"garbage\.pth: not a readable checkpoint"):
        load_checkpoint(path, "classification")


def test_load_checkpoint_of_the_other_stage(tmp_path):
    path = tmp_path / "seg.pth"
    save_checkpoint(path, {"stage": "segmentation"})
    with pytest.raises(UserError, match=r"seg\.pth: is a segmentation checkpoint, expected classification"):
        load_checkpoint(path, "classification")
    torch.save({"model": {}}, tmp_path / "old.pth")
    with pytest.raises(UserError, match="is a unknown checkpoint"):
        load_checkpoint(tmp_path / "old.pth", "classification")
    torch.save(torch.zeros(2), tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="expected segmentation"):
        load_checkpoint(tmp_path / "tensor.pth", "segmentation")




@pytest.mark.parametrize("edit,fragment", [
    (lambda state: state.pop("args"), "the checkpoint lacks args, args.img_size; retrain"),
    (lambda state: state.pop("class_names"), "the checkpoint lacks class_names"),
    (lambda state: state["model_config"].update(backbone="test_convnxt"),
     "unknown backbone 'test_convnxt'; did you mean test_convnext? (known: see timm.list_models()) in its model_config"),
], ids=["no_args", "no_classes", "backbone"])
def test_load_model_refuses_a_checkpoint_that_does_not_describe_a_model(tmp_path, edit, fragment):
    path = save_untrained_classification(tmp_path / "classification_best.pth")
    state = torch.load(path, weights_only=False)
    edit(state)
    torch.save(state, path)
    with pytest.raises(UserError) as error:
        load_model(path, "classification", torch.device("cpu"))
    assert str(error.value).startswith(f"{path}: ") and fragment in str(error.value)


def test_resume_with_other_classes_is_refused():
    """Same class count, other names: the weights would load, and every label would silently mean another class."""
    checkpoint = {"model_config": {"backbone": "b", "num_classes": 2}, "class_names": ["a", "b"]}
    check_resume_compatible(Path("c.pth"), checkpoint,
                            RunState("classification", {}, {"backbone": "b", "num_classes": 2}, ["a", "b"]))
    with pytest.raises(UserError, match=r"c\.pth: cannot resume.*class_names \['a', 'b'\].*class_names \['a', 'c'\]"):
        check_resume_compatible(Path("c.pth"), checkpoint, RunState("classification", {}, checkpoint["model_config"], ["a", "c"]))


def test_resume_on_other_data_is_refused_and_old_checkpoints_compare_what_they_hold():
    config = {"backbone": "b"}
    checkpoint = {"model_config": config, "class_names": None, "provenance": {"data_root": "/data/a", "split_manifest": "1"}}
    same = RunState("segmentation", {}, config, provenance={"data_root": "/data/a", "split_manifest": "1"})
    check_resume_compatible(Path("s.pth"), checkpoint, same)
    other = RunState("segmentation", {}, config, provenance={"data_root": "/data/b", "split_manifest": "1"})
    with pytest.raises(UserError, match=r"s\.pth: cannot resume.*data_root /data/a.*data_root /data/b.*drop --resume"):
        check_resume_compatible(Path("s.pth"), checkpoint, other)
    # made before checkpoints kept their provenance: only the model and classes can be compared
    check_resume_compatible(Path("s.pth"), {"model_config": config, "class_names": None}, other)


def test_rng_states_restore_every_generator():
    import random

    states = rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_start_from_loads_another_runs_classifier_of_the_same_classes_and_model(tmp_path):
    path = save_untrained_classification(tmp_path / "classification_best.pth", class_names=["a", "b"], seed=1)
    config = dict(num_classes=2, in_chans=5, backbone="test_convnext")
    torch.manual_seed(2)
    model = ConvNeXtAttentionClassifier(**config)
    assert "fine-tuned from" in start_from(model, path, ["a", "b"], config)
    saved = torch.load(path, weights_only=False)["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    with pytest.raises(UserError, match="knows a, b, this data a, c"):
        start_from(model, path, ["a", "c"], config)
    with pytest.raises(UserError, match="its model has num_classes 2, this run asks 3"):
        start_from(ConvNeXtAttentionClassifier(**{**config, "num_classes": 3}), path, ["a", "b"],
                   {**config, "num_classes": 3})
