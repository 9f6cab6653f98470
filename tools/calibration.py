"""Temperature scaling (Guo et al., 2017): one scalar T fitted on the validation split, probabilities = softmax(logits / T).

T divides every logit alike, so the predicted class never changes; only how sure the model says it is.
main_classify.py fits T after training and stores it in the classification checkpoints
(checkpoint["temperature"]); evaluate.py and predict.py read it (1.0 for a checkpoint without one).
"""
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from tools.cell_cache import PreparedCells
from tools.checkpoint import load_model, save_checkpoint
from tools.inference import CellPipeline, TorchBackend, batched
from tools.run_dir import RunPaths
from utils.preprocessing import cell_channels

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
        logits: [N, K], or [V, N, K] for V test-time views whose softmaxes are averaged (as CellPipeline.class_probs does),
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
    # clamped again: exp(log(bound)) may miss the bound by an ulp
    return min(max(float(log_temperature.detach().exp()), lowest), highest)


def view_logits_of_cells(pipeline, cells: PreparedCells, class_names: Sequence[str],
                         batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Classifier logits of prepared cells under each of the pipeline's flips: (logits [V, N, K], labels [N])."""
    views = []
    for chunk in batched(range(len(cells.images)), batch_size):
        inputs = [np.stack([cell_channels(cells.images[i], cells.masks[i]) for i in chunk])]
        if cells.measurements is not None:
            inputs.append(cells.measurements[list(chunk)])
        views.append(pipeline.view_logits(*inputs))
    labels = np.array([list(class_names).index(r.label) for r in cells.records])
    return np.concatenate(views, axis=1), labels


def calibrate_checkpoints(paths: RunPaths, val_cells: PreparedCells, device, batch_size: int) -> Dict[str, float]:
    """Fit T on the validation cells for classification_{best,last}.pth of a run and store it in each.

    Each checkpoint gets the T of its own weights (the same one when the last epoch was the best).

    Args:
        paths: the run folder.
        val_cells: the validation cells, with the masks the classifier was trained on.

    Returns:
        the best checkpoint's {"temperature", "nll_before", "nll_after", "num_cells"} (NLL on the val split).
    """
    fitted_by_epoch: Dict[int, Dict[str, float]] = {}
    for which in ("last", "best"):
        path = paths.checkpoint("classification", which)
        model, checkpoint = load_model(path, "classification", device)
        epoch = checkpoint["epoch"]
        if epoch not in fitted_by_epoch:
            pipeline = CellPipeline(None, 0, TorchBackend(model, device), checkpoint["args"]["img_size"],
                                    measures=bool(checkpoint["model_config"].get("num_measurements")))
            fitted_by_epoch[epoch] = fit_on_logits(*view_logits_of_cells(pipeline, val_cells, checkpoint["class_names"],
                                                                         batch_size))
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
