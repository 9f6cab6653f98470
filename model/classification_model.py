"""ConvNeXt cell classifier on 5 channels: RGB + cell (cytoplasm) mask + nucleus mask."""
from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F


class SEBlock(nn.Module):
    """Squeeze-and-excitation: re-weights channels from their global average."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))  # [B, C]
        return x * weights[:, :, None, None]


class TokenProjection(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout applied to every token of a [B, T, C] sequence."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.BatchNorm1d(out_features)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        x = self.linear(tokens).flatten(0, 1)  # [B*T, D]: BatchNorm1d normalises over every token
        return self.drop(F.relu(self.norm(x))).view(batch, length, -1)


class MeasurementEncoder(nn.Module):
    """Cell measurements (tools/morphometry.py) -> an embedding that joins the pooled CNN feature.

    Raw measurements span orders of magnitude (areas in px^2 next to ratios), so each goes through a signed
    log, then the training split's mean and SD (buffers: they travel in the checkpoint and the ONNX graph),
    then a clamp that keeps one absurd value from dominating.
    """

    def __init__(self, num_measurements: int, embedding: int = 64, dropout: float = 0.2):
        super().__init__()
        self.out_features = embedding
        self.register_buffer("mean", torch.zeros(num_measurements))
        self.register_buffer("std", torch.ones(num_measurements))
        self.mlp = nn.Sequential(
            nn.Linear(num_measurements, embedding), nn.BatchNorm1d(embedding), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(embedding, embedding), nn.BatchNorm1d(embedding), nn.ReLU(inplace=True),
        )

    @staticmethod
    def signed_log(measurements: torch.Tensor) -> torch.Tensor:
        return torch.sign(measurements) * torch.log1p(measurements.abs())

    @torch.no_grad()
    def fit_statistics(self, measurements: torch.Tensor) -> None:
        """Set mean and SD from the training cells' raw measurements [N, F]."""
        logged = self.signed_log(measurements.float())
        self.mean.copy_(logged.mean(dim=0))
        self.std.copy_(logged.std(dim=0).clamp_min(1e-6))

    def forward(self, measurements: torch.Tensor) -> torch.Tensor:
        standardized = ((self.signed_log(measurements) - self.mean) / self.std).clamp(-6, 6)  # [B, F]
        return self.mlp(standardized)  # [B, embedding]


class AttentionPoolingHead(nn.Module):
    """The MLP head of the seed with its 4-head attention made to attend over something real.

    The globally pooled feature becomes the query; the keys and values are the spatial tokens of
    the last stage (H/32 x W/32 positions, e.g. 8x8 at 256 px). Attention over a single pooled token
    would reduce to a linear map; over the spatial tokens it lets the head weight the positions
    that matter (nucleus, cell border) against background before classifying. Pooled vector and
    tokens share the first projection (C -> 512, BN, ReLU, Dropout 0.4); the attended vector is
    added to the query and layer-normalised, then 512 -> 256 (BN, ReLU, Dropout 0.3) -> classes.
    With measurements, their embedding is concatenated to the normalised vector before the 512 -> 256 layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, bottleneck: int = 256, num_heads: int = 4,
                 extra_features: int = 0):
        super().__init__()
        self.project = TokenProjection(in_features, hidden, dropout=0.4)
        self.attention = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden + extra_features, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(bottleneck, num_classes),
        )

    def forward(self, feature_map: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        spatial_tokens = feature_map.flatten(2).transpose(1, 2)  # [B, HW, C]
        pooled = spatial_tokens.mean(dim=1, keepdim=True)  # [B, 1, C] global average pooling
        tokens = self.project(torch.cat([pooled, spatial_tokens], dim=1))  # [B, 1 + HW, 512]
        query, keys = tokens[:, :1], tokens[:, 1:]
        attended, _ = self.attention(query, keys, keys, need_weights=False)  # [B, 1, 512]
        fused = self.norm(query + attended).squeeze(1)  # [B, 512]
        if extra is not None:
            fused = torch.cat([fused, extra], dim=1)  # [B, 512 + E]
        return self.mlp(fused)  # [B, num_classes]


class ConvNeXtAttentionClassifier(nn.Module):
    """timm backbone with an SE block on its last stage and the attention pooling head.

    Args:
        num_classes: number of cell classes.
        in_chans: input channels (5: RGB, cell mask, nucleus mask). With pretrained weights timm
            adapts the RGB stem to extra channels by repeating and rescaling its filters.
        backbone: timm model name (any ConvNeXt; other CNNs work too).
        pretrained: ask timm for pretrained weights.
        pretrained_file: a local weights file (implies pretrained).
        num_measurements: length of the cell measurement vector given beside the image (0: images only).

    forward(x [B, in_chans, H, W], measurements [B, num_measurements] or None) returns class logits [B, num_classes].
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 5,
        backbone: str = "convnext_tiny",
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        num_measurements: int = 0,
    ):
        super().__init__()
        overlay = dict(file=pretrained_file) if pretrained_file else None
        self.backbone = timm.create_model(
            backbone, in_chans=in_chans, num_classes=0, global_pool="",
            pretrained=pretrained or bool(pretrained_file), pretrained_cfg_overlay=overlay,
        )
        channels = self.backbone.num_features  # 768 for convnext_tiny
        self.se = SEBlock(channels)
        self.measurements = MeasurementEncoder(num_measurements) if num_measurements else None
        embedding = self.measurements.out_features if self.measurements is not None else 0
        self.head = AttentionPoolingHead(channels, num_classes, extra_features=embedding)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # backbone(x), not forward_features(x): timm keeps ConvNeXt's final norm in its (pool-less) head
        return self.se(self.backbone(x))  # [B, C, H/32, W/32]

    def forward(self, x: torch.Tensor, measurements: Optional[torch.Tensor] = None) -> torch.Tensor:
        extra = self.measurements(measurements) if self.measurements is not None else None
        return self.head(self.forward_features(x), extra)
