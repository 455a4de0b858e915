"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: stem conv3×3 (3 -> 16), three stages ``block1..block3`` of n = (d - 4) / 6 pre-activation
blocks with 16k, 32k, 64k channels (strides 1, 2, 2), then the network's last BN-ReLU (``final``),
global average pooling and a linear head. In a block whose width changes, BN-ReLU is applied to the
input once and feeds both the residual branch and the 1×1 shortcut convolution, as in the WRN
reference used by TRADES (Zhang et al. 2019) and most adversarial-training work. Dropout, if any,
sits between the two convolutions of each block (active in train mode only).

FSR inserts after ``block3`` + ``final`` (640×8×8 for WRN-34-10 on 32×32): that is ``forward_features``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.models.base import MODELS, ImageClassifier, bn_relu, check_positive_int


class WideBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3 plus identity, or plus a 1×1 conv of the activated
    input when the shape changes. The output is not activated."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(pre)))))
        return out + skip


class WideResNet(ImageClassifier):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs: stages ``block1..block3``, ``final`` = BN-ReLU."""

    def __init__(
        self,
        *,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_positive_int("depth", depth)
        k = check_positive_int("widen_factor", widen_factor)
        if depth < 10 or (depth - 4) % 6:
            raise UserError(f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40), got {depth}")
        if not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"wide_resnet dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        chs = (16 * k, 32 * k, 64 * k)
        stages, prev = [], 16
        for i, c in enumerate(chs):
            blocks = [
                WideBlock(prev if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1, float(dropout)) for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            prev = c
        super().__init__(
            stem=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            stages=stages,
            final=bn_relu(chs[-1]),
            stage_channels=chs,
            reductions=(1, 2, 4),
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )


@MODELS.register
def wide_resnet(
    *,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis, BMVC 2016); depth = 6n + 4."""
    return WideResNet(
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


@MODELS.register
def wrn34_10(
    *,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-34-10, the standard adversarial-training benchmark network (Madry et al. 2018); 46.16M params."""
    return wide_resnet(
        depth=34, widen_factor=10, dropout=dropout, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
    )


@MODELS.register
def wrn28_10(
    *,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis, BMVC 2016); 36.48M params."""
    return wide_resnet(
        depth=28, widen_factor=10, dropout=dropout, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
    )
