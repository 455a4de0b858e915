"""Outside-model files for the CLI tests of ``robustlab eval --model``: a tiny digits classifier and its misbehaving
kin.

:func:`write_model` writes ``FILE.py`` with the factory ``build`` (one of :data:`FORWARDS`: the logits
line of a linear 8×8 → 10 model) and seeded weights beside it; :func:`eval_args` is the matching command.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustlab.data import load_dataset

TEMPLATE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return {forward}


def build():
    return Net()
'''

FORWARDS = {
    "plain": "z",
    "nan": "z * float('nan')",
    "integer": "z.round().long()",
    "detached": "z.detach()",
    "constant": "self.fc.bias.expand(x.shape[0], 10) * 1.0",
    "no_grad": "self.fc(x.flatten(1).detach())",
    "rounded": "self.fc(torch.round(x.flatten(1) * 255) / 255)",  # 8-bit quantisation: a no-op on the values
    "numpy": "self.fc(torch.from_numpy(x.detach().flatten(1).numpy().copy()))",
    "numpy_marked": "self.fc(__import__('robustlab').straight_through(lambda t: torch.from_numpy(t.detach().numpy()"
                    ".copy()))(x.flatten(1)))",
    # the same logits, reshaped into pairs of inputs: fails on an odd batch of three or more (an attack's survivors)
    "pairs": "z if x.shape[0] == 1 else self.fc(x.flatten(1).view(-1, 2, 64).flatten(0, 1))",
    # batch statistics at evaluation time: logits depend on the batch, and a batch of one raises
    "batch_norm": "torch.nn.functional.batch_norm(z, None, None, training=True)",
}


def write_model(folder: Path, forward: str = "plain", seed: int = 0, name: str = "net.py") -> tuple[Path, Path]:
    """``folder/name`` with factory ``build`` and ``folder/weights.pt`` (seeded); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / name
    model_file.write_text(TEMPLATE.format(forward=FORWARDS[forward]))
    weights = folder / "weights.pt"
    torch.save(fitted_weights(seed), weights)
    return model_file, weights


def fitted_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Least-squares fit of one-hot labels on the digits training images (about 90% test accuracy), plus ``seed``-scaled
    noise."""
    train = load_dataset("digits", "train")
    x = torch.cat([train.images.flatten(1).double() / 255, torch.ones(len(train.labels), 1, dtype=torch.double)], 1)
    # pinv: some pixels are always 0
    solution = (torch.linalg.pinv(x) @ nn.functional.one_hot(train.labels, 10).double()).float()
    noise = torch.randn(solution.shape, generator=torch.Generator().manual_seed(seed)) * 0.01 * seed
    solution = solution + noise
    return {"fc.weight": solution[:64].t().contiguous(), "fc.bias": solution[64].contiguous()}


def eval_args(model_file: Path, weights: Path, *extra: str, n: int = 16, attacks: str = "fgsm,pgd-3") -> list[str]:
    """``robustlab eval --model model_file:build`` on ``n`` digits test images, no checks, ε 0.1."""
    return ["eval", "--model", f"{model_file}:build", "--weights", str(weights), "--data", "digits", "--n-examples",
            str(n), "--attacks", attacks, "--eps", "0.1", "--no-checks", *extra]
