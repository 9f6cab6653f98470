"""Devices and the GPU speed-ups of training: mixed precision, channels_last, torch.compile, fused AdamW,
cuDNN autotuning, SyncBatchNorm and DistributedDataParallel wrapping.

Each speed flag left unset means on for CUDA and off on a CPU, where they do not help (bf16 autocast
is ~25x slower on a CPU without AMX).
"""
from dataclasses import dataclass
from typing import Optional

import torch

from tools import distributed
from utils.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N', checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision on CUDA only (bf16 where supported); on CPU bf16 autocast is far slower than fp32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """torch.autocast in amp_dtype, or a no-op context when amp_dtype is None (fp32)."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


@dataclass
class Acceleration:
    """Speed-ups for GPUs. resolve_acceleration turns them all off on CPU unless a flag asks for one."""

    amp_dtype: Optional[torch.dtype] = None  # autocast dtype; float16 also gets a gradient scaler
    channels_last: bool = False
    compile: bool = False
    fused_adamw: bool = False
    cudnn_benchmark: bool = False
    sync_batchnorm: bool = False  # under torchrun only

    def grad_scaler(self, device: torch.device) -> Optional[torch.amp.GradScaler]:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_acceleration(args, device: torch.device) -> Acceleration:
    """The training flags' speed-ups for this device; an unset (auto) flag means on for CUDA, off otherwise."""
    cuda = device.type == "cuda"

    def auto(flag: Optional[bool], default: bool) -> bool:
        return default if flag is None else flag

    if args.sync_bn and not cuda:
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation); drop the flag")
    amp_dtype = autocast_dtype(device) if args.amp == "auto" else AMP_DTYPES[args.amp]
    return Acceleration(
        amp_dtype=amp_dtype, channels_last=auto(args.channels_last, cuda), compile=args.compile,
        fused_adamw=auto(args.fused_adamw, cuda), cudnn_benchmark=auto(args.cudnn_benchmark, cuda and not args.deterministic),
        sync_batchnorm=args.sync_bn)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """(inputs, targets) on the device; inputs may be a tensor or a tuple of tensors (image, measurements)."""
    inputs, targets = batch
    if isinstance(inputs, (tuple, list)):
        inputs = tuple(x.to(device, non_blocking=True) for x in inputs)
        image = inputs[0]
    else:
        image = inputs = inputs.to(device, non_blocking=True)
    if channels_last and image.ndim == 4:
        image = image.contiguous(memory_format=torch.channels_last)
        inputs = (image, *inputs[1:]) if isinstance(inputs, tuple) else image
    return inputs, targets.to(device, non_blocking=True)


def wrap_for_training(model: torch.nn.Module, accel: Acceleration, device: torch.device) -> torch.nn.Module:
    """Apply the speed-ups and DDP to `model` (in place where possible); returns the module to call in training.

    Parameters stay the same objects, so an optimizer made before still updates them.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = accel.cudnn_benchmark
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    if distributed.is_distributed():
        if accel.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if accel.compile:
        model = torch.compile(model)
    return model
