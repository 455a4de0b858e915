"""The CUDA paths (bf16/fp16 autocast, GradScaler, channels_last, torch.compile, evaluation on the GPU).

They run only where CUDA is available (``benchmarks/gpu_check.sh`` runs them first) and skip elsewhere.
Each compares against a CPU or eager counterpart where one exists, so a silent GPU-only bug fails.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config

from robustlab.config import AttackConfig, MethodConfig
from robustlab.evaluate import evaluate_checkpoint
from robustlab.methods import create_method
from robustlab.models import create_model
from robustlab.runs.checkpoint import read_metadata
from robustlab.runs.metrics import read_metrics
from robustlab.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Killed(Exception):
    pass


def _kill(epoch: int) -> None:
    raise Killed


def _assert_learned(run_dir: Path) -> None:
    """Two epochs logged with finite training losses, the second lower (no update skipped or lost)."""
    losses = [r["train_loss"] for r in read_metrics(run_dir, "epoch")]
    assert len(losses) == 2 and all(map(math.isfinite, losses)) and losses[1] < losses[0], losses


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_with_autocast_channels_last_and_resume(tmp_path: Path, amp: str) -> None:
    """An interrupted CUDA run (autocast, GradScaler for fp16, channels_last) resumes with its CUDA RNG state."""
    cfg = tiny_config(tmp_path, **{"train.device": "cuda", "train.amp": amp, "train.channels_last": "true"})
    with pytest.raises(Killed):
        train(cfg, log=lambda _: None, after_epoch=_kill)
    assert read_metadata(cfg.run_dir / "checkpoints" / "last.safetensors")["epoch"] == 1
    messages: list[str] = []
    record = train(cfg, log=messages.append)
    assert any("resumed" in m for m in messages)
    assert record["epoch"] == 2
    _assert_learned(cfg.run_dir)


def test_cuda_compiled_training_runs(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"train.device": "cuda", "train.amp": "bf16", "train.compile": "true"})
    train(cfg, log=lambda _: None)
    _assert_learned(cfg.run_dir)


def test_compiled_pgd_at_step_matches_eager() -> None:
    """torch.compile of a PGD-AT loss (attack inside) gives the eager loss and gradients, bf16 + channels_last."""
    device = torch.device("cuda")
    attack = AttackConfig(eps=8 / 255, steps=3, step_size=2 / 255)
    model = (create_model("preact_resnet18", num_classes=10, in_channels=3, width=8).to(device)
             .to(memory_format=torch.channels_last))
    x = torch.rand(16, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=device)
    compiled = torch.compile(model)
    start = copy.deepcopy(model.state_dict())  # the first pass moves the BatchNorm running statistics
    losses, grads = [], []
    for forward in (model, compiled):
        model.load_state_dict(start)
        method = create_method(MethodConfig(name="pgd_at", attack=attack),
                               torch.Generator(device=device).manual_seed(0))
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = method.loss(forward, x, y)
        loss.backward()
        losses.append(loss.float().item())
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    assert math.isfinite(losses[0]) and losses[1] == pytest.approx(losses[0], rel=0.05)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.95


def test_evaluation_on_cuda_agrees_with_cpu(tmp_path: Path) -> None:
    """A CPU-trained run evaluated on CUDA and on the CPU: same clean verdicts, FGSM (no randomness) nearly the same."""
    cfg = tiny_config(tmp_path, **{"train.device": "cpu"})
    train(cfg, log=lambda _: None)
    common = dict(attacks=["fgsm", "pgd-5", "apgd-ce-t"], n_examples=64, log=lambda _: None)
    gpu = evaluate_checkpoint(cfg.run_dir, device="cuda", out=tmp_path / "gpu.json", **common)
    cpu = evaluate_checkpoint(cfg.run_dir, device="cpu", out=tmp_path / "cpu.json", **common, checks=False)
    assert gpu["device"].startswith("cuda") and gpu["checks_run"]
    assert gpu["per_sample"]["clean"] == cpu["per_sample"]["clean"]
    flips = sum(a != b for a, b in zip(gpu["per_sample"]["broken_by"]["fgsm"], cpu["per_sample"]["broken_by"]["fgsm"]))
    assert flips <= 2
    assert gpu["robust_acc"] <= gpu["attacks"]["fgsm"]["robust_acc"] <= gpu["clean_acc"]
    assert not [f for f in gpu["flags"] if f["code"] == "attack_bug"]
