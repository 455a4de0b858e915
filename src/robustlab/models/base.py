"""The model contract: input normalisation as the first layer and a timm-style features/head split.

Every architecture is an :class:`ImageClassifier` built from five parts, in this order:
``normalize`` -> ``stem`` -> ``stages`` (an ``nn.ModuleList`` of ``nn.Sequential`` stages of blocks)
-> ``final`` (post-stage norm/activation or ``nn.Identity``) -> ``pool`` (global average) -> ``head``.
Subclasses only build the parts; the forward logic lives here once (METHODS.md §0).

Names follow timm (huggingface/pytorch-image-models): ``forward_features`` returns the last feature map
*unpooled* (after ``final``); ``forward_head(f, pre_logits=True)`` returns the pooled penultimate vector.
METHODS.md §0 calls the pooled vector "features"; here that vector is ``forward_head(..., pre_logits=True)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.registry import Registry

OUTPUTS = ("logits", "pre_logits", "features_and_logits")
"""What :meth:`ImageClassifier.forward` can return (its ``output`` keyword)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def default_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default per-channel mean/std: CIFAR-10's for 3 channels, 0.5/0.5 otherwise."""
    if in_channels == 3:
        return CIFAR10_MEAN, CIFAR10_STD
    return (0.5,) * in_channels, (0.5,) * in_channels


def resolve_stats(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fill in default statistics and check their lengths against ``in_channels`` (UserError if wrong)."""
    dmean, dstd = default_stats(in_channels)
    m = tuple(float(v) for v in (dmean if mean is None else mean))
    s = tuple(float(v) for v in (dstd if std is None else std))
    for label, vals in (("mean", m), ("std", s)):
        if len(vals) != in_channels:
            raise UserError(
                f"model {label} has {len(vals)} values but in_channels={in_channels}; give one value per channel"
            )
    if any(v <= 0 for v in s):
        raise UserError(f"model std must be positive, got {s}")
    return m, s


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on NCHW inputs in [0, 1]; the statistics are buffers (saved, moved)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise UserError(f"mean has {len(mean)} values but std has {len(std)}; give one value per channel")
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return (f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, "
                f"std={[round(v, 4) for v in self.std.flatten().tolist()]}")


def conv_bn_relu(in_chs: int, out_chs: int, stride: int = 1) -> nn.Sequential:
    """conv3×3 (no bias: BN follows) -> BatchNorm -> ReLU, padding 1."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def bn_relu(chs: int) -> nn.Sequential:
    """BatchNorm -> ReLU, the post-stage ``final`` of pre-activation networks."""
    return nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True))


def init_weights(module: nn.Module) -> None:
    """He-normal (fan_out) convolutions, unit/zero BatchNorm, zero linear bias (He et al., ICCV 2015)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def check_positive_int(name: str, value: int) -> int:
    """An architecture option that must be an integer >= 1 (UserError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"model option {name} must be an integer >= 1, got {value!r}")
    return value


class ImageClassifier(nn.Module):
    """Base of every robustlab model: ``normalize -> stem -> stages -> final -> pool -> head``.

    Args:
        stem: module applied after normalisation (may be ``nn.Identity``).
        stages: ordered stages, each an ``nn.Sequential`` of blocks, so plug-ins can reach single blocks.
        final: post-stage norm/activation (``nn.Identity`` when the last block already ends activated);
            it must keep the channel count.
        stage_channels: output channels of each stage; the last one is ``num_features`` = C.
        reductions: total stride of each stage's output relative to the input, one per stage.
        num_classes: K, the head's outputs.
        in_channels, mean, std: input channels and the per-channel normalisation statistics
            (defaults from :func:`default_stats`).

    Attributes: ``normalize`` (first child), ``stem``, ``stages``, ``final``, ``pool``, ``head``
    (``nn.Linear``, weight K×C), ``num_features`` (C), ``num_classes`` (K), ``feature_info``
    (one dict per stage: ``num_chs``, ``reduction``, ``module`` = ``"stages.<i>"``).
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        stages: Sequence[nn.Sequential],
        final: nn.Module,
        stage_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        m, s = resolve_stats(in_channels, mean, std)
        if not len(stages) == len(stage_channels) == len(reductions) >= 1:
            raise ValueError("need one stage_channels and one reductions entry per stage, and >= 1 stage")
        num_features = int(stage_channels[-1])
        self.normalize = Normalize(m, s)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.final = final
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_info: list[dict[str, int | str]] = [
            {"num_chs": int(c), "reduction": int(r), "module": f"stages.{i}"}
            for i, (c, r) in enumerate(zip(stage_channels, reductions))
        ]
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B, C, H', W'), after ``final``, **unpooled** (timm's meaning)."""
        x = self.stem(self.normalize(x))
        for stage in self.stages:
            x = stage(x)
        return self.final(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pool ``f`` to (B, C); return it if ``pre_logits`` else the logits (B, K)."""
        v = self.pool(f).flatten(1)
        return v if pre_logits else self.head(v)

    def forward(self, x: torch.Tensor, output: str = "logits") -> Any:
        """Logits only (the default), in both train and eval mode.

        ``output`` lets a training objective take what it needs from the *same* forward call, so the
        call goes through whatever wraps the model (DistributedDataParallel syncs gradients only for
        forwards made through it): ``"pre_logits"`` returns the pooled penultimate vector (B, C),
        ``"features_and_logits"`` the pair (:meth:`forward_features` map, logits). Attacks and
        evaluation never pass it (METHODS.md §0: ``forward(x)`` returns logits only).
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        f = self.forward_features(x)
        if output == "pre_logits":
            return self.forward_head(f, pre_logits=True)
        logits = self.forward_head(f)
        return (f, logits) if output == "features_and_logits" else logits

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Raw outputs of the chosen stages, in the order asked (``None``: every stage).

        Indices address ``stages`` (negative counts from the end). ``final`` is *not* applied: the last
        stage's output after ``final`` is :meth:`forward_features`. Stages after the deepest requested
        one are not run. Channels match ``feature_info[i]["num_chs"]``.
        """
        n = len(self.stages)
        wanted = list(range(n)) if indices is None else [int(i) for i in indices]
        for i in wanted:
            if not -n <= i < n:
                raise UserError(f"stage index {i} out of range for a model with {n} stages")
        wanted = [i % n for i in wanted]
        outs: list[torch.Tensor] = []
        x = self.stem(self.normalize(x))
        for stage in self.stages[: max(wanted, default=-1) + 1]:
            x = stage(x)
            outs.append(x)
        return [outs[i] for i in wanted]

    def get_classifier(self) -> nn.Linear:
        """The final linear classifier ``head`` (weight K×C)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head`` by a freshly initialised ``Linear(C, num_classes)`` on the same device/dtype."""
        check_positive_int("num_classes", num_classes)
        old = self.head
        self.head = nn.Linear(self.num_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        nn.init.zeros_(self.head.bias)
        self.num_classes = num_classes



MODELS: Registry[Callable[..., ImageClassifier]] = Registry("model")
"""Model factories by config name; each accepts ``num_classes``, ``in_channels``, ``mean``, ``std``."""


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """Build the registered model ``name``; ``None`` options keep the factory's defaults.

    ``in_channels=None`` means the factory's own default: 3, except ``small_cnn`` (1, for digits).

    Unknown names and options the factory does not take raise :class:`UserError` (one line, with the
    accepted choices). ``mean``/``std`` default to CIFAR-10's statistics for 3 channels, 0.5 otherwise.
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            raise UserError(
                f"model {name!r} has no option {', '.join(unknown)}; options: {', '.join(sorted(params))}"
            )
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **kwargs)
