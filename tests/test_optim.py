"""Behaviour of tools/optim.py: the warm-up + cosine schedule, timm's AdamW groups and the weight EMA."""
import numpy as np
import pytest
import torch

from tools.optim import ModelEma, adamw, warmup_cosine


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




@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_model_ema_decay_after_step_t_is_min_of_decay_and_the_ramp(decay):
    """One parameter, moved to a new value before every update: the average shows the decay used at each step."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=decay)
    average = 0.0
    for step in range(40):
        value = float(step + 1) ** 1.5  # a new weight each step, so that every decay shows in the average
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model, step)
        used = min(decay, (1 + step) / (10 + step))
        average = used * average + (1 - used) * value
        assert ema.module.weight.item() == pytest.approx(average, rel=1e-5), step


def test_adamw_puts_no_weight_decay_on_one_dimensional_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optimizer = adamw(model, lr=0.1, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == len(list(model.parameters()))  # every parameter is trained
    for name, parameter in model.named_parameters():
        assert decay_of[id(parameter)] == (0.05 if parameter.ndim > 1 else 0.0), name

    # and in effect: with zero gradients, only the weight matrices shrink
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # no parameter at zero, where decay would not show
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, parameter in model.named_parameters():
        shrunk = not torch.equal(parameter, before[name])
        assert shrunk == (parameter.ndim > 1), name
