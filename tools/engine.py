"""The one training engine both stages use: epoch loop, validation, checkpoints, logging.

A stage supplies a `Task` (its loss, its metric meter, the metric that picks the best checkpoint);
everything else here is shared.
"""
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tools import distributed
from tools.errors import UserError
from tools.files import written_atomically
from utils.preprocessing import seed_augmentation


@dataclass
class Task:
    name: str  # "segmentation" or "classification": names checkpoints and log folders
    loss: Callable[[Any, torch.Tensor], torch.Tensor]  # (model outputs, targets) -> scalar
    new_meter: Callable[[], Any]  # () -> object with update(outputs, targets) and compute() -> dict
    monitor: str  # validation metric (higher is better) that picks the best checkpoint


class TrainingDiverged(UserError):
    pass


# ---------------------------------------------------------------- setup helpers

def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own reproducible numpy/random/albumentations stream."""
    info = get_worker_info()
    seed = info.seed % 2**32  # torch derives it from the main process RNG, so it follows --seed
    random.seed(seed)
    np.random.seed(seed)
    augment = getattr(info.dataset, "augment", None)
    if augment is not None:
        seed_augmentation(augment, seed)


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed) pairs drawn from (seed, epoch) alone.

    An item's augmentation then depends on neither the worker that loads it nor the run's history,
    so a run resumed at epoch k sees exactly the batches an uninterrupted run sees. fit() calls
    set_epoch() before every epoch, as with DistributedSampler. Under torchrun each rank takes its
    shard of the one global order (tools/distributed.shard). With sample_weights, an epoch draws
    as many items with replacement, item i with probability proportional to sample_weights[i].
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int, sample_weights: Optional[np.ndarray] = None):
        self.num_samples, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0
        self.sample_weights = sample_weights

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._global_order())

    def _global_order(self) -> list:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.sample_weights is not None:
            order = rng.choice(self.num_samples, self.num_samples, p=self.sample_weights / self.sample_weights.sum())
        else:
            order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        sample_seeds = rng.integers(0, 2**31, self.num_samples)
        return distributed.shard(list(zip(order.tolist(), sample_seeds.tolist())), pad=self.shuffle)

    def __iter__(self):
        return iter(self._global_order())


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device, seed: int,
                sampler=None, drop_last: bool = False, sample_weights: Optional[np.ndarray] = None) -> DataLoader:
    """A DataLoader; datasets with `takes_sample_seeds` get a SeededSampler (exactly reproducible augmentation).

    batch_size is per process: under torchrun the global batch is batch_size * world size.
    """
    generator = torch.Generator().manual_seed(seed)
    if sampler is None and getattr(dataset, "takes_sample_seeds", False):
        sampler = SeededSampler(len(dataset), shuffle, seed, sample_weights)
    elif workers == 0 and hasattr(dataset, "augment"):
        seed_augmentation(dataset.augment, seed)  # seed_worker only runs in worker processes
    if workers > 0:
        # Workers are processes already; an OpenCV thread pool inherited through fork can deadlock in the
        # child and otherwise only fights the main process for the cores. Set it before the fork.
        cv2.setNumThreads(1)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=seed_worker, generator=generator, drop_last=drop_last,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision on CUDA only (bf16 where supported); on CPU bf16 autocast is far slower than fp32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


class ModelEma:
    """Exponential moving average of a model's weights (and BatchNorm statistics).

    The decay ramps up as (1 + step) / (10 + step) towards `decay`, so that in a short run the
    average is not dominated by the first, random weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if average.dtype.is_floating_point:
                average.lerp_(current.detach(), 1 - decay)
            else:
                average.copy_(current)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW without decay on norms and biases (decaying them only shrinks the outputs' scale)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def to_device(batch, device: torch.device, channels_last: bool = False):
    inputs, targets = batch
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """torch.autocast in amp_dtype, or a no-op context when amp_dtype is None (fp32)."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def check_finite(loss_value: float, task: Task, epoch: int, step: int) -> None:
    """Stop on a nan/inf loss, on every rank at once (a rank that stopped alone would hang the others)."""
    (finite_ranks,) = distributed.sum_across_ranks(float(math.isfinite(loss_value)))
    if finite_ranks < distributed.world_size():
        raise TrainingDiverged(
            f"{task.name}: loss became {loss_value} at epoch {epoch}, step {step}; the last good checkpoint "
            f"is kept; lower --lr or check the inputs")


def forward_loss(model, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable, accel: Acceleration) -> torch.Tensor:
    with autocast(inputs.device, accel.amp_dtype):
        return loss_fn(model(inputs), targets)


def backward_and_step(loss: torch.Tensor, optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
    """Gradients of `loss` and one optimiser step, through the fp16 loss scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------- one epoch

def train_one_epoch(model, loader, task: Task, optimizer, scheduler, device, epoch: int, accel: Acceleration,
                    scaler: Optional[torch.amp.GradScaler] = None, ema: Optional[ModelEma] = None) -> Dict[str, float]:
    """One pass over the training data. `model` may be wrapped (DDP, compiled); `ema` averages the bare model."""
    model.train()
    total_loss, seen = 0.0, 0
    progress = tqdm(loader, desc=f"{task.name} epoch {epoch}", unit="batch", leave=False)
    for step, batch in enumerate(progress):
        inputs, targets = to_device(batch, device, accel.channels_last)
        loss = forward_loss(model, inputs, targets, task.loss, accel)
        loss_value = loss.item()  # the step's one wait for the device
        check_finite(loss_value, task, epoch, step)
        backward_and_step(loss, optimizer, scaler)
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model), scheduler.last_epoch)
        total_loss += loss_value * len(inputs)
        seen += len(inputs)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    total_loss, seen = distributed.sum_across_ranks(total_loss, seen)
    return {"loss": total_loss / max(seen, 1), "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model, loader, task: Task, device, accel: Optional[Acceleration] = None) -> Dict[str, float]:
    """Loss and the task's metrics over `loader`; under torchrun each rank scores its shard and the meters are merged."""
    accel = accel or Acceleration()
    model.eval()
    meter = task.new_meter()
    total_loss, seen = 0.0, 0
    for batch in tqdm(loader, desc=f"{task.name} validation", unit="batch", leave=False):
        inputs, targets = to_device(batch, device, accel.channels_last)
        with autocast(device, accel.amp_dtype):
            outputs = model(inputs)
            loss = task.loss(outputs, targets)
        total_loss += loss.item() * len(inputs)
        seen += len(inputs)
        meter.update(outputs, targets)
    total_loss, seen = distributed.sum_across_ranks(total_loss, seen)
    meters = distributed.gather_objects(meter)
    for other in meters[1:]:
        meters[0].merge(other)
    return {"loss": total_loss / max(seen, 1), **meters[0].compute()}


# ---------------------------------------------------------------- wrapping for training

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a kill during the save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp_path:
        torch.save(state, tmp_path)


def load_checkpoint(path: Path, stage: str) -> Dict[str, Any]:
    """Load a checkpoint of `stage` onto the CPU, with a clear error for a missing or wrong file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train the {stage} stage first or pass its path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"{path}: not a readable checkpoint ({type(error).__name__}); retrain or pass another file")
    if not isinstance(checkpoint, dict) or checkpoint.get("stage") != stage:
        found = checkpoint.get("stage", "unknown") if isinstance(checkpoint, dict) else "unknown"
        raise UserError(f"{path}: is a {found} checkpoint, expected {stage}; pass the {stage} checkpoint")
    return checkpoint


def rng_states() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


# ---------------------------------------------------------------- the loop

@dataclass
class RunState:
    """What a checkpoint holds besides weights, so that a run can resume or be rebuilt."""

    stage: str
    args: Dict[str, Any]
    model_config: Dict[str, Any]  # keyword arguments that rebuild the model
    class_names: Optional[list] = None


def check_resume_compatible(path: Path, checkpoint: Dict[str, Any], run: RunState) -> None:
    """A resumed run must rebuild the model it saved, with the same classes: say what differs, not a state-dict dump."""
    saved = {**checkpoint.get("model_config", {}), "class_names": checkpoint.get("class_names")}
    wanted = {**run.model_config, "class_names": run.class_names}
    differing = [key for key in sorted(saved.keys() | wanted.keys()) if saved.get(key) != wanted.get(key)]
    if differing:
        made = ", ".join(f"{key} {saved.get(key)}" for key in differing)
        asked = ", ".join(f"{key} {wanted.get(key)}" for key in differing)
        raise UserError(f"{path}: cannot resume: the checkpoint was made with {made}, this run has {asked}; "
                        f"resume with the checkpoint's settings, or drop --resume to start a new run")


def fit(model, task: Task, train_loader, val_loader, optimizer, scheduler, device, epochs: int, run: RunState,
        checkpoint_dir: Path, log_dir: Path, resume: Optional[Path] = None, accel: Optional[Acceleration] = None,
        ema_decay: float = 0.0) -> Dict[str, Any]:
    """Train for `epochs`, validating each epoch; keep <stage>_last.pth and <stage>_best.pth.

    With ema_decay > 0 the weights validated and saved as "model" are the moving average (the raw
    ones are saved too, to resume). Under torchrun only rank 0 logs and writes checkpoints.
    Returns the best validation metrics.
    """
    accel = accel or Acceleration()
    scaler = accel.grad_scaler(device)
    main_process = distributed.is_main_process()
    start_epoch, best_score, best_metrics = 1, -math.inf, {}
    if resume is not None:
        checkpoint = load_checkpoint(resume, run.stage)
        check_resume_compatible(resume, checkpoint, run)
        model.load_state_dict(checkpoint.get("raw_model", checkpoint["model"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_score = checkpoint["epoch"] + 1, checkpoint["best_metric"]
        best_metrics = checkpoint.get("best_metrics", {})
        if checkpoint.get("rng"):
            restore_rng_states(checkpoint["rng"])  # dropout and the like continue as if never stopped
        print(f"resumed {run.stage} from {resume} at epoch {start_epoch}")
    training_model = wrap_for_training(model, accel, device)
    ema = ModelEma(model, ema_decay) if ema_decay > 0 else None
    if ema is not None and resume is not None and "raw_model" in checkpoint:
        ema.module.load_state_dict(checkpoint["model"])

    writer = None
    if main_process:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "args.json").write_text(json.dumps(run.args, indent=1, default=str))
        writer = SummaryWriter(str(log_dir))
    try:
        for epoch in range(start_epoch, epochs + 1):
            started = time.time()
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            train_stats = train_one_epoch(training_model, train_loader, task, optimizer, scheduler, device, epoch, accel,
                                          scaler, ema)
            scored_model = ema.module if ema is not None else model
            val_stats = evaluate(scored_model, val_loader, task, device, accel)
            score = val_stats[task.monitor]
            is_best = score > best_score
            if is_best:
                best_score, best_metrics = score, dict(val_stats, epoch=epoch)
            if not main_process:
                continue
            state = {
                "stage": run.stage, "model": scored_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_metric": best_score, "best_metrics": best_metrics, "monitor": task.monitor,
                "args": run.args, "model_config": run.model_config, "class_names": run.class_names,
                "rng": rng_states(),
            }
            if ema is not None:
                state["raw_model"] = model.state_dict()
            save_checkpoint(checkpoint_dir / f"{run.stage}_last.pth", state)
            if is_best:
                save_checkpoint(checkpoint_dir / f"{run.stage}_best.pth", state)
            log_epoch(writer, log_dir, epoch, train_stats, val_stats, time.time() - started)
            print(f"{run.stage} epoch {epoch}/{epochs}  train loss {train_stats['loss']:.4f}  "
                  f"val {task.monitor} {score:.4f}{'  (best)' if is_best else ''}")
    finally:
        if writer is not None:
            writer.close()
    distributed.barrier()  # the other ranks wait until rank 0 has written the last checkpoint
    return best_metrics


def log_epoch(writer: SummaryWriter, log_dir: Path, epoch: int, train_stats: Dict, val_stats: Dict, seconds: float) -> None:
    """TensorBoard scalars plus one JSON line per epoch in log.txt."""
    for name, value in train_stats.items():
        writer.add_scalar(f"train/{name}", value, epoch)
    for name, value in val_stats.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"val/{name}", value, epoch)
    line = {"epoch": epoch, "seconds": round(seconds, 1), **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"val_{k}": v for k, v in val_stats.items() if isinstance(v, (int, float))}}
    with open(log_dir / "log.txt", "a") as log:
        log.write(json.dumps(line) + "\n")
