"""Behaviour of tools/acceleration.py: devices, and speed flags that change nothing on a CPU unless asked."""
from types import SimpleNamespace

import pytest
import torch

from tools.acceleration import (
    Acceleration,
    autocast_dtype,
    resolve_acceleration,
    resolve_device,
)
from utils.errors import UserError

CPU = torch.device("cpu")


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


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


