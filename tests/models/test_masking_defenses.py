"""The planted defenses of robustlab.models.masking (benchmarks/masking_zoo.py): each twin gives the defense's logits
exactly, the identity twin has an input gradient, and the defense hides it the way it is meant to."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from robustlab.models import create_model
from robustlab.models.masking import (
    JPEG_LUMINANCE,
    BitDepth,
    BlurredInput,
    DataInput,
    DetachedInput,
    JpegInput,
    MeanSparse,
    MedianInput,
    NumpyMedian,
    NumpyMedianInline,
    NumpyMedianMarked,
    PlantedDefense,
    dct_matrix,
    jpeg_table,
    median3x3,
    numpy_median3x3,
)

Build = Callable[[nn.Module, torch.Tensor], PlantedDefense]
DEFENSES: dict[str, Build] = {
    "detach": lambda base, _x: DetachedInput(base),
    "data": lambda base, _x: DataInput(base),
    "median": lambda base, _x: MedianInput(base),
    "bitdepth": lambda base, _x: BitDepth(base, bits=3),
    "jpeg": lambda base, _x: JpegInput(base, quality=50),
    "meansparse": lambda base, x: MeanSparse.fit(base, x, alpha=0.5),
    "nograd": lambda base, _x: BlurredInput(base),
    "numpy": lambda base, _x: NumpyMedian(base),
    "numpy_marked": lambda base, _x: NumpyMedianMarked(base),
    "numpy_inline": lambda base, _x: NumpyMedianInline(base),
}
MISSING = ("detach", "data", "median", "nograd", "numpy", "numpy_marked", "numpy_inline")  # no input gradient at all
ZERO = ("bitdepth", "jpeg")  # an input gradient that is zero almost everywhere
SHAPES = {"digits": (1, 8, 8), "odd": (3, 12, 12)}  # 12 x 12: the JPEG padding to a multiple of 8


def _images(shape: tuple[int, int, int], n: int = 6) -> torch.Tensor:
    """Random 8-bit images as floats in [0, 1] (seeded by conftest)."""
    return torch.randint(0, 256, (n, *shape)).float() / 255


def _defense(name: str, shape: tuple[int, int, int]) -> tuple[PlantedDefense, torch.Tensor]:
    base = create_model("small_cnn", num_classes=10, in_channels=shape[0], width=8).eval()
    x = _images(shape)
    return DEFENSES[name](base, _images(shape, 16)).eval(), x


def _input_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    if not out.requires_grad:
        return out, None
    (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
    return out, grad


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("name", list(DEFENSES))
def test_twins_give_the_defense_logits(name: str, shape: tuple[int, int, int]) -> None:
    defense, x = _defense(name, shape)
    with torch.no_grad():
        want = defense(x)
    twins = defense.twins()
    assert set(twins) == {"true", "identity"}
    own = {id(p) for p in defense.parameters()} | {id(b) for b in defense.buffers()}
    for kind, twin in twins.items():
        assert {id(p) for p in twin.parameters()} <= own, kind  # shares the defense's parameters, adds none
        got, _ = _input_grad(twin, x)  # with a graph, as an attack runs it
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-6, msg=f"{name} {kind} twin drifted")


@pytest.mark.parametrize("name", list(DEFENSES))
def test_identity_twin_has_an_input_gradient_and_the_defense_hides_it(name: str) -> None:
    defense, x = _defense(name, SHAPES["digits"])
    _, grad = _input_grad(defense.twins()["identity"], x)
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every sample
    _, own = _input_grad(defense, x)
    if name in MISSING:
        assert own is None
    elif name in ZERO:
        assert own is not None and bool((own == 0).all())
    else:  # meansparse: autograd's gradient is the true one, zero through the masked features
        assert own is not None and not torch.allclose(own, grad)


def test_true_twins_differentiate_where_the_defense_cuts() -> None:
    for name in ("detach", "data", "median", "nograd", "numpy", "numpy_inline"):
        defense, x = _defense(name, SHAPES["digits"])
        _, grad = _input_grad(defense.twins()["true"], x)
        assert grad is not None and bool(grad.abs().sum() > 0), name
    for name in ("bitdepth", "jpeg", "meansparse"):
        defense, _ = _defense(name, SHAPES["digits"])
        assert defense.twins()["true"] is defense  # its autograd gradient is already the true one


def test_meansparse_masks_everything_with_a_large_threshold() -> None:
    base = create_model("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    x = _images((1, 8, 8))
    defense = MeanSparse.fit(base, _images((1, 8, 8), 16), alpha=1e6).eval()
    _, grad = _input_grad(defense, x)
    assert grad is not None and bool((grad == 0).all())
    with torch.no_grad():
        logits = defense(x)
    assert torch.allclose(logits, logits[:1].expand_as(logits))  # every input gives the mean features' logits


def test_numpy_median_matches_the_torch_median_with_scipys_border() -> None:
    x = _images((3, 8, 8))
    assert torch.equal(numpy_median3x3(x), median3x3(x, "replicate"))
    assert not torch.equal(median3x3(x, "reflect"), median3x3(x, "replicate"))  # torch's reflect is scipy's mirror


def test_jpeg_pieces() -> None:
    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8), rtol=0, atol=1e-6)
    assert torch.equal(jpeg_table(50), torch.tensor(JPEG_LUMINANCE, dtype=torch.float32))
    assert bool((jpeg_table(100) == 1).all())
    base = create_model("small_cnn", num_classes=10, in_channels=3, width=8).eval()
    x = _images((3, 12, 12))
    y = JpegInput(base, quality=50).compress(x)
    assert y.shape == x.shape and bool((y >= 0).all() and (y <= 1).all())
    assert 0 < float((y - x).abs().mean()) < 0.2
    torch.testing.assert_close(JpegInput(base, quality=100).compress(x), x, rtol=0, atol=3 / 255)
