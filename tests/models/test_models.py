"""Registry-driven contract tests for every model (timm-style), on tiny inputs and reduced widths."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UserError
from robustlab.models import MODELS, ImageClassifier, Normalize, create_model

# name -> (options making a cheap variant of the same architecture, input shape C×H×W).
# wrn34_10 / wrn28_10 have fixed sizes: their contract runs on the same class through wide_resnet.
FAST: dict[str, tuple[str, dict[str, Any], tuple[int, int, int]]] = {
    "small_cnn": ("small_cnn", {"width": 8}, (1, 8, 8)),
    "resnet18": ("resnet18", {"width": 8}, (3, 32, 32)),
    "preact_resnet18": ("preact_resnet18", {"width": 8}, (3, 32, 32)),
    "preact_resnet_small": ("preact_resnet_small", {"width": 4, "depths": [1, 2]}, (3, 32, 32)),
    "vgg16_bn": ("vgg16_bn", {"width": 8}, (3, 32, 32)),
    "wide_resnet": ("wide_resnet", {"depth": 10, "widen_factor": 1}, (3, 32, 32)),
    "wrn34_10": ("wide_resnet", {"depth": 10, "widen_factor": 2, "dropout": 0.3}, (3, 32, 32)),
    "wrn28_10": ("wide_resnet", {"depth": 16, "widen_factor": 1}, (3, 32, 32)),
}
# Full-size parameter counts with 10 classes (computed; regression guard for the architectures).
FULL_PARAMS = {
    "small_cnn": 288_170,
    "resnet18": 11_173_962,
    "preact_resnet18": 11_172_170,
    "preact_resnet_small": 308_378,
    "vgg16_bn": 14_724_042,
    "wide_resnet": 46_160_474,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
}
K = 7
NAMES = MODELS.names()



def _fast(name: str) -> tuple[ImageClassifier, torch.Tensor]:
    factory, kw, shape = FAST[name]
    model = create_model(factory, num_classes=K, in_channels=shape[0], **kw)
    return model, torch.rand(2, *shape)


def test_every_registered_model_has_a_test_spec() -> None:
    assert set(NAMES) == set(FAST) == set(FULL_PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str) -> None:
    model, x = _fast(name)
    # train mode: logits, no NaN, every parameter gets a gradient
    model.train()
    out = model(x)
    assert out.shape == (2, K) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    # features / head split, eval mode
    model.eval()
    with torch.no_grad():
        logits = model(x)
        f = model.forward_features(x)
        assert f.ndim == 4 and f.shape[:2] == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(f), logits)
        v = model.forward_head(f, pre_logits=True)
        assert v.shape == (2, model.num_features)
        torch.testing.assert_close(model.get_classifier()(v), logits)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)  # eval mode is deterministic
        # intermediates agree with feature_info, and the last one leads to forward_features via `final`
        feats = model.forward_intermediates(x)
        assert len(feats) == len(model.stages) == len(model.feature_info)
        for t, info in zip(feats, model.feature_info):
            assert t.shape[1] == info["num_chs"]
            assert t.shape[-1] == x.shape[-1] // int(info["reduction"])
            assert info["module"] == f"stages.{model.feature_info.index(info)}"
        torch.testing.assert_close(model.final(feats[-1]), f)
        picked = model.forward_intermediates(x, [-1, 0])
        torch.testing.assert_close(picked[0], feats[-1])
        torch.testing.assert_close(picked[1], feats[0])
    assert model.get_classifier() is model.head
    assert model.head.weight.shape == (K, model.num_features)
    assert model.feature_info[-1]["num_chs"] == model.num_features
    assert all(isinstance(s, nn.Sequential) for s in model.stages)


@pytest.mark.parametrize("name", NAMES)
def test_normalize_is_first_layer(name: str) -> None:
    model, x = _fast(name)
    first = next(iter(model.children()))
    assert first is model.normalize and isinstance(first, Normalize)
    c = x.shape[1]
    mean = torch.tensor([0.5] * c if c != 3 else [0.4914, 0.4822, 0.4465]).view(1, -1, 1, 1)
    std = torch.tensor([0.5] * c if c != 3 else [0.2471, 0.2435, 0.2616]).view(1, -1, 1, 1)
    torch.testing.assert_close(model.normalize(x), (x - mean) / std)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_shape_and_params(name: str) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == FULL_PARAMS[name]
    if name == "wide_resnet":  # same network as wrn34_10
        return
    shape = FAST[name][2]
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, *shape))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_preact_resnet_small_depths() -> None:
    model = create_model("preact_resnet_small", width=4, depths=[2, 1, 3])
    assert [len(s) for s in model.stages] == [2, 1, 3] and model.num_features == 16
    with pytest.raises(UserError, match="depths"):
        create_model("preact_resnet_small", depths=[1, 0])


def test_small_cnn_any_size_and_custom_stats() -> None:
    model = create_model("small_cnn", in_channels=3, num_classes=4, width=4, mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert model(torch.rand(2, 3, 11, 13)).shape == (2, 4)
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor([1.0, 2.0, 3.0]))


def test_wrn_dropout_only_in_train_mode() -> None:
    model = create_model("wide_resnet", depth=10, widen_factor=1, dropout=0.5, num_classes=3)
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))


def test_reset_classifier() -> None:
    model = create_model("small_cnn", width=4)
    model.reset_classifier(3)
    assert model.head.weight.shape == (3, model.num_features) and model.num_classes == 3
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_create_drops_none_kwargs() -> None:
    model = MODELS.create("small_cnn", width=None, num_classes=None, mean=None)
    assert model.num_classes == 10 and model.num_features == 128 and model.in_channels == 1
    model = create_model("wide_resnet", depth=10, widen_factor=None, dropout=None, std=None)
    assert model.num_features == 640


def test_unknown_name_suggests() -> None:
    with pytest.raises(UserError, match="resnet18"):
        create_model("resnet17")


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="mean"):
        create_model("resnet18", mean=(0.5,))
    with pytest.raises(UserError, match="std"):
        create_model("small_cnn", in_channels=1, std=(0.5, 0.5))
    with pytest.raises(UserError, match="widen"):
        create_model("wrn34_10", widen_factr=2)
    with pytest.raises(UserError, match="depth"):
        create_model("wide_resnet", depth=12)
    with pytest.raises(UserError, match="stage index"):
        create_model("small_cnn", width=4).forward_intermediates(torch.rand(1, 1, 8, 8), [3])


def test_duplicate_registration_raises() -> None:
    with pytest.raises(RuntimeError, match="duplicate"):
        MODELS.register(lambda **kw: None, name="resnet18")
    assert MODELS.names("wrn*") == ["wrn28_10", "wrn34_10"]


def test_plugin_points_on_32x32() -> None:
    """Where METHODS.md §2 puts FSR: ResNets after layer4 (4×4), WRN after block3 + final BN-ReLU (8×8),
    VGG-16 after the 4th conv stage before its pool (stages[3], 4×4), small CNN after its last stage."""
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for name, kw in (("resnet18", {"width": 8}), ("preact_resnet18", {"width": 8})):
            assert create_model(name, **kw).eval().forward_features(x).shape == (1, 64, 4, 4)
        wrn = create_model("wide_resnet", depth=10, widen_factor=1).eval()
        assert wrn.forward_features(x).shape == (1, 64, 8, 8)
        assert isinstance(wrn.final[0], nn.BatchNorm2d) and isinstance(wrn.final[1], nn.ReLU)
        vgg = create_model("vgg16_bn", width=8).eval()
        assert vgg.forward_intermediates(x, [3])[0].shape == (1, 64, 4, 4)
        assert isinstance(vgg.stages[4][0], nn.MaxPool2d)
        small = create_model("small_cnn", width=4).eval()
        assert small.forward_features(torch.rand(1, 1, 8, 8)).shape == (1, 16, 2, 2)


def test_forward_output_keyword_returns_what_a_method_needs() -> None:
    """``output`` selects pooled features or (map, logits) from one call; the default is the logits."""
    from robustlab.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", width=8).eval()
    x = torch.rand(3, 1, 8, 8)
    f = model.forward_features(x)
    assert torch.equal(model(x), model.forward_head(f))
    assert torch.equal(model(x, output="pre_logits"), model.forward_head(f, pre_logits=True))
    fmap, logits = model(x, output="features_and_logits")
    assert torch.equal(fmap, f) and torch.equal(logits, model(x))
    with pytest.raises(ValueError):
        model(x, output="features")
