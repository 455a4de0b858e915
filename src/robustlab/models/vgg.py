"""VGG-16 with batch normalisation for 32×32 inputs.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(configuration D), with BatchNorm after every convolution (Ioffe & Szegedy, ICML 2015).

Stage layout: the five conv stages [64, 64], [128, 128], [256]×3, [512]×3, [512]×3 are ``stages[0..4]``;
each 2×2 max-pool sits at the *start* of the following stage, so ``stages[i]`` ends with the i-th conv
stage's last conv-BN-ReLU, before its pool. Hence FSR's "after the 4th conv stage before its pool"
(METHODS.md §2) is the output of ``stages[3]`` (512×4×4 on 32×32), not the last stage.

Deviations from the original: the three fully connected layers are replaced by global average pooling
and one ``Linear(512, K)`` (the usual CIFAR adaptation); the fifth pool is dropped (GAP of the 2×2 map
of ``stages[4]`` replaces it); convolutions have no bias (each is followed by BatchNorm, which makes a
bias redundant).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustlab.models.base import MODELS, ImageClassifier, check_positive_int, conv_bn_relu

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(ImageClassifier):
    """VGG with BN; ``cfg`` lists each conv stage's channels (scaled by ``width / 64``), ``stem`` and
    ``final`` are ``nn.Identity``, stages after the first start with a 2×2 max-pool."""

    def __init__(
        self,
        *,
        cfg: Sequence[Sequence[int]] = VGG16_STAGES,
        width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        w = check_positive_int("width", width)
        stages, chs, prev = [], [], in_channels
        for i, stage_cfg in enumerate(cfg):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for c in stage_cfg:
                c = max(1, c * w // 64)
                layers.append(conv_bn_relu(prev, c))
                prev = c
            stages.append(nn.Sequential(*layers))
            chs.append(prev)
        super().__init__(
            stem=nn.Identity(),
            stages=stages,
            final=nn.Identity(),
            stage_channels=chs,
            reductions=[2**i for i in range(len(cfg))],
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )


@MODELS.register
def vgg16_bn(
    *,
    width: int = 64,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> VGG:
    """VGG-16 with BN for 32×32 inputs (Simonyan & Zisserman, ICLR 2015), GAP + one linear head; 14.73M params."""
    return VGG(width=width, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
