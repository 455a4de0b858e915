"""Model architectures behind one contract (see :mod:`robustlab.models.base`).

Registered names (= config strings): ``small_cnn``, ``resnet18``, ``preact_resnet18``, ``preact_resnet_small``,
``wide_resnet``, ``wrn34_10``, ``wrn28_10``, ``vgg16_bn``. Build one with :func:`create_model`.
"""

from __future__ import annotations

from robustlab.models.base import MODELS, ImageClassifier, Normalize, create_model
from robustlab.models.resnet import PreActResNet, ResNet, preact_resnet18, preact_resnet_small, resnet18
from robustlab.models.small_cnn import SmallCNN, small_cnn
from robustlab.models.vgg import VGG, vgg16_bn
from robustlab.models.wide_resnet import WideResNet, wide_resnet, wrn28_10, wrn34_10

__all__ = [
    "MODELS",
    "VGG",
    "ImageClassifier",
    "Normalize",
    "PreActResNet",
    "ResNet",
    "SmallCNN",
    "WideResNet",
    "create_model",
    "preact_resnet18",
    "preact_resnet_small",
    "resnet18",
    "small_cnn",
    "vgg16_bn",
    "wide_resnet",
    "wrn28_10",
    "wrn34_10",
]
