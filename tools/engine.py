"""The one training engine both stages use: epoch loop, validation, checkpoints, logging.

A stage supplies a `Task` (its loss, its metric meter, the metric that picks the best checkpoint);
everything else here is shared.
"""
import json
import math
import os
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

from tools.errors import UserError
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
    set_epoch() before every epoch, as with DistributedSampler.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int):
        self.num_samples, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        sample_seeds = rng.integers(0, 2**31, self.num_samples)
        return iter(zip(order.tolist(), sample_seeds.tolist()))


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device, seed: int,
                sampler=None, drop_last: bool = False) -> DataLoader:
    """A DataLoader; datasets with `takes_sample_seeds` get a SeededSampler (exactly reproducible augmentation)."""
    generator = torch.Generator().manual_seed(seed)
    if sampler is None and getattr(dataset, "takes_sample_seeds", False):
        sampler = SeededSampler(len(dataset), shuffle, seed)
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


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on norms and biases (decaying them only shrinks the outputs' scale)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def to_device(batch, device: torch.device):
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


# ---------------------------------------------------------------- one epoch

def train_one_epoch(model, loader, task: Task, optimizer, scheduler, device, epoch: int,
                    scaler: Optional[torch.amp.GradScaler] = None, amp_dtype=None) -> Dict[str, float]:
    model.train()
    total_loss, seen = 0.0, 0
    progress = tqdm(loader, desc=f"{task.name} epoch {epoch}", unit="batch", leave=False)
    for step, batch in enumerate(progress):
        inputs, targets = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = task.loss(model(inputs), targets)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{task.name}: loss became {loss.item()} at epoch {epoch}, step {step}; the last good checkpoint "
                f"is kept; lower --lr or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(inputs)
        seen += len(inputs)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    return {"loss": total_loss / max(seen, 1), "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model, loader, task: Task, device, amp_dtype=None) -> Dict[str, float]:
    model.eval()
    meter = task.new_meter()
    total_loss, seen = 0.0, 0
    for batch in tqdm(loader, desc=f"{task.name} validation", unit="batch", leave=False):
        inputs, targets = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(inputs)
            loss = task.loss(outputs, targets)
        total_loss += loss.item() * len(inputs)
        seen += len(inputs)
        meter.update(outputs, targets)
    return {"loss": total_loss / max(seen, 1), **meter.compute()}


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a kill during the save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    torch.save(state, tmp_path)
    os.replace(tmp_path, path)


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
        checkpoint_dir: Path, log_dir: Path, resume: Optional[Path] = None) -> Dict[str, Any]:
    """Train for `epochs`, validating each epoch; keep <stage>_last.pth and <stage>_best.pth.

    Returns the best validation metrics.
    """
    amp_dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    start_epoch, best_score, best_metrics = 1, -math.inf, {}
    if resume is not None:
        checkpoint = load_checkpoint(resume, run.stage)
        check_resume_compatible(resume, checkpoint, run)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_score = checkpoint["epoch"] + 1, checkpoint["best_metric"]
        best_metrics = checkpoint.get("best_metrics", {})
        if checkpoint.get("rng"):
            restore_rng_states(checkpoint["rng"])  # dropout and the like continue as if never stopped
        print(f"resumed {run.stage} from {resume} at epoch {start_epoch}")

    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "args.json").write_text(json.dumps(run.args, indent=1, default=str))
    writer = SummaryWriter(str(log_dir))
    try:
        for epoch in range(start_epoch, epochs + 1):
            started = time.time()
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            train_stats = train_one_epoch(model, train_loader, task, optimizer, scheduler, device, epoch, scaler, amp_dtype)
            val_stats = evaluate(model, val_loader, task, device, amp_dtype)
            score = val_stats[task.monitor]
            is_best = score > best_score
            if is_best:
                best_score, best_metrics = score, dict(val_stats, epoch=epoch)
            state = {
                "stage": run.stage, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_metric": best_score, "best_metrics": best_metrics, "monitor": task.monitor,
                "args": run.args, "model_config": run.model_config, "class_names": run.class_names,
                "rng": rng_states(),
            }
            save_checkpoint(checkpoint_dir / f"{run.stage}_last.pth", state)
            if is_best:
                save_checkpoint(checkpoint_dir / f"{run.stage}_best.pth", state)
            log_epoch(writer, log_dir, epoch, train_stats, val_stats, time.time() - started)
            print(f"{run.stage} epoch {epoch}/{epochs}  train loss {train_stats['loss']:.4f}  "
                  f"val {task.monitor} {score:.4f}{'  (best)' if is_best else ''}")
    finally:
        writer.close()
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
