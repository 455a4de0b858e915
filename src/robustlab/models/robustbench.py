"""The architectures of RobustBench's most used CIFAR-10 model-zoo entries, with RobustBench's checkpoint keys.

RobustBench (Croce et al., NeurIPS 2021 Datasets and Benchmarks; RobustBench/robustbench 1.1.1,
``robustbench/model_zoo/architectures/``) cannot be an optional extra here: it requires ``torchvision``
(unpinned) and ``timm==1.0.9``, which would replace the pinned CPU torch. These are written from its
layouts so that its checkpoints load strictly, key for key:

* :class:`WideResNet` (``wide_resnet.py``, after TRADES): ``conv1``, ``block1``/``block2``/``block3``
  (``.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``), an optional ``sub_block1`` that holds parameters
  of some checkpoints (Carmon et al. 2019) but is never run, ``bn1``, ``fc``. Pre-activation blocks; a
  block whose width changes activates its input once and feeds it to both branches. No normalisation.
* :class:`DMWideResNet` (``dm_wide_resnet.py``, DeepMind's adversarial-robustness model zoo):
  ``init_conv``, ``layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``,
  ``batchnorm``, ``logits``; "SAME" padding done by hand before ``conv_0`` (1 on every side at stride 1,
  right/bottom only at stride 2); activation ReLU or Swish/SiLU. Its mean/std are not in the checkpoint
  (non-persistent buffers): the caller puts a :class:`~robustlab.models.Normalize` in front.
* :class:`PreActResNet` / :func:`preact_resnet18` (``resnet.py``): ``conv1``, ``layer1``..``layer4``
  (``.<i>.{bn1,conv1,bn2,conv2,shortcut.0}``), ``linear``; the shortcut takes the block's raw input.

Deviations [ours]: the final pooling is a global average (RobustBench pools an 8×8 / 4×4 window, the
whole map for 32×32 inputs, so the same there); RobustBench's ``Swish`` is a custom autograd function of
``x·sigmoid(x)``, here ``nn.SiLU`` (the same function and gradient); dropout (always 0 in the zoo) is
left out; inputs are not normalised inside (RobustBench's wrappers keep ``mu``/``sigma`` buffers that its
checkpoints lack and load non-strictly; here normalisation is a separate layer, so loading is strict).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Activation = Callable[[], nn.Module]


def _conv3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=padding, bias=False)


def _conv1(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


class _WideBlock(nn.Module):
    """The TRADES-style pre-activation block (keys ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``convShortcut``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
        self.convShortcut = _conv1(cin, cout, stride) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class _WideGroup(nn.Module):
    """``.layer``: a sequence of blocks, the first one changing width and stride."""

    def __init__(self, blocks: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _blocks_per_group(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
    return (depth - 4) // 6


class WideResNet(nn.Module):
    """RobustBench's ``WideResNet(depth, widen_factor, sub_block1)``: WideResNet-28-10, -34-10, -34-20, ..."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 sub_block1: bool = False) -> None:
        super().__init__()
        n = _blocks_per_group(depth)
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3(3, widths[0])
        self.block1 = _WideGroup(n, widths[0], widths[1], 1)
        if sub_block1:  # parameters some checkpoints carry; never run (as in RobustBench)
            self.sub_block1 = _WideGroup(n, widths[0], widths[1], 1)
        self.block2 = _WideGroup(n, widths[1], widths[2], 2)
        self.block3 = _WideGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(_global_pool(F.relu(self.bn1(out))))


class _DMBlock(nn.Module):
    """DeepMind's block (keys ``batchnorm_0``, ``conv_0``, ``batchnorm_1``, ``conv_1``, ``shortcut``)."""

    def __init__(self, cin: int, cout: int, stride: int, activation: Activation) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DMWideResNet blocks take stride 1 or 2, got {stride}")
        self.batchnorm_0, self.act_0 = nn.BatchNorm2d(cin), activation()
        self.conv_0 = _conv3(cin, cout, stride, padding=0)
        self.batchnorm_1, self.act_1 = nn.BatchNorm2d(cout), activation()
        self.conv_1 = _conv3(cout, cout)
        self.shortcut = _conv1(cin, cout, stride) if cin != cout else None
        self.same = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)  # TensorFlow's "SAME" for a 3x3 kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act_0(self.batchnorm_0(x))
        out = self.conv_1(self.act_1(self.batchnorm_1(self.conv_0(F.pad(act, self.same)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class _DMGroup(nn.Module):
    """``.block``: a sequence of blocks, the first one changing width and stride."""

    def __init__(self, blocks: int, cin: int, cout: int, stride: int, activation: Activation) -> None:
        super().__init__()
        self.block = nn.Sequential(*(_DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, activation)
                                     for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet as RobustBench packages it (``DMWideResNet(depth, width, activation_fn)``),
    without its built-in mean/std (put a ``Normalize`` in front)."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10,
                 activation: Activation = nn.SiLU) -> None:
        super().__init__()
        n = _blocks_per_group(depth)
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = _conv3(3, widths[0])
        self.layer = nn.Sequential(*(_DMGroup(n, widths[g], widths[g + 1], 1 if g == 0 else 2, activation)
                                     for g in range(3)))
        self.batchnorm, self.act = nn.BatchNorm2d(widths[3]), activation()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(_global_pool(self.act(self.batchnorm(self.layer(self.init_conv(x))))))


class _PreActBlock(nn.Module):
    """Pre-activation basic block (keys ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``shortcut.0``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return out + (self.shortcut(x) if hasattr(self, "shortcut") else x)


class PreActResNet(nn.Module):
    """RobustBench's ``PreActResNet(PreActBlock, blocks)``: 64-128-256-512 channels, ``linear`` head."""

    def __init__(self, blocks: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv3(3, 64)
        cin = 64
        for i, (cout, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(*(_PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                                    for j in range(n))))
            cin = cout
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(_global_pool(out))


def preact_resnet18(num_classes: int = 10) -> PreActResNet:
    """PreAct-ResNet-18 (He et al. 2016, as in RobustBench's ``PreActResNet18``)."""
    return PreActResNet((2, 2, 2, 2), num_classes)
