"""The feature gap: how far adversarial inputs move the penultimate feature (AFD's motivating measurement).

AFD (Zhou et al., AAAI 2025, METHODS.md §4) reports that the mean distance between last-hidden-layer
features of natural and adversarial inputs grows during vanilla adversarial fine-tuning and stays
flat with AFD. :func:`feature_gap` measures it for any model: the mean L2 distance between the pooled
penultimate features ``forward_head(forward_features(x), pre_logits=True)`` of a fixed probe batch and
of its PGD adversarial examples, in eval mode. For an AFD model this is the backbone feature g(x),
before the disentangler D1.

:func:`feature_gap_logger` turns it into a per-epoch hook for :meth:`Trainer.fit` that writes
``kind: "feature_gap"`` records (``feature_gap``, ``feature_norm``) to the run's ``metrics.jsonl``
and TensorBoard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.attacks.pgd import pgd
from robustlab.methods.afd import pooled_features
from robustlab.runs.metrics import MetricsLog, read_metrics

if TYPE_CHECKING:
    from robustlab.train.loop import Trainer


def feature_distances(
    model: nn.Module, x_probe: torch.Tensor, y_probe: torch.Tensor, *, eps: float, steps: int, step_size: float,
    norm: str = "linf", seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ‖g(x) − g(x')‖₂ and ‖g(x)‖₂, x' = PGD-``steps`` on CE (all steps, last iterate), eval mode.

    The attack's random start comes from a generator seeded with ``seed``, so repeated calls on the
    same weights give the same numbers and the global RNG is untouched.
    """
    generator = torch.Generator(device=x_probe.device).manual_seed(seed)
    with eval_mode(model):
        x_adv = pgd(model, x_probe, y_probe, eps=eps, norm=norm, steps=steps, step_size=step_size,
                    early_stop=False, generator=generator)
        with torch.no_grad():
            clean = pooled_features(model, x_probe).float()
            adv = pooled_features(model, x_adv).float()
    return (clean - adv).norm(dim=1), clean.norm(dim=1)


def feature_gap(
    model: nn.Module, x_probe: torch.Tensor, y_probe: torch.Tensor, *, eps: float, steps: int, step_size: float,
    norm: str = "linf", seed: int = 0,
) -> float:
    """Mean L2 distance between the pooled penultimate features of clean and PGD inputs (eval mode).

    0 when ``eps`` is 0. The model's mode is restored afterwards.
    """
    gaps, _ = feature_distances(model, x_probe, y_probe, eps=eps, steps=steps, step_size=step_size, norm=norm,
                                seed=seed)
    return float(gaps.mean().item())


def feature_gap_logger(trainer: "Trainer", *, examples: int = 256) -> Callable[[int], None]:
    """A ``fit(after_epoch=...)`` hook logging the feature gap of the evaluated model after each epoch.

    The probe is the first ``examples`` samples of the run's fixed held-out subset; the attack is the
    run's training attack (ε, norm, steps, step size), random start seeded by ``cfg.seed``. The
    evaluated model is the EMA copy when the run keeps one. Call ``hook(0)`` before training to log the
    starting point (it is written once per run, even when a fresh start is retried).
    """
    cfg = trainer.cfg
    attack = cfg.method.attack
    n = min(examples, len(trainer.eval_set.labels))
    x = trainer.eval_set.images[:n].to(trainer.device).float().div_(255.0)
    y = trainer.eval_set.labels[:n].to(trainer.device)

    def hook(epoch: int) -> None:
        if n == 0:
            return
        if epoch == 0 and any(r.get("epoch") == 0 for r in read_metrics(trainer.run_dir, "feature_gap")):
            return
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        gaps, norms = feature_distances(model, x, y, eps=attack.eps, steps=attack.steps, step_size=attack.step_size,
                                        norm=attack.norm, seed=cfg.seed)
        record = {"epoch": epoch, "feature_gap": gaps.mean(), "feature_norm": norms.mean(), "examples": n}
        metrics = getattr(trainer, "metrics", None)
        if metrics is not None and epoch > 0:
            metrics.write("feature_gap", trainer.step, record)
            return
        log = MetricsLog(trainer.run_dir, tensorboard=False)
        log.write("feature_gap", trainer.step, record)
        log.close()

    return hook
