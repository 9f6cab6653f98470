"""Behaviour of model/segmentation_model.py: the dual-head attention U-Net and its blocks."""
import re

import pytest
import timm
import torch

from model.segmentation_model import (
    CBAM,
    HEADS,
    AttentionGate,
    ChannelAttention,
    DualHeadAttConvNeXtUNet,
    SpatialAttention,
)

SMALL = (32, 32, 32)  # decoder widths that keep every test fast


def build(backbone="test_convnext", decoder_channels=SMALL, **kwargs):
    torch.manual_seed(0)
    return DualHeadAttConvNeXtUNet(backbone, decoder_channels=decoder_channels, **kwargs)


@pytest.fixture(scope="module")
def tiny_model():
    return build().eval()


@pytest.mark.parametrize("height,width", [(64, 64), (96, 96), (128, 128), (64, 96), (96, 64)])
def test_output_is_one_logit_map_per_head_at_input_size(tiny_model, height, width):
    with torch.no_grad():
        out = tiny_model(torch.randn(2, 3, height, width))
    assert set(out) == set(HEADS) == {"cyt", "nuc"}
    for head in HEADS:
        assert out[head].shape == (2, 1, height, width)
        assert out[head].dtype == torch.float32
        assert torch.isfinite(out[head]).all()
    # two decoders with their own weights: the heads are not one map twice
    assert not torch.allclose(out["cyt"], out["nuc"])


