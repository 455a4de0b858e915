"""Planted gradient-masking wrappers: models that look robust to gradient attacks but are not.

Used to check that the masking checks (EVALUATION.md, checks 2 and 5) and cheap protocols such as
``fast`` still see through them (``benchmarks/fast_eval.py``, ``tests/test_fast_eval.py``).

The planted defenses of ``benchmarks/masking_zoo.py`` (:class:`PlantedDefense` and below) hide the input from
autograd the ways real defenses do (``x.detach()``, ``x.data``, ``torch.round``, a ``torch.where`` with a constant
branch, a ``torch.no_grad`` block, a numpy round trip in a submodule or inline), each with two hand-written
differentiable twins (``twins()``) that give its logits with the true and with the identity backward, so that an
oracle AutoAttack can be run against robustlab's automatic straight-through surrogate (EVALUATION.md, check 8).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.surrogate import straight_through


class ScaledLogits(nn.Module):
    """``scale * base(x)``: the softmax saturates, so cross-entropy gradients underflow to zero (a
    margin or DLR loss still works, since it is scale-free in sign)."""

    def __init__(self, base: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


class InputStep(nn.Module):
    """``base(round(levels * x) / levels)``: a non-differentiable input quantisation (zero gradient
    almost everywhere), so only a black-box attack can break it."""

    def __init__(self, base: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)


# --- planted defenses of benchmarks/masking_zoo.py -------------------------------------------------------------
# Each wraps a base classifier (inputs in [0, 1], NCHW, logits out) and hides (part of) its input gradient the way a
# published or common preprocessing defense does. ``twins()`` gives two hand-written differentiable twins that share
# the defense's parameters and give the same logits (the oracle's gradient sources): "true", the hiding step removed
# so the true gradient flows where there is one (the defense itself when that gradient is zero almost everywhere or
# already what autograd computes), and "identity", the non-differentiable component as a whole given the identity
# backward (BPDA with the identity, Athalye, Carlini & Wagner, ICML 2018).

# The JPEG standard's example luminance quantisation table (ITU-T T.81, Annex K, Table K.1), row by row.
JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def identity_backward(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``value``'s values exactly, with the identity as gradient to ``x`` (same shape): the straight-through
    ``x + (value - x).detach()`` written so that no float rounding changes the values."""
    return value.detach() + (x - x.detach())


def median3x3(x: torch.Tensor, padding: str = "reflect") -> torch.Tensor:
    """Per-channel 3x3 median filter (``F.pad`` mode ``padding``, then unfold + median); its autograd gradient
    goes to the one selected pixel of each window (sparse). ``"replicate"`` equals scipy.ndimage's
    ``mode="reflect"`` for a 3x3 window (scipy repeats the edge pixel); torch's ``"reflect"`` is scipy's
    ``"mirror"``."""
    n, c, h, w = x.shape
    windows = F.pad(x, (1, 1, 1, 1), mode=padding).unfold(2, 3, 1).unfold(3, 3, 1)  # (n, c, h, w, 3, 3)
    return windows.reshape(n, c, h, w, 9).median(dim=-1).values


