"""Grad-CAM (Selvaraju et al., 2017) for the cell classifier: which parts of the input drove a class score.

The map is taken on the classifier's last stage as the head sees it: forward_features() is the
backbone's last stage after the SE recalibration, and forward() = head(forward_features()), so
calling the two halves explicitly gives the feature map and its gradient without hooks.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def grad_cam(model, inputs: torch.Tensor, class_indices: Sequence[int],
             measurements: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Grad-CAM of one class per input, upsampled to the input's size.

    Args:
        model: a ConvNeXtAttentionClassifier in eval mode (BatchNorm then treats every cell on its own).
        inputs: [B, 5, S, S] classifier inputs, on the model's device.
        class_indices: B class indices, the class to explain for each input (usually the predicted one).
        measurements: [B, F] cell measurements, for a classifier that takes them (they are not explained).

    Returns:
        heatmaps [B, S, S] float in [0, 1] on the CPU; 1 is the strongest evidence for the class in that cell,
        all zeros where no position speaks for it.
    """
    classes = torch.as_tensor(list(class_indices), dtype=torch.long, device=inputs.device)
    with torch.enable_grad():
        features = model.forward_features(inputs)  # [B, C, S/32, S/32]
        extra = model.measurements(measurements) if model.measurements is not None else None
        logits = model.head(features, extra)  # [B, K]
        # Cells are independent in eval mode, so the gradient of the summed scores is each cell's own gradient
        class_scores = logits.gather(1, classes[:, None]).sum()
        (gradients,) = torch.autograd.grad(class_scores, features)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]: global-average-pooled gradients
    cams = F.relu((channel_weights * features.detach()).sum(dim=1, keepdim=True))  # [B, 1, S/32, S/32]
    cams = F.interpolate(cams, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # [B, S, S]
    peaks = cams.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cams / peaks).float().cpu()
