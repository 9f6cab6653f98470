"""The one training engine both stages use: epoch loop, validation, checkpoints, logging.

A stage supplies a `Task` (its loss, its metric meter, the metric that picks the best checkpoint);
everything else here is shared.
"""
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from timm.utils import unwrap_model
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tools import distributed
from tools.acceleration import Acceleration, autocast, to_device, wrap_for_training
from tools.checkpoint import (
    RunState,
    check_resume_compatible,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from tools.optim import ModelEma
from utils.errors import UserError, note_kept


@dataclass
class Task:
    name: str  # "segmentation" or "classification": names checkpoints and log folders
    loss: Callable[[Any, torch.Tensor], torch.Tensor]  # (model outputs, targets) -> scalar
    new_meter: Callable[[], Any]  # () -> object with update(outputs, targets) and compute() -> dict
    monitor: str  # validation metric (higher is better) that picks the best checkpoint
    keep_final: bool = False  # <stage>_best.pth is the last epoch's model, not the best-scoring one


class TrainingDiverged(UserError):
    pass


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def check_finite(loss_value: float, task: Task, epoch: int, step: int) -> None:
    """Stop on a nan/inf loss, on every rank at once (a rank that stopped alone would hang the others)."""
    (finite_ranks,) = distributed.sum_across_ranks(float(math.isfinite(loss_value)))
    if finite_ranks < distributed.world_size():
        raise TrainingDiverged(
            f"{task.name}: loss became {loss_value} at epoch {epoch}, step {step}; the last good checkpoint "
            f"is kept; lower --lr or check the inputs")


def call(model, inputs):
    """model(inputs), or model(*inputs) when a batch carries several inputs (cell image and measurements)."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def forward_loss(model, inputs, targets: torch.Tensor, loss_fn: Callable, accel: Acceleration) -> torch.Tensor:
    with autocast(targets.device, accel.amp_dtype):
        return loss_fn(call(model, inputs), targets)


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
            ema.update(unwrap_model(model), scheduler.last_epoch)
        total_loss += loss_value * len(targets)
        seen += len(targets)
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
            outputs = call(model, inputs)
            loss = task.loss(outputs, targets)
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        meter.update(outputs, targets)
    total_loss, seen = distributed.sum_across_ranks(total_loss, seen)
    meters = distributed.gather_objects(meter)
    for other in meters[1:]:
        meters[0].merge(other)
    return {"loss": total_loss / max(seen, 1), **meters[0].compute()}


# ---------------------------------------------------------------- the loop

@dataclass
class Resumed:
    """Where a resumed run picks up."""

    start_epoch: int = 1
    best_score: float = -math.inf
    best_metrics: Optional[Dict[str, Any]] = None
    ema_weights: Optional[Dict[str, torch.Tensor]] = None


def resume_training(path: Path, run: RunState, model, optimizer, scheduler, scaler) -> Resumed:
    """Load a checkpoint into the model, optimiser, schedule, scaler and RNGs, after checking that it fits this run."""
    checkpoint = load_checkpoint(path, run.stage)
    check_resume_compatible(path, checkpoint, run)
    model.load_state_dict(checkpoint.get("raw_model", checkpoint["model"]))
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint.get("rng"):
        restore_rng_states(checkpoint["rng"])  # dropout and the like continue as if never stopped
    print(f"resumed {run.stage} from {path} at epoch {checkpoint['epoch'] + 1}")
    return Resumed(checkpoint["epoch"] + 1, checkpoint["best_metric"], checkpoint.get("best_metrics", {}),
                   checkpoint["model"] if "raw_model" in checkpoint else None)


def fit(model, task: Task, train_loader, val_loader, optimizer, scheduler, device, epochs: int, run: RunState,
        checkpoint_dir: Path, log_dir: Path, resume: Optional[Path] = None, accel: Optional[Acceleration] = None,
        ema_decay: float = 0.0) -> Dict[str, Any]:
    """Train for `epochs`, validating each epoch; keep <stage>_last.pth and <stage>_best.pth (task.keep_final: the
    last epoch's, else the epoch best on task.monitor).

    With ema_decay > 0 the weights validated and saved as "model" are the moving average (the raw
    ones are saved too, to resume). Under torchrun only rank 0 logs and writes checkpoints.
    Returns the validation metrics of the model kept as best.
    """
    accel = accel or Acceleration()
    scaler = accel.grad_scaler(device)
    main_process = distributed.is_main_process()
    resumed = resume_training(resume, run, model, optimizer, scheduler, scaler) if resume is not None else Resumed()
    best_score, best_metrics = resumed.best_score, resumed.best_metrics or {}
    training_model = wrap_for_training(model, accel, device)
    ema = ModelEma(model, ema_decay) if ema_decay > 0 else None
    if ema is not None and resumed.ema_weights is not None:
        ema.module.load_state_dict(resumed.ema_weights)

    writer = open_logs(log_dir, run, fresh=resume is None) if main_process else None
    try:
        for epoch in range(resumed.start_epoch, epochs + 1):
            started = time.time()
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            train_stats = train_one_epoch(training_model, train_loader, task, optimizer, scheduler, device, epoch, accel,
                                          scaler, ema)
            scored_model = ema.module if ema is not None else model
            val_stats = evaluate(scored_model, val_loader, task, device, accel)
            score = val_stats[task.monitor]
            is_best = task.keep_final or score > best_score
            if is_best:
                best_score, best_metrics = score, dict(val_stats, epoch=epoch)
            if not main_process:
                continue
            state = {
                "stage": run.stage, "model": scored_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_metric": best_score, "best_metrics": best_metrics, "monitor": task.monitor,
                "args": run.args, "model_config": run.model_config, "class_names": run.class_names,
                "provenance": run.provenance, "rng": rng_states(), **run.extra,
            }
            if ema is not None:
                state["raw_model"] = model.state_dict()
            save_checkpoint(checkpoint_dir / f"{run.stage}_last.pth", state)
            if is_best:
                save_checkpoint(checkpoint_dir / f"{run.stage}_best.pth", state)
            note_kept(f"{run.stage} checkpoints up to epoch {epoch} are kept in {checkpoint_dir}; --resume continues")
            log_epoch(writer, log_dir, epoch, train_stats, val_stats, time.time() - started)
            print(f"{run.stage} epoch {epoch}/{epochs}  train loss {train_stats['loss']:.4f}  "
                  f"val {task.monitor} {score:.4f}{'  (best)' if is_best and not task.keep_final else ''}")
    finally:
        if writer is not None:
            writer.close()
    distributed.barrier()  # the other ranks wait until rank 0 has written the last checkpoint
    return best_metrics


def open_logs(log_dir: Path, run: RunState, fresh: bool) -> SummaryWriter:
    """args.json and a TensorBoard writer; a fresh (not resumed) run starts log.txt anew."""
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "args.json").write_text(json.dumps(run.args, indent=1, default=str))
    if fresh:
        (log_dir / "log.txt").unlink(missing_ok=True)
    return SummaryWriter(str(log_dir))


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
