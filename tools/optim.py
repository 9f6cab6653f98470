"""What the training loop steps besides the model: the optimiser, the learning-rate schedule, the weight EMA."""
import math

import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """timm's AdamW parameter groups: no decay on norms and biases (decaying them only shrinks the outputs' scale)."""
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, fused=fused or None)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to the peak lr over warmup_steps, then a cosine decay to 0 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEma(ModelEmaV3):
    """timm's exponential moving average of the weights (and BatchNorm statistics), with a warming decay.

    The decay after optimiser step t is min(decay, (1 + t) / (10 + t)), so that in a short run the average
    is not dominated by the first, random weights. timm's warm-up with gamma 9 and power 1 is
    1 - 9 / (9 + s) at s = its step - 1, which is that ramp at its step = t + 2.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, decay=decay, use_warmup=True, warmup_gamma=9.0, warmup_power=1.0)
        self.module.requires_grad_(False)  # the average is never trained (timm's deepcopy keeps requires_grad)

    def update(self, model: torch.nn.Module, step: int) -> None:
        super().update(model, step=step + 2)
