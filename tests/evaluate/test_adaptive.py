"""Adaptive attacks are built for the model at hand and judged on its final logits."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.config import AttackConfig, MethodConfig
from robustlab.data import ImageDataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.adaptive import build_adaptive
from robustlab.methods import create_method
from robustlab.models import create_model


def plugin_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    method = create_method(MethodConfig(name=name, attack=AttackConfig(eps=0.1)), torch.Generator())
    return method.prepare_model(create_model("small_cnn", num_classes=10, in_channels=1, width=8)).eval()


def member_names(model: nn.Module, **kwargs: object) -> list[str]:
    group = build_adaptive(model, torch.rand(4, 1, 8, 8), eps=0.1, norm="linf", step_size=0.025, num_classes=10,
                           **kwargs)
    return [] if group is None else [m.name for m in group.members]


def test_members_follow_the_model() -> None:
    assert member_names(create_model("small_cnn", num_classes=10, in_channels=1, width=8).eval()) == []
    fsr = member_names(plugin_model("pgd_at+fsr"))
    assert fsr == ["pgd-aux:z_pos", "pgd-aux:z_neg", "pgd-aux:z_rec", "pgd-final+aux"]
    ancra = member_names(plugin_model("trades+ancra"))
    assert ancra[:3] == ["pgd-aux:p1", "pgd-aux:p2", "pgd-final+aux"]
    assert ancra[3:] == [f"pgd-gate:{c}" for c in range(10)]
    source = create_model("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    assert member_names(source, transfer_source=source) == ["transfer"]


class NoisyLinear(nn.Module):
    """Random in eval mode: the EOT member applies."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) + 0.05 * torch.randn_like(x.flatten(1)))


def test_random_model_gets_eot_and_adaptive_never_raises_accuracy() -> None:
    assert member_names(NoisyLinear().eval()) == ["pgd-eot"]
    model = plugin_model("trades+ancra")
    images = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    data = ImageDataset(images=images, labels=labels, classes=[str(i) for i in range(10)], name="toy")
    record = evaluate_model(model, data, attacks=["pgd-5"], eps=0.05, device="cpu", adaptive=True, log=lambda _: None)
    assert record["clean_acc"] == 1.0
    assert record["robust_acc"] <= min(a["robust_acc"] for a in record["attacks"].values())
    assert "adaptive" in record["attacks"] and "pgd-gate:3" in record["attack_params"]["adaptive"]
