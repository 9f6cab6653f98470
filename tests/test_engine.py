"""Behaviour of tools/engine.py: checkpoints, schedule, seeding and the shared fit() loop."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import tools.engine as engine
from tools.engine import (
    Acceleration,
    ModelEma,
    RunState,
    SeededSampler,
    Task,
    TrainingDiverged,
    autocast_dtype,
    fit,
    load_checkpoint,
    make_loader,
    adamw,
    resolve_acceleration,
    resolve_device,
    save_checkpoint,
    seed_everything,
    warmup_cosine,
)
from tools.errors import UserError
from utils.preprocessing import build_augmentation

CPU = torch.device("cpu")


# ---------------------------------------------------------------- checkpoints

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
    with pytest.raises(UserError, match=r"nothing\.pth: checkpoint not found.*segmentation"):
        load_checkpoint(tmp_path / "nothing.pth", "segmentation")
    with pytest.raises(UserError, match="not found"):
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


# ---------------------------------------------------------------- schedule, device, seeding

def lr_trace(total, warmup, peak=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = warmup_cosine(optimizer, total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs), optimizer.param_groups[0]["lr"]


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    lrs, after_end = lr_trace(total=100, warmup=10, peak=0.1)
    assert np.allclose(lrs[:10], 0.1 * np.arange(1, 11) / 10)  # linear warm-up up to the peak
    assert np.allclose(np.diff(lrs[:10]), 0.01)
    assert lrs.max() == pytest.approx(0.1)
    assert (np.diff(lrs[10:]) <= 1e-12).all()  # then never rises again
    assert lrs[10 + 45] == pytest.approx(0.05, abs=0.005)  # half-way down in the middle of the decay
    assert lrs[-1] < 0.1 * 0.01 and after_end == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_without_warmup_and_past_the_end():
    lrs, after_end = lr_trace(total=20, warmup=0, peak=1.0)
    assert lrs[0] == pytest.approx(1.0) and (np.diff(lrs) < 0).all()
    assert after_end == pytest.approx(0.0, abs=1e-12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, 5, 1)
    for _ in range(12):  # stepping past total_steps stays at zero instead of climbing back up
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_autocast_dtype_is_none_on_cpu():
    assert autocast_dtype(CPU) is None


def speed_flags(**chosen):
    """The training scripts' speed flags as parsed, all unset (auto) unless given."""
    flags = dict(amp="auto", channels_last=None, compile=False, fused_adamw=None, cudnn_benchmark=None, sync_bn=False,
                 deterministic=False)
    return SimpleNamespace(**{**flags, **chosen})


def test_speed_flags_change_nothing_on_cpu_by_default():
    assert resolve_acceleration(speed_flags(), CPU) == Acceleration()
    assert Acceleration().grad_scaler(CPU) is None


def test_speed_flags_asked_for_explicitly_are_kept():
    accel = resolve_acceleration(speed_flags(amp="fp16", channels_last=True, compile=True, fused_adamw=True), CPU)
    assert accel.amp_dtype == torch.float16 and accel.channels_last and accel.compile and accel.fused_adamw
    assert isinstance(accel.grad_scaler(CPU), torch.amp.GradScaler)  # fp16 needs loss scaling
    assert resolve_acceleration(speed_flags(amp="bf16"), CPU).amp_dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_speed_flags_default_on_for_cuda():
    accel = resolve_acceleration(speed_flags(), torch.device("cuda"))
    assert accel.amp_dtype in (torch.bfloat16, torch.float16)
    assert accel.channels_last and accel.fused_adamw and accel.cudnn_benchmark and not accel.compile
    assert not resolve_acceleration(speed_flags(deterministic=True), torch.device("cuda")).cudnn_benchmark


def test_sync_bn_on_cpu_is_refused_with_a_clear_error():
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        resolve_acceleration(speed_flags(sync_bn=True), CPU)


def test_fused_adamw_takes_the_same_step_as_the_plain_one():
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    inputs = torch.randn(8, 4)
    for model, fused in zip(models, (False, True)):
        optimizer = adamw(model, lr=0.1, weight_decay=0.05, fused=fused)
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
    for plain, fused in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(plain, fused)


def test_model_ema_follows_the_weights_with_a_warming_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)  # decay min(0.9, 1/10) = 0.1: the first average is mostly the new weights
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(model, step=1000)  # decay 0.9 from then on
    assert ema.module.weight.item() == pytest.approx(0.9 + 0.1 * 0.1)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_balanced_sampler_draws_every_class_about_equally():
    labels = np.array([0] * 90 + [1] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    sampler = SeededSampler(len(labels), shuffle=True, seed=0, sample_weights=weights)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[index] for index, _ in sampler]
    assert len(drawn) == 20 * 100
    assert 0.4 < np.mean(drawn) < 0.6  # the 10 % class fills about half of every epoch
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # drawn from (seed, epoch) alone


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_seed_everything_makes_draws_repeatable():
    seed_everything(11)
    first = (torch.randn(5), np.random.rand(3))
    seed_everything(11)
    second = (torch.randn(5), np.random.rand(3))
    seed_everything(12)
    other = torch.randn(5)
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not torch.equal(first[0], other)


def worker_augment(monkeypatch, seed=123456789):
    """Run seed_worker as a loader worker would, and return the augmentation it seeded."""
    augment = build_augmentation(train=True)
    info = SimpleNamespace(seed=seed, dataset=SimpleNamespace(augment=augment))
    monkeypatch.setattr(engine, "get_worker_info", lambda: info)
    engine.seed_worker(0)
    augment.save_applied_params = True
    return augment


def applied(augment, calls=200):
    image = np.zeros((16, 16, 3), np.uint8)
    return [{name for name, _ in augment(image=image)["applied_transforms"]} for _ in range(calls)]


def test_seed_worker_makes_augmentation_reproducible(monkeypatch):
    a, b = applied(worker_augment(monkeypatch), 30), applied(worker_augment(monkeypatch), 30)
    assert a == b
    assert applied(worker_augment(monkeypatch, seed=1), 30) != a


def test_seed_worker_keeps_transforms_independent(monkeypatch):
    draws = applied(worker_augment(monkeypatch))
    horizontal = np.array(["HorizontalFlip" in d for d in draws])
    vertical = np.array(["VerticalFlip" in d for d in draws])
    # independent p=0.5 flips: exactly one of them fires about half of the time
    assert 0.3 < (horizontal != vertical).mean() < 0.7


def test_make_loader_makes_main_process_augmentation_repeatable():
    # with --workers 0 seed_worker never runs; make_loader seeds the augmentation itself
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    class Augmented(torch.utils.data.Dataset):
        def __init__(self):
            self.augment = build_augmentation(train=True)

        def __len__(self):
            return 6

        def __getitem__(self, index):
            return torch.from_numpy(self.augment(image=image)["image"])

    batches = [torch.cat(list(make_loader(Augmented(), 3, False, 0, CPU, seed))) for seed in (0, 0, 1)]
    assert torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])


def test_make_loader_is_seeded():
    dataset = TensorDataset(torch.arange(20))
    order = lambda seed: [int(x) for (batch,) in make_loader(dataset, 4, True, 0, CPU, seed) for x in batch]
    assert order(3) == order(3) and sorted(order(3)) == list(range(20))
    assert order(3) != order(4)
    loader = make_loader(dataset, 6, False, 0, CPU, 0, drop_last=True)
    assert [len(b[0]) for b in loader] == [6, 6, 6]


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
