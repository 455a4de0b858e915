"""CIFAR-style ResNet-18 and pre-activation ResNet-18.

- ResNet: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
- Pre-activation ResNet: He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.

CIFAR variant (as in the adversarial-training literature, e.g. Madry et al. 2018, Rice et al. 2020):
a 3×3 stride-1 stem convolution and no max-pool, so 32×32 inputs give a 512×4×4 last map.
Both accept ``width`` (channels of the first stage, default 64; stages use ``w, 2w, 4w, 8w``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.models.base import MODELS, ImageClassifier, bn_relu, check_positive_int


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block: relu(bn(conv(relu(bn(conv x)))) + shortcut(x)); 1×1 conv-BN shortcut
    when the shape changes (He et al. 2016, option B)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: x + conv(relu(bn(conv(relu(bn x))))); when the shape changes the
    1×1 conv shortcut takes the pre-activated input (He et al., ECCV 2016). The output is not activated."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + skip


def _stages(block: type[nn.Module], width: int, depths: Sequence[int]) -> tuple[list[nn.Sequential], list[int]]:
    """Stages ``layer1..layer4``: ``depths[i]`` blocks of ``width·2^i`` channels, stride 2 from stage 2 on."""
    stages, chs, prev = [], [], width
    for i, n in enumerate(depths):
        c = width * 2**i
        blocks = [block(prev if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
        stages.append(nn.Sequential(*blocks))
        chs.append(c)
        prev = c
    return stages, chs


class ResNet(ImageClassifier):
    """CIFAR ResNet with BasicBlocks: stem conv3×3-BN-ReLU, stages ``layer1..layer4``, ``final`` = Identity."""

    def __init__(
        self,
        *,
        depths: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        w = check_positive_int("width", width)
        stages, chs = _stages(BasicBlock, w, depths)
        super().__init__(
            stem=nn.Sequential(_conv3x3(in_channels, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True)),
            stages=stages,
            final=nn.Identity(),
            stage_channels=chs,
            reductions=[2**i for i in range(len(depths))],
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )


class PreActResNet(ImageClassifier):
    """CIFAR pre-activation ResNet: stem conv3×3 (no BN/ReLU, the first block pre-activates),
    stages ``layer1..layer4`` of PreActBlocks, ``final`` = BN-ReLU before pooling."""

    def __init__(
        self,
        *,
        depths: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        w = check_positive_int("width", width)
        stages, chs = _stages(PreActBlock, w, depths)
        super().__init__(
            stem=_conv3x3(in_channels, w),
            stages=stages,
            final=bn_relu(chs[-1]),
            stage_channels=chs,
            reductions=[2**i for i in range(len(depths))],
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )


@MODELS.register
def resnet18(
    *,
    width: int = 64,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """CIFAR ResNet-18 (He et al., CVPR 2016): BasicBlocks [2, 2, 2, 2], 64-128-256-512; 11.17M params."""
    return ResNet(width=width, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


@MODELS.register
def preact_resnet18(
    *,
    width: int = 64,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> PreActResNet:
    """CIFAR pre-activation ResNet-18 (He et al., ECCV 2016) with a final BN-ReLU; 11.17M params."""
    return PreActResNet(width=width, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


@MODELS.register
def preact_resnet_small(
    *,
    width: int = 16,
    depths: Sequence[int] = (1, 1, 1, 1),
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> PreActResNet:
    """A narrow, shallow CIFAR pre-activation ResNet (He et al., ECCV 2016) for CPU-scale studies.

    Default: one PreActBlock per stage, 16-32-64-128 channels (a PreAct-ResNet-10 at width 16); 0.31M params.
    ``depths`` sets the blocks per stage (1 to 4 stages). Ours: the size is chosen for the CIFAR-10 study
    on 2 CPU cores (docs/results.md), not taken from a paper.
    """
    if not 1 <= len(depths) <= 4 or not all(isinstance(d, int) and d >= 1 for d in depths):
        raise UserError(f"preact_resnet_small depths={list(depths)!r} is invalid; give 1 to 4 positive block counts, "
                        "e.g. [1, 1, 1, 1]")
    return PreActResNet(depths=tuple(depths), width=width, num_classes=num_classes, in_channels=in_channels, mean=mean,
                        std=std)
