"""The straight-through surrogate (issue 32, item 1): the model's own values, the stand-in's gradient, and nothing
replaced on a model that hides nothing.

Every hiding forward below feeds ``h`` to one fixed linear head. Its values under the surrogate must equal the
model's exactly, and its input gradient must be the stand-in's: the identity for every call here (so the plain
head's gradient, ``W^T 1``), twice that for ``2x`` computed under ``no_grad`` (the region's true gradient).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.surrogate import StraightThroughModel, inspect_forward, straight_through

Forward = Callable[[torch.Tensor], torch.Tensor]


def _no_grad_double(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return 2 * x


def _set_masked(x: torch.Tensor) -> torch.Tensor:
    h = x * 1
    h[h > 0.5] = 0.0
    return h


def _rounded_in_place(x: torch.Tensor) -> torch.Tensor:
    h = x * 255
    h.round_()
    return h / 255


# name -> (the hiding step, the call the log must name, the gradient factor of the stand-in)
HIDING: dict[str, tuple[Forward, str, float]] = {
    "detach": (lambda x: x.detach(), "Tensor.detach", 1.0),
    "torch.detach": (lambda x: torch.detach(x), "torch.detach", 1.0),
    "data": (lambda x: x.data, "Tensor.data", 1.0),
    "round 8-bit": (lambda x: torch.round(x * 255) / 255, "torch.round", 1.0),
    "round decimals": (lambda x: x.round(decimals=2), "Tensor.round", 1.0),
    "floor": (lambda x: torch.floor(x * 16) / 16, "torch.floor", 1.0),
    "sign": (lambda x: torch.sign(x - 0.5), "torch.sign", 1.0),
    "round_ in place": (_rounded_in_place, "Tensor.round_", 1.0),
    "floor_divide": (lambda x: (x * 255) // 1 / 255, "Tensor.__floordiv__", 1.0),
    "remainder quantisation": (lambda x: x - x % (1 / 16), "Tensor.remainder", 1.0),
    "uint8 cast": (lambda x: (x * 255).to(torch.uint8).float() / 255, "Tensor.to", 1.0),
    "binarisation": (lambda x: (x > 0.5).float(), "Tensor.gt", 1.0),
    "where constant": (lambda x: torch.where(x > 0.5, torch.zeros_like(x), x), "torch.where", 1.0),
    "masked_fill": (lambda x: x.masked_fill(x > 0.5, 0.0), "Tensor.masked_fill", 1.0),
    "setitem constant": (_set_masked, "Tensor.__setitem__", 1.0),
    "one_hot(argmax)": (lambda x: F.one_hot(x.argmax(1), x.shape[1]).float(), "Tensor.argmax -> F.one_hot", 1.0),
    "no_grad region": (_no_grad_double, "torch.no_grad", 2.0),
}


class Head(nn.Module):
    """``hide(x)`` then a fixed linear map of 12 features to 3 logits."""

    def __init__(self, hide: Forward) -> None:
        super().__init__()
        self.hide = hide
        self.fc = nn.Linear(12, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 12, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hide(x))


def _inputs() -> torch.Tensor:
    return torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(1)).float() / 255


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    x = x.clone().requires_grad_(True)
    out = model(x)
    if not out.requires_grad:
        return None
    try:
        (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    except RuntimeError:  # floor_divide: "derivative ... is not implemented"
        return None
    return grad


@pytest.mark.parametrize("name", list(HIDING))
def test_each_hiding_call_keeps_its_values_and_gets_the_stand_ins_gradient(name: str) -> None:
    hide, call, factor = HIDING[name]
    model, x = Head(hide), _inputs()
    surrogate = StraightThroughModel(model)
    true = _gradient(model, x)
    assert true is None or not bool(true.abs().gt(1e-6).all())  # the call does hide part of the gradient
    with torch.enable_grad():
        values = surrogate(x.clone().requires_grad_(True))
    assert torch.equal(values.detach(), model(x).detach())
    expected = factor * model.fc.weight.sum(0).expand_as(x)
    assert torch.allclose(_gradient(surrogate, x), expected, atol=1e-6)
    seen = inspect_forward(surrogate, x.clone().requires_grad_(True))
    assert [c for c, _ in seen.log.replaced] == [call]


class Healthy(nn.Module):
    """Differentiable calls a surrogate must leave alone: relu, clamp, max-pool, sigmoid, a where whose branches
    both carry the graph, batch norm in eval mode, a product with a comparison mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4).eval()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x.clamp(0, 1)))
        h = torch.where(h > 0, h, 0.1 * h).relu() + torch.sigmoid(h) * (h > 0.2)
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_a_model_that_hides_nothing_has_nothing_replaced_and_its_own_gradient() -> None:
    model, x = Healthy().eval(), torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    surrogate = StraightThroughModel(model)
    seen = inspect_forward(surrogate, x.clone().requires_grad_(True))
    assert seen.log.replaced == {} and seen.cut == {} and seen.output_has_graph
    assert torch.equal(_gradient(surrogate, x), _gradient(model, x))