@pytest.mark.parametrize("backbone", ["test_convnext", "convnext_atto", "test_efficientnet"])
def test_backbones_use_the_stride_4_to_32_features(backbone):
    model = build(backbone).eval()
    reductions = model.encoder.feature_info.reduction()
    # EfficientNet also yields a stride-2 map, which the decoder must skip
    assert [reductions[i] for i in model.feature_indices] == [4, 8, 16, 32]
    if backbone == "test_efficientnet":
        assert reductions[0] == 2 and model.feature_indices == [1, 2, 3, 4]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.encoder(x)
        out = model(x)
    for index, stride in zip(model.feature_indices, (4, 8, 16, 32)):
        assert features[index].shape[-2:] == (64 // stride, 96 // stride)
    assert all(out[h].shape == (1, 1, 64, 96) and torch.isfinite(out[h]).all() for h in HEADS)


def test_decoder_widths_follow_decoder_channels():
    model = build(decoder_channels=(48, 40, 24)).eval()
    encoder_channels = [model.encoder.feature_info.channels()[i] for i in model.feature_indices]
    assert encoder_channels == [24, 32, 48, 64]  # test_convnext
    for head in HEADS:
        decoder = model.decoders[head]
        assert [block.convs[1][0].out_channels for block in decoder.blocks] == [48, 40, 24]
        # each block takes the deeper width and the matching encoder skip (deep to shallow)
        assert [block.convs[0][0].in_channels for block in decoder.blocks] == [64 + 48, 48 + 32, 40 + 24]
        assert decoder.head.in_channels == 24 // 4
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["cyt"].shape == (1, 1, 64, 64)


@pytest.mark.parametrize("channels", [(256, 128), (64, 32, 16, 8), ()])
def test_bad_decoder_channels_length_is_a_value_error(channels):
    with pytest.raises(ValueError, match="3 widths"):
        DualHeadAttConvNeXtUNet("test_convnext", decoder_channels=channels)


def bias_before_batchnorm(model):
    """Names of biases feeding straight into a BatchNorm: in train mode BN subtracts the batch mean, so their
    gradient is zero by construction (the attention gate's psi conv is the only one here)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential):
            children = list(module.named_children())
            for (child_name, child), (_, following) in zip(children, children[1:]):
                if getattr(child, "bias", None) is not None and isinstance(following, torch.nn.BatchNorm2d):
                    names.add(f"{name}.{child_name}.bias")
    return names


def dead_channel_mlps(model):
    """Record, during the next forward, the CBAM channel MLPs whose hidden ReLU never fires.

    Their hidden layer is channels // 16 wide and fed by non-negative pooled features, so on a small random
    model all of it can start below zero; such an MLP has an exactly zero gradient for that input."""
    fired = {}
    for name, module in model.named_modules():
        if isinstance(module, ChannelAttention):
            def hook(_, __, output, name=name):
                fired[name] = fired.get(name, False) or bool(output.detach().amax() > 0)
            module.mlp[1].register_forward_hook(hook)
    return fired


@pytest.mark.parametrize("backbone", ["test_convnext", "test_efficientnet"])
def test_gradients_reach_every_parameter(backbone):
    model = build(backbone, decoder_channels=(64, 64, 64)).train()  # train mode, batch 2: BN uses batch stats
    fired = dead_channel_mlps(model)
    out = model(torch.randn(2, 3, 64, 64))
    (out["cyt"].sum() + out["nuc"].sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    exempt = bias_before_batchnorm(model)
    assert exempt and all(re.search(r"gate\.psi\.0\.bias$", n) for n in exempt)
    dead = {f"{name}.mlp.{i}.weight" for name, ok in fired.items() if not ok for i in (0, 2)}
    assert len(fired) == 6 and len(dead) <= 2 * 2, f"most channel attentions are dead at init: {dead}"
    zero = [n for n, p in model.named_parameters() if n not in exempt | dead and not p.grad.any()]
    assert not zero, f"parameters with an all-zero gradient: {zero}"

    # in eval mode BN uses running statistics, so even the biases before BN receive a gradient
    model.zero_grad()
    model.eval()
    out = model(torch.randn(2, 3, 64, 64))
    (out["cyt"].sum() + out["nuc"].sum()).backward()
    assert all(dict(model.named_parameters())[n].grad.any() for n in exempt)


def test_each_head_trains_only_its_own_decoder():
    model = build().train()
    out = model(torch.randn(2, 3, 64, 64))
    out["nuc"].sum().backward()
    for name, param in model.named_parameters():
        if name.startswith("decoders.cyt."):
            assert param.grad is None, name
        elif name.startswith("encoder."):
            assert param.grad is not None, name


def test_no_nan_on_extreme_but_finite_inputs(tiny_model):
    with torch.no_grad():
        for x in (torch.zeros(2, 3, 64, 64), torch.full((2, 3, 64, 64), 50.0), torch.randn(2, 3, 64, 64) * 10):
            out = tiny_model(x)
            assert all(torch.isfinite(out[h]).all() for h in HEADS)


def test_convnext_atto_batch_one_in_eval_and_batch_two_in_train():
    model = build("convnext_atto", decoder_channels=(64, 32, 32))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64))["cyt"].shape == (1, 1, 64, 64)
        out = model.train()(torch.randn(2, 3, 96, 64))
    assert out["nuc"].shape == (2, 1, 96, 64) and torch.isfinite(out["nuc"]).all()


def test_in_chans_changes_the_stem():
    model = build(in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64))["cyt"].shape == (1, 1, 64, 64)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 64, 64))


def test_eval_mode_is_deterministic_and_per_sample(tiny_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = tiny_model(x)
        first_alone = tiny_model(x[:1])
    assert torch.allclose(both["cyt"][:1], first_alone["cyt"], atol=1e-5)
    assert torch.allclose(tiny_model(x)["nuc"], both["nuc"])


def test_pretrained_file_loads_the_encoder(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_convnext")
    weights = tmp_path / "encoder.pth"
    torch.save(source.state_dict(), weights)
    model = build(pretrained_file=str(weights))
    saved = source.state_dict()
    loaded = model.encoder.state_dict()
    assert len(loaded) > 50
    for name, value in loaded.items():
        # the feature wrapper flattens the top-level module names: stages_0.x is stages.0.x
        original = re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", name)
        assert torch.equal(saved[original], value), name
    # and not what a fresh random init would give
    fresh = build().encoder.state_dict()
    assert not torch.equal(fresh["stages_3.blocks.0.mlp.fc1.weight"], loaded["stages_3.blocks.0.mlp.fc1.weight"])


# ---------------------------------------------------------------- blocks

@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 64, 5, 7), (3, 4, 1, 1)])
def test_cbam_preserves_shape_and_only_rescales(shape):
    torch.manual_seed(0)
    cbam = CBAM(shape[1]).eval()
    x = torch.rand(shape) + 0.1
    y = cbam(x)
    assert y.shape == x.shape
    # both attentions multiply by sigmoids in (0, 1): every value shrinks towards zero, signs are kept
    ratio = y / x
    assert ((ratio > 0) & (ratio < 1)).all()


def test_channel_and_spatial_attention_weight_the_right_axis():
    torch.manual_seed(0)
    x = torch.rand(1, 8, 6, 6) + 0.1
    channel_ratio = ChannelAttention(8).eval()(x) / x
    # one weight per channel, shared by every pixel
    assert torch.allclose(channel_ratio, channel_ratio[:, :, :1, :1].expand_as(x), atol=1e-6)
    spatial_ratio = SpatialAttention().eval()(x) / x
    # one weight per pixel, shared by every channel
    assert torch.allclose(spatial_ratio, spatial_ratio[:, :1].expand_as(x), atol=1e-6)


def test_attention_gate_preserves_skip_shape_and_gates_in_0_1():
    torch.manual_seed(0)
    gate = AttentionGate(gate_channels=32, skip_channels=16, inter_channels=8).eval()
    g, skip = torch.randn(2, 32, 10, 12), torch.rand(2, 16, 10, 12) + 0.1
    out = gate(g, skip)
    assert out.shape == skip.shape
    alpha = out / skip
    # one coefficient per pixel shared by the skip's channels, strictly between 0 and 1
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-6)
    assert ((alpha > 0) & (alpha < 1)).all()
    # the gate signal decides what passes: another gate signal, other coefficients
    assert not torch.allclose(gate(torch.randn(2, 32, 10, 12), skip), out)
