"""Dual-head attention U-Net with a timm ConvNeXt encoder.

One encoder, two decoders: one predicts the whole cell ("cyt"), the other the nucleus ("nuc").
Each decoder climbs the encoder's four stages (strides 32 -> 16 -> 8 -> 4) with an attention
gate on every skip connection and CBAM after every merge, then two plain up-sampling blocks
bring it back to the input resolution.
"""
from typing import Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = ("cyt", "nuc")


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through one shared MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_logits = self.mlp(F.adaptive_avg_pool2d(x, 1))  # [B, C, 1, 1]
        max_logits = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg_logits + max_logits)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 conv over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # [B, 2, H, W]
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., 2018): the decoder signal decides which skip pixels pass."""

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int):
        super().__init__()
        self.gate_proj = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.skip_proj = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # gate and skip share the skip's spatial size here (the caller up-samples first)
        alpha = self.psi(F.relu(self.gate_proj(gate) + self.skip_proj(skip)))  # [B, 1, H, W]
        return skip * alpha


class DecoderBlock(nn.Module):
    """Up-sample x2, gate the skip, concatenate, two 3x3 convs, CBAM."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.gate = AttentionGate(in_channels, skip_channels, max(skip_channels // 2, 8))
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))
        self.cbam = CBAM(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.gate(x, skip)], dim=1)  # [B, C_in + C_skip, H, W]
        return self.cbam(self.convs(x))


class UpBlock(nn.Module):
    """Up-sample x2 and refine, without a skip (the encoder has nothing finer than stride 4)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class MaskDecoder(nn.Module):
    """Decoder for one head: stride 32 -> 4 through gated skips, then 4 -> 1, then a 1-channel logit map."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        deep_to_shallow = list(encoder_channels)[::-1]  # e.g. [768, 384, 192, 96]
        in_channels = [deep_to_shallow[0]] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(in_channels, deep_to_shallow[1:], decoder_channels)
        )
        last = decoder_channels[-1]
        self.to_full_res = nn.Sequential(UpBlock(last, last // 2), UpBlock(last // 2, last // 4))
        self.head = nn.Conv2d(last // 4, 1, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # [B, C4, H/32, W/32]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)  # ends at [B, D3, H/4, W/4]
        return self.head(self.to_full_res(x))  # [B, 1, H, W]


class DualHeadAttConvNeXtUNet(nn.Module):
    """Attention U-Net with a shared ConvNeXt encoder and one decoder per head.

    Args:
        backbone: timm model name with a 4-stage `features_only` mode (any ConvNeXt; others with
            strides 4/8/16/32 work too).
        decoder_channels: widths of the three gated decoder blocks (stride 16, 8, 4).
        pretrained: ask timm for pretrained encoder weights.
        pretrained_file: a local weights file for the encoder (implies pretrained).
        in_chans: input channels.

    forward(x [B, in_chans, H, W], H and W divisible by 32) returns {'cyt': [B,1,H,W], 'nuc': [B,1,H,W]}
    of logits.
    """

    def __init__(
        self,
        backbone: str = "convnext_tiny",
        decoder_channels: Sequence[int] = (256, 128, 64),
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        in_chans: int = 3,
    ):
        super().__init__()
        if len(decoder_channels) != 3:
            raise ValueError(f"decoder_channels needs 3 widths (strides 16, 8, 4), got {decoder_channels}")
        overlay = dict(file=pretrained_file) if pretrained_file else None
        self.encoder = timm.create_model(
            backbone, features_only=True, in_chans=in_chans,
            pretrained=pretrained or bool(pretrained_file), pretrained_cfg_overlay=overlay,
        )
        # ConvNeXt yields strides 4..32 only; other families (EfficientNet) add stride 2, which we skip
        reductions = self.encoder.feature_info.reduction()
        self.feature_indices = [reductions.index(stride) for stride in (4, 8, 16, 32)]
        encoder_channels = [self.encoder.feature_info.channels()[i] for i in self.feature_indices]
        self.decoders = nn.ModuleDict({head: MaskDecoder(encoder_channels, decoder_channels) for head in HEADS})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        all_features = self.encoder(x)
        features = [all_features[i] for i in self.feature_indices]  # 4 maps at strides 4, 8, 16, 32
        return {head: decoder(features) for head, decoder in self.decoders.items()}