def test_the_surrogate_leaves_parameters_and_mode_as_it_found_them() -> None:
    model = Head(lambda x: x.detach()).eval()
    frozen = model.fc.bias.requires_grad_(False)
    surrogate = StraightThroughModel(model)
    surrogate.train()
    _gradient(surrogate.eval(), _inputs())
    assert not model.training and model.fc.weight.requires_grad and not frozen.requires_grad


class NumpyMedian(nn.Module):
    """A 3-wide median over features, computed in numpy: the mode cannot see through it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy()
        padded = np.pad(a, ((0, 0), (1, 1)), mode="edge")
        return torch.from_numpy(np.median(np.stack([padded[:, :-2], a, padded[:, 2:]]), axis=0)).to(x.dtype)


class NumpyInside(Head):
    def __init__(self) -> None:
        super().__init__(lambda x: x)
        self.pre = NumpyMedian()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre(x))


class NumpyInline(Head):
    def __init__(self) -> None:
        super().__init__(NumpyMedian().forward)


def test_a_numpy_round_trip_in_a_module_gets_the_identity_there_and_one_inline_is_named_unrepaired() -> None:
    x = _inputs().requires_grad_(True)
    inside = inspect_forward(StraightThroughModel(NumpyInside()), x)
    assert inside.cut == {"pre": {"class": "NumpyMedian", "same_shape": True}}
    assert ("Tensor.numpy", "pre") in inside.log.numpy
    model = NumpyInside()
    repaired = StraightThroughModel(model, identity_modules=["pre"])
    assert torch.allclose(_gradient(repaired, x.detach()), model.fc.weight.sum(0).expand_as(x), atol=1e-6)
    with torch.enable_grad():
        assert torch.equal(repaired(x.detach().clone().requires_grad_(True)).detach(), model(x.detach()))
    inline = inspect_forward(StraightThroughModel(NumpyInline()), x)
    assert inline.cut == {"": {"class": "NumpyInline", "same_shape": False}} and not inline.output_has_graph


def test_a_component_marked_by_hand_gets_its_stand_in_only_inside_the_surrogate() -> None:
    quantise = straight_through(lambda x: torch.round(x.detach() * 4) / 4, stand_in=lambda x: 3 * x)
    model, x = Head(quantise), _inputs()
    assert _gradient(model, x) is None  # the model itself is unchanged
    assert torch.allclose(_gradient(StraightThroughModel(model), x), 3 * model.fc.weight.sum(0).expand_as(x),
                          atol=1e-5)
    marked = NumpyInside()
    assert straight_through(marked.pre) is marked.pre  # a module is marked in place, its state-dict keys unchanged
    assert torch.allclose(_gradient(StraightThroughModel(marked), x), marked.fc.weight.sum(0).expand_as(x), atol=1e-6)
    assert _gradient(marked, x) is None


class InferenceBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return x * 1


class InferenceInside(Head):
    def __init__(self) -> None:
        super().__init__(lambda x: x)
        self.pre = InferenceBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre(x).clone())


def test_an_inference_mode_block_is_found_by_the_output_it_cuts() -> None:
    """The mode does not see ``inference_mode``: the module whose output it cuts is found and given the identity."""
    x = _inputs().requires_grad_(True)
    seen = inspect_forward(StraightThroughModel(InferenceInside()), x)
    assert seen.cut == {"pre": {"class": "InferenceBlock", "same_shape": True}} and seen.log.replaced == {}
    model = InferenceInside()
    assert torch.allclose(_gradient(StraightThroughModel(model, ["pre"]), x.detach()),
                          model.fc.weight.sum(0).expand_as(x), atol=1e-6)
