"""Temperature scaling (Guo et al., 2017): one scalar T fitted on the validation split, probabilities = softmax(logits / T).

T divides every logit alike, so the predicted class never changes; only how sure the model says it is.
main_classify.py fits T after training and stores it in the classification checkpoints
(checkpoint["temperature"]); evaluate.py and predict.py read it (1.0 for a checkpoint without one).
"""
import argparse
import math
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from tools.datasets import ClassificationDataset, prepare_cells
from tools.engine import autocast, autocast_dtype, make_loader, resolve_device, save_checkpoint
from tools.inference import FLIP_DIMS, load_model
from tools.splits import open_split

# Trained nets land within about 0.5-3 (label smoothing makes them under-confident, T < 1). A fit that runs past
# a factor 5 either way says more about the validation split (too small, or every cell right by a wide margin,
# where the NLL falls without end as T -> 0) than about the model; it stops at the bound.
TEMPERATURE_RANGE = (0.2, 5.0)


def temperature_nll(view_logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the view-averaged softmax(logits / T).

    Args:
        view_logits: [V, N, K] logits of V test-time views (flips) of N cells; V = 1 for plain logits.
        labels: [N] class indices.
        temperature: scalar tensor.
    """
    log_probs = torch.log_softmax(view_logits / temperature, dim=-1)  # [V, N, K]
    log_mean_probs = torch.logsumexp(log_probs, dim=0) - math.log(view_logits.shape[0])  # log of the mean over views
    return F.nll_loss(log_mean_probs, labels)


def fit_temperature(logits, labels, temperature_range: Tuple[float, float] = TEMPERATURE_RANGE) -> float:
    """The T that minimises the NLL of softmax(logits / T), found by L-BFGS on log T and kept inside temperature_range.

    Args:
        logits: [N, K], or [V, N, K] for V test-time views whose softmaxes are averaged (as predict_class_probs does),
            so that T calibrates the probabilities the scripts report.
        labels: [N] class indices.

    Returns:
        T as a float.
    """
    view_logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    view_logits = view_logits[None] if view_logits.ndim == 2 else view_logits
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    low, high = (math.log(bound) for bound in temperature_range)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # clamped: past a bound the gradient is zero and L-BFGS stops there instead of running off to 0 or infinity
        loss = temperature_nll(view_logits, labels, log_temperature.clamp(low, high).exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    lowest, highest = temperature_range
    return min(max(float(log_temperature.detach().exp()), lowest), highest)  # clamped again: exp(log(bound)) may miss the bound by an ulp


@torch.no_grad()
def flip_view_logits(model, loader, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Logits of every cell under each of predict_class_probs' flips. Returns (logits [V, N, K], labels [N])."""
    amp_dtype = autocast_dtype(device)
    views, labels = [], []
    for inputs, batch_labels in loader:
        inputs = inputs.to(device)
        with autocast(device, amp_dtype):
            views.append(torch.stack([model(inputs.flip(dims) if dims else inputs).float() for dims in FLIP_DIMS]).cpu())
        labels.append(batch_labels)
    return torch.cat(views, dim=1).numpy(), torch.cat(labels).numpy()


def calibrate_checkpoints(args: argparse.Namespace, mask_provider_for: Callable) -> Dict[str, float]:
    """Fit T on the validation split for classification_{best,last}.pth under <output-dir>/checkpoints and store it in each.

    Each checkpoint gets the T of its own weights (the same one when the last epoch was the best).

    Args:
        args: main_classify.py's resolved arguments.
        mask_provider_for: (args, records, device) -> the masks the classifier was trained on
            (train_classify.mask_provider).

    Returns:
        the best checkpoint's {"temperature", "nll_before", "nll_after", "num_cells"} (NLL on the val split).
    """
    device = resolve_device(args.device)
    val_records = open_split(args).by_split["val"]
    cells = prepare_cells(val_records, args.img_size, mask_provider_for(args, val_records, device), "loading val cells",
                          args.cache_dir)
    fitted_by_epoch: Dict[int, Dict[str, float]] = {}
    for name in ("last", "best"):
        path = Path(args.output_dir) / "checkpoints" / f"classification_{name}.pth"
        model, checkpoint = load_model(path, "classification", device)
        epoch = checkpoint["epoch"]
        if epoch not in fitted_by_epoch:
            loader = make_loader(ClassificationDataset(cells, checkpoint["class_names"], train=False),
                                 args.batch_size, False, 0, device, args.seed)
            fitted_by_epoch[epoch] = fit_on_logits(*flip_view_logits(model, loader, device))
        checkpoint["temperature"] = fitted_by_epoch[epoch]["temperature"]
        save_checkpoint(path, checkpoint)  # atomic: a kill here leaves the old checkpoint, which reads as T = 1
    return fitted_by_epoch[epoch]  # the best checkpoint's: it came last


def fit_on_logits(view_logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    temperature = fit_temperature(view_logits, labels)
    logits, targets = torch.as_tensor(view_logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.long)
    return {
        "temperature": temperature,
        "nll_before": float(temperature_nll(logits, targets, torch.tensor(1.0))),
        "nll_after": float(temperature_nll(logits, targets, torch.tensor(temperature))),
        "num_cells": int(len(labels)),
    }


def describe_fit(fitted: Dict[str, float]) -> str:
    """One line for the console (two when T stopped at a bound of TEMPERATURE_RANGE)."""
    text = (f"calibration: temperature {fitted['temperature']:.3f} fitted on {fitted['num_cells']} val cells (val NLL "
            f"{fitted['nll_before']:.4f} -> {fitted['nll_after']:.4f}), stored in the classification checkpoints")
    if fitted["temperature"] in TEMPERATURE_RANGE:
        text += ("\nnote: the temperature stopped at a bound of its range: the val split is too small or too easy "
                 "(every cell right by a wide margin) to pin it down; read the probabilities as rough")
    return text