def numpy_median3x3(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 median of :func:`median3x3` computed in numpy (``scipy.ndimage.median_filter``, ``mode="reflect"``):
    a round trip that autograd cannot follow."""
    from scipy.ndimage import median_filter

    out = median_filter(x.detach().cpu().numpy(), size=(1, 1, 3, 3), mode="reflect")
    return torch.from_numpy(out).to(x.device, x.dtype)


def blur3x3(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 binomial blur (weights [1, 2, 1] x [1, 2, 1] / 16), reflect padding."""
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=x.shape[1])


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n x n): ``coefficients = D @ block @ D.T``, ``block = D.T @ c @ D``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def jpeg_table(quality: int) -> torch.Tensor:
    """:data:`JPEG_LUMINANCE` scaled for ``quality`` (1..100) with the Independent JPEG Group's rule: scale
    ``5000 / q`` below 50, ``200 - 2q`` from 50; entries ``floor((t * scale + 50) / 100)`` kept in 1..255."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.floor((torch.tensor(JPEG_LUMINANCE, dtype=torch.float64) * scale + 50) / 100)
    return table.clamp(1, 255).float()


def jpeg_like(x: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """JPEG-like quantisation in torch: per channel, 8x8 blocks of pixel values 0..255 shifted by -128 (the image
    edge-replicated to a multiple of 8), orthonormal DCT-II, divided by ``table``, ``torch.round``, multiplied back,
    inverse DCT, cropped and clamped to [0, 1]. No chroma subsampling or entropy coding (neither changes values
    beyond this)."""
    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    p = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hh, ww = h + ph, w + pw
    blocks = (p * 255 - 128).reshape(n, c, hh // 8, 8, ww // 8, 8).transpose(3, 4)  # (n, c, bh, bw, 8, 8)
    coef = dct @ blocks @ dct.T
    rec = dct.T @ (torch.round(coef / table) * table) @ dct
    out = rec.transpose(3, 4).reshape(n, c, hh, ww)[:, :, :h, :w]
    return ((out + 128) / 255).clamp(0, 1)


class Twin(nn.Module):
    """One hand-written differentiable twin of a :class:`PlantedDefense`: ``defense.twin_forward(x, kind)``. It
    holds the defense (so shares its parameters and mode) and adds no parameter of its own."""

    def __init__(self, defense: "PlantedDefense", kind: str) -> None:
        super().__init__()
        self.defense, self.kind = defense, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.twin_forward(x, self.kind)


class PlantedDefense(nn.Module):
    """A planted gradient-masking defense around ``base``; subclasses define ``forward`` and ``twin_forward``.

    ``TRUE_IS_SELF``: the defense's own autograd gradient already is its true gradient (zero almost everywhere
    for rounding, zero on the masked features for MeanSparse), so its "true" twin is the defense itself.
    """

    TRUE_IS_SELF = False
    IDENTITY_IS_TRUE = False  # the identity backward is the true gradient (a detached input): one twin is enough

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        raise NotImplementedError

    def twins(self) -> dict[str, nn.Module]:
        """``{"true": ..., "identity": ...}``: the differentiable twins (module docs above)."""
        return {"true": self if self.TRUE_IS_SELF else Twin(self, "true"), "identity": Twin(self, "identity")}

    def settings(self) -> dict[str, Any]:
        """The defense's own settings, for records."""
        return {}


class DetachedInput(PlantedDefense):
    """``base(x.detach())``: no input gradient at all."""

    IDENTITY_IS_TRUE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.detach())

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.base(x if kind == "true" else identity_backward(x.detach(), x))


class DataInput(PlantedDefense):
    """``base(x.data)``: no input gradient at all."""

    IDENTITY_IS_TRUE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.data)

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.base(x if kind == "true" else identity_backward(x.data, x))


