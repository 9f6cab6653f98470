"""Behaviour of model/classification_model.py: the 5-channel classifier, its SE block and attention head."""
import math

import pytest
import timm
import torch

from model.classification_model import (
    AttentionPoolingHead,
    ConvNeXtAttentionClassifier,
    SEBlock,
)


def build(num_classes=4, backbone="test_convnext", **kwargs):
    torch.manual_seed(0)
    return ConvNeXtAttentionClassifier(num_classes, backbone=backbone, **kwargs)


@pytest.fixture(scope="module")
def tiny_model():
    return build().eval()


@pytest.mark.parametrize("backbone,num_classes", [("test_convnext", 4), ("convnext_atto", 5), ("test_efficientnet", 2)])
def test_logits_per_class_from_five_channels(backbone, num_classes):
    model = build(num_classes, backbone).eval()
    x = torch.randn(3, 5, 64, 64)
    with torch.no_grad():
        logits = model(x)
        first_alone = model(x[:1])
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()
    # in eval mode a row depends on its own image only, and different images give different rows
    assert torch.allclose(logits[:1], first_alone, atol=1e-5)
    assert not torch.allclose(logits[0], logits[1])


def test_stem_takes_five_channels_by_default(tiny_model):
    assert tiny_model.backbone.stem[0].in_channels == 5
    with pytest.raises(RuntimeError):
        tiny_model(torch.randn(1, 3, 64, 64))


def test_in_chans_3_also_works():
    model = build(3, in_chans=3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_mask_channels_change_the_prediction(tiny_model):
    """The cell and nucleus mask channels are real inputs, not ignored extras."""
    x = torch.randn(1, 5, 64, 64)
    masked = x.clone()
    masked[:, 3:] = 0
    with torch.no_grad():
        assert not torch.allclose(tiny_model(x), tiny_model(masked))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_train_mode_batch_two_has_no_nan(size):
    # 32 px gives a 1x1 last-stage map: a single spatial token to attend over
    model = build().train()
    logits = model(torch.randn(2, 5, size, size))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def trainable_without_grad(model):
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]


def test_gradients_reach_every_parameter_efficientnet():
    model = build(backbone="test_efficientnet").train()
    model(torch.randn(2, 5, 64, 64)).sum().backward()
    assert trainable_without_grad(model) == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradients_reach_every_parameter_convnext_final_norm_included():
    # timm keeps ConvNeXt's final LayerNorm in its head: the classifier must run it, not forward_features alone
    model = build().train()
    model(torch.randn(2, 5, 64, 64)).sum().backward()
    assert trainable_without_grad(model) == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("backbone", ["test_convnext", "test_efficientnet"])
def test_features_are_the_last_stage_map(backbone):
    model = build(backbone=backbone).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 5, 64, 96))
    assert features.shape == (2, model.backbone.num_features, 2, 3)


# ---------------------------------------------------------------- the attention head

@pytest.fixture
def head():
    torch.manual_seed(0)
    head = AttentionPoolingHead(in_features=16, num_classes=3)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is not an identity BN
        for module in head.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return head.eval()


def test_head_attends_over_spatial_tokens(head):
    """The attention really looks at the spatial tokens, not just at the pooled vector.

    A change at one position moves the output; and a change that leaves the global average untouched
    (+d at one position, -d at another) still moves it. A head that only saw the pooled vector (or that
    attended over the single pooled token, which reduces to a linear map) could not see the second change.
    """
    torch.manual_seed(1)
    fmap = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        base = head(fmap)
        one_position = fmap.clone()
        one_position[0, :, 2, 1] += 3.0
        assert not torch.allclose(head(one_position), base, atol=1e-4)

        same_mean = fmap.clone()
        delta = 3.0 * torch.randn(16)
        same_mean[0, :, 0, 0] += delta
        same_mean[0, :, 3, 2] -= delta
        assert torch.allclose(same_mean.mean(dim=(2, 3)), fmap.mean(dim=(2, 3)), atol=1e-6)
        assert not torch.allclose(head(same_mean), base, atol=1e-4)


def test_head_query_is_the_pooled_token_and_keys_are_the_positions(head):
    """With identical tokens everywhere the attended value is that token, whatever the grid size."""
    vector = torch.randn(1, 16, 1, 1)
    with torch.no_grad():
        outputs = [head(vector.expand(1, 16, n, n).contiguous()) for n in (1, 2, 5)]
    for out in outputs[1:]:
        assert torch.allclose(out, outputs[0], atol=1e-5)


def test_head_has_no_positional_encoding(head):
    """Documented property: attention pooling without positions is invariant to permuting the grid."""
    torch.manual_seed(2)
    fmap = torch.randn(2, 16, 3, 3)
    permuted = fmap.flatten(2)[:, :, torch.randperm(9)].view(2, 16, 3, 3)
    with torch.no_grad():
        assert torch.allclose(head(fmap), head(permuted), atol=1e-5)


def test_head_works_on_a_1x1_map(head):
    with torch.no_grad():
        out = head(torch.randn(3, 16, 1, 1))
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    head.train()
    assert torch.isfinite(head(torch.randn(2, 16, 1, 1))).all()


def test_single_position_change_reaches_the_full_model_output(tiny_model):
    with torch.no_grad():
        fmap = tiny_model.forward_features(torch.randn(1, 5, 64, 64))
        changed = fmap.clone()
        changed[0, :, 1, 0] += 2.0
        assert not torch.allclose(tiny_model.head(fmap), tiny_model.head(changed), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 32, 4, 4), (1, 8, 1, 1), (3, 64, 2, 3)])
def test_se_block_preserves_shape_and_scales_channels(shape):
    torch.manual_seed(0)
    se = SEBlock(shape[1]).eval()
    x = torch.rand(shape) + 0.1
    y = se(x)
    assert y.shape == x.shape
    ratio = y / x
    # one weight per channel and sample, shared by every position, in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()


# ---------------------------------------------------------------- pretrained weights from a local file

def test_pretrained_file_loads_backbone_and_adapts_stem(tmp_path):
    torch.manual_seed(123)
    source = timm.create_model("test_convnext", in_chans=3)
    weights = tmp_path / "test_convnext.pth"
    torch.save(source.state_dict(), weights)

    model = build(3, in_chans=5, pretrained_file=str(weights))
    saved, loaded = source.state_dict(), model.backbone.state_dict()
    assert set(loaded) == set(saved) - {"head.fc.weight", "head.fc.bias"}  # the classifier is replaced
    for name, value in loaded.items():
        if name != "stem.0.weight":
            assert torch.equal(value, saved[name]), name
    # timm adapts the RGB stem to 5 channels: RGB filters repeated over the channels, rescaled by 3/5
    stem, rgb = loaded["stem.0.weight"], saved["stem.0.weight"]
    assert stem.shape == (rgb.shape[0], 5, *rgb.shape[2:])
    expected = rgb.repeat(1, math.ceil(5 / 3), 1, 1)[:, :5] * (3 / 5)
    assert torch.allclose(stem, expected, atol=1e-6)
    # a model built without the file has other weights
    assert not torch.equal(build(3).backbone.state_dict()["stages.3.blocks.0.mlp.fc1.weight"],
                           loaded["stages.3.blocks.0.mlp.fc1.weight"])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 5, 64, 64))).all()
