"""Grad-CAM: agrees with a hook-based computation on the full forward pass, per cell, in [0, 1] at the input's size;
and the blend that draws it over a cell."""
import torch
import torch.nn.functional as F

from model.classification_model import ConvNeXtAttentionClassifier
from tools.gradcam import grad_cam


def tiny_classifier():
    torch.manual_seed(0)
    return ConvNeXtAttentionClassifier(num_classes=3, backbone="test_convnext").eval()


def hooked_grad_cam(model, inputs, class_index):
    """Reference: capture the SE output of model(inputs) with a hook and take its gradient."""
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["features"] = output

    handle = model.se.register_forward_hook(keep)
    try:
        model(inputs)[:, class_index].sum().backward()
    finally:
        handle.remove()
    features = captured["features"]
    cam = F.relu((features.grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]).detach()


def test_matches_hook_on_full_forward_pass():
    model, inputs = tiny_classifier(), torch.randn(1, 5, 64, 64)
    for class_index in range(3):
        assert torch.allclose(grad_cam(model, inputs, [class_index]), hooked_grad_cam(model, inputs, class_index), atol=1e-5)


def test_each_cell_explained_on_its_own():
    model, inputs = tiny_classifier(), torch.randn(3, 5, 64, 64)
    together = grad_cam(model, inputs, [0, 2, 1])
    alone = torch.cat([grad_cam(model, inputs[i:i + 1], [c]) for i, c in enumerate([0, 2, 1])])
    assert torch.allclose(together, alone, atol=1e-5)


def test_heatmaps_at_input_size_in_unit_range():
    model = tiny_classifier()
    heatmaps = grad_cam(model, torch.randn(2, 5, 64, 64), [1, 1])
    assert heatmaps.shape == (2, 64, 64)
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0 + 1e-6 and not torch.isnan(heatmaps).any()
    assert all(p.grad is None for p in model.parameters())  # explaining leaves no gradients behind