class MedianInput(PlantedDefense):
    """``base(median3x3(x.detach()))`` (reflect padding): a median-filter preprocessing with the input detached.
    True twin: the median without the detach (gradient to each window's median pixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(median3x3(x.detach()))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.base(median3x3(x) if kind == "true" else identity_backward(median3x3(x.detach()), x))


class BitDepth(PlantedDefense):
    """Bit-depth reduction (feature squeezing, Xu, Evans & Qi, NDSS 2018): ``base(round(x * L) / L)``,
    ``L = 2**bits - 1``; zero input gradient almost everywhere."""

    TRUE_IS_SELF = True

    def __init__(self, base: nn.Module, bits: int = 3) -> None:
        super().__init__(base)
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must lie in 1..16, got {bits}")
        self.bits, self.levels = bits, 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        q = torch.round(x.detach() * self.levels) / self.levels
        return self.base(identity_backward(q, x))

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits}


class JpegInput(PlantedDefense):
    """JPEG-like DCT quantisation (:func:`jpeg_like`) at ``quality``, written in torch with ``torch.round``; zero
    input gradient almost everywhere (JPEG as a defense: Dziugaite et al. 2016, Guo et al., ICLR 2018)."""

    TRUE_IS_SELF = True

    def __init__(self, base: nn.Module, quality: int = 75) -> None:
        super().__init__(base)
        self.quality = quality
        self.register_buffer("table", jpeg_table(quality), persistent=False)
        self.register_buffer("dct", dct_matrix(8), persistent=False)

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_like(x, self.table, self.dct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.compress(x))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.base(identity_backward(self.compress(x.detach()), x))

    def settings(self) -> dict[str, Any]:
        return {"quality": self.quality}


class MeanSparse(PlantedDefense):
    """A MeanSparse-like mask on the base's last feature map (Amini et al. 2024, "MeanSparse"): features within
    ``t = alpha * std`` of their channel's mean ``mu`` are replaced by ``mu``
    (``torch.where(|f - mu| < t, mu, f)``), then ``base.forward_head``. ``base`` needs ``forward_features`` and
    ``forward_head`` (robustlab's ``ImageClassifier``). Build it with :meth:`fit` (statistics from images).
    Identity twin: the mask given the identity backward, as RobustBench's re-evaluation of MeanSparse did."""

    TRUE_IS_SELF = True

    def __init__(self, base: nn.Module, mean: torch.Tensor, std: torch.Tensor, alpha: float) -> None:
        super().__init__(base)
        self.alpha = float(alpha)
        self.register_buffer("mu", mean.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("threshold", (self.alpha * std.detach()).reshape(1, -1, 1, 1).clone())

    @staticmethod
    @torch.no_grad()
    def statistics(base: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation of ``base.forward_features`` over ``images`` (floats in [0, 1]),
        in eval mode (the base's mode is restored)."""
        was = base.training
        base.eval()
        try:
            feats = torch.cat([base.forward_features(images[i:i + batch_size]).float()
                               for i in range(0, len(images), batch_size)])
        finally:
            base.train(was)
        flat = feats.transpose(0, 1).reshape(feats.shape[1], -1)
        return flat.mean(1), flat.std(1, unbiased=False)

    @classmethod
    def fit(cls, base: nn.Module, images: torch.Tensor, alpha: float) -> "MeanSparse":
        """A MeanSparse around ``base`` with ``mu`` and ``std`` from ``images`` (:meth:`statistics`)."""
        mean, std = cls.statistics(base, images)
        return cls(base, mean, std, alpha)

    def _masked(self, f: torch.Tensor) -> torch.Tensor:
        return torch.where((f - self.mu).abs() < self.threshold, self.mu, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_head(self._masked(self.base.forward_features(x)))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        f = self.base.forward_features(x)
        return self.base.forward_head(identity_backward(self._masked(f.detach()), f))

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class NoGradBlur(nn.Module):
    """A 3x3 binomial blur (:func:`blur3x3`) run inside ``torch.no_grad()``: its output carries no graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return blur3x3(x)


class BlurredInput(PlantedDefense):
    """``base(preprocess(x))`` with ``preprocess`` a :class:`NoGradBlur`: the blur hides the input gradient. True
    twin: the same blur with autograd on."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base)
        self.preprocess = NoGradBlur()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.preprocess(x))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.base(blur3x3(x) if kind == "true" else identity_backward(self.preprocess(x), x))


class NumpyMedianFilter(nn.Module):
    """A 3x3 median filter computed in numpy (:func:`numpy_median3x3`): a round trip autograd cannot follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return numpy_median3x3(x)


class NumpyMedian(PlantedDefense):
    """``base(preprocess(x))`` with ``preprocess`` a :class:`NumpyMedianFilter` (a numpy round trip inside a
    submodule). True twin: the torch median with scipy's border (``median3x3(x, "replicate")``)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base)
        self.preprocess = NumpyMedianFilter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.preprocess(x))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "true":
            return self.base(median3x3(x, "replicate"))
        return self.base(identity_backward(self.preprocess(x), x))


class NumpyMedianMarked(NumpyMedian):
    """:class:`NumpyMedian` whose numpy step its author marked by hand, as docs/EVALUATION.md (check 8) says:
    ``robustlab.straight_through(preprocess, stand_in=torch median)``, so robustlab's surrogate backpropagates
    through the torch median instead of the identity it gives a cut module on its own (forward unchanged)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base)
        straight_through(self.preprocess, stand_in=lambda x: median3x3(x, "replicate"))


class NumpyMedianInline(PlantedDefense):
    """The numpy median round trip of :class:`NumpyMedian` written inline in this module's own forward (no
    submodule to give the identity backward): an automatic straight-through surrogate cannot repair it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from scipy.ndimage import median_filter

        out = median_filter(x.detach().cpu().numpy(), size=(1, 1, 3, 3), mode="reflect")
        return self.base(torch.from_numpy(out).to(x.device, x.dtype))

    def twin_forward(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "true":
            return self.base(median3x3(x, "replicate"))
        return self.base(identity_backward(numpy_median3x3(x), x))
