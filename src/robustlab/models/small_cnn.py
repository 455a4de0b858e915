"""A small all-convolutional network for the 8×8 digits set (and any input of size >= 8).

VGG-style stacks of conv3×3-BN-ReLU (Simonyan & Zisserman, ICLR 2015; BatchNorm: Ioffe & Szegedy,
ICML 2015), with stride-2 convolutions instead of pooling (Springenberg et al., ICLR-W 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustlab.models.base import MODELS, ImageClassifier, check_positive_int, conv_bn_relu


class SmallCNN(ImageClassifier):
    """Three stages of two conv3×3-BN-ReLU blocks each, channels ``w, 2w, 4w``.

    stage 0: 2 blocks of ``w`` channels, stride 1; stage 1: 2 blocks of ``2w``, the first with stride 2;
    stage 2: 2 blocks of ``4w``, the first with stride 2. ``stem`` and ``final`` are ``nn.Identity``
    (every block ends with ReLU). On 8×8 inputs the last map is ``4w``×2×2; FSR goes after stage 2,
    ANCRA's reverse attention in its two blocks.
    """

    def __init__(
        self,
        *,
        width: int = 32,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        w = check_positive_int("width", width)
        chs = (w, 2 * w, 4 * w)
        stages, prev = [], in_channels
        for i, c in enumerate(chs):
            stages.append(nn.Sequential(conv_bn_relu(prev, c, stride=1 if i == 0 else 2), conv_bn_relu(c, c)))
            prev = c
        super().__init__(
            stem=nn.Identity(),
            stages=stages,
            final=nn.Identity(),
            stage_channels=chs,
            reductions=(1, 2, 4),
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )


@MODELS.register
def small_cnn(
    *,
    width: int = 32,
    num_classes: int = 10,
    in_channels: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SmallCNN:
    """Small CNN for 8×8 digits (1 channel by default), ~0.29M parameters at ``width=32``."""
    return SmallCNN(width=width, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
