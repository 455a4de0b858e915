"""AWP: adversarial weight perturbation, a plug-in on top of any adversarial objective.

Source: Dongxian Wu, Shu-Tao Xia, Yisen Wang, "Adversarial Weight Perturbation Helps Robust
Generalization", NeurIPS 2020 (arXiv 2004.05884). Formulas from the paper; no code of the official
release is used.

One training step with the base objective ℓ (the per-batch mean of the base's per-sample loss):

1. x' is crafted at the current weights w by the base itself (its own attack, unchanged).
2. Ascent: g = ∇_w ℓ(w; x'), one step per layer l, scaled relative to the layer's weights:
   v_l = γ·‖w_l‖·g_l/‖g_l‖ (default γ = 5e-3, the released TRADES-AWP code's ``--awp-gamma``; the released
   AT-AWP code and its CIFAR-10 logs use 0.01, which the bundled PGD-AT+AWP configs set). Layers are the
   parameters with two or more dimensions (conv and linear weights); biases and BN affine
   parameters are not perturbed. For TRADES ℓ is the TRADES loss (the paper's AWP-TRADES proxy:
   CE(f(x), y) + β·KL(P(x) ‖ P(x'))), for MART the MART loss, for PGD-AT CE(f(x'), y).
3. The loss is recomputed at w + v on the same x' (and the same random draws) and returned; the loop
   backpropagates it, and :meth:`awp.before_step` puts w back before the optimiser step, so the
   update is a plain optimiser step from w with the gradient taken at w + v.
4. Warm-up: no perturbation during the first ``awp_warmup`` epochs (default 0, as AT-AWP's code; the
   TRADES-AWP code's ``--awp-warmup 10``, tested on 1-based epochs, is ``awp_warmup: 9`` here).

Composition: AWP wraps a whole Method, base or plug-in, so it stacks last (``pgd_at+awp``,
``trades+awp``, ``pgd_at+fsr+awp``); the other plug-ins check the base they wrap and refuse AWP below
them. The second pass replays the x' of the first through the shared :class:`~robustlab.methods.base.CraftTape`
and restores the attack generator first, so plug-ins' random draws (FSR's mask noise, UAD's coins,
ANCRA's negatives) are the same in both passes.

Deviations and choices [ours]:

- The ascent gradient comes from the model itself (unwrapped from DDP/compile) with the batch
  norm running statistics put back afterwards, instead of a proxy copy of the model (same values,
  no second model in memory). Under DDP each rank perturbs with its own batch's gradient; the
  update's gradient is all-reduced as usual, so the replicas stay equal.
- Weights are restored *before* the optimiser step (the official code subtracts v after it), so
  weight decay and momentum see w, not w + v; restoring copies w back exactly.
- Cost over the base: one more forward and backward per step (≈ 1.1× a PGD-10 step).

Test-time path: AWP changes only training; the model and its prediction are the base's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from robustlab.config import parse_number
from robustlab.errors import UserError
from robustlab.methods.base import PLUGINS, Method, PlugIn, Terms

SUPPORTED_BASES = ("pgd_at", "trades", "mart", "fgsm_rs", "n_fgsm")
EPS = 1e-20


def unwrapped(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The layers AWP perturbs: trainable parameters with at least two dimensions."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def weight_perturbation(weights: list[torch.Tensor], grads: list[torch.Tensor | None],
                        gamma: float) -> list[torch.Tensor]:
    """v_l = γ·‖w_l‖·g_l/(‖g_l‖ + 1e-20) per layer (zeros where a layer got no gradient)."""
    out = []
    for w, g in zip(weights, grads):
        if g is None:
            out.append(torch.zeros_like(w))
        else:
            g = g.detach()
            out.append(gamma * w.detach().norm() * g / (g.norm() + EPS))
    return out


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Put every buffer (BN running statistics) back as it was when the block ends."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


@PLUGINS.register
class awp(PlugIn):
    """AWP plug-in (Wu et al., NeurIPS 2020): ``pgd_at+awp``, ``trades+awp``, ``pgd_at+fsr+awp``, ...

    Options: ``gamma`` (5e-3, relative perturbation size per layer), ``awp_warmup`` (0 epochs
    without perturbation). Formulas, composition and deviations: see :mod:`robustlab.methods.awp`.
    """

    supported_bases = SUPPORTED_BASES
    stacks = True  # may wrap another plug-in (listed as base+plugin+awp)

    def __init__(self, base: Method, *, gamma: float = 5e-3, awp_warmup: int = 0) -> None:
        super().__init__(base)
        self.gamma = parse_number(gamma, "method.options.gamma")
        if self.gamma < 0:
            raise UserError(f"method.options.gamma must be >= 0, got {gamma!r}")
        if isinstance(awp_warmup, bool) or not isinstance(awp_warmup, int) or awp_warmup < 0:
            raise UserError(f"method.options.awp_warmup must be a whole number of epochs >= 0, got {awp_warmup!r}")
        self.warmup = awp_warmup
        self.epoch = 0
        self._saved: list[tuple[nn.Parameter, torch.Tensor]] = []

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.start_epoch(epoch)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        if self.epoch < self.warmup or self.gamma == 0:
            return self.base.terms(model, x, y, step=step)
        if self._saved:
            raise RuntimeError("AWP's previous perturbation is still applied: call before_step() after each backward")
        inner = unwrapped(model)
        params = perturbed_parameters(inner)
        state = self.generator.get_state()
        with self.tape.session("record"), buffers_kept(inner):
            first = self.base.terms(inner, x, y, step=step)
            grads = torch.autograd.grad(first.per_sample.mean(), params, allow_unused=True)
        self.perturb(params, weight_perturbation(params, list(grads), self.gamma))
        self.generator.set_state(state)
        try:
            with self.tape.session("replay"):
                return self.base.terms(model, x, y, step=step)
        except BaseException:
            self.restore()
            raise

    def perturb(self, params: list[nn.Parameter], v: list[torch.Tensor]) -> None:
        """w ← w + v, keeping w to restore."""
        with torch.no_grad():
            self._saved = [(p, p.detach().clone()) for p in params]
            for p, d in zip(params, v):
                p.add_(d)

    def restore(self) -> None:
        """Copy the unperturbed weights back (nothing when none are perturbed)."""
        with torch.no_grad():
            for p, w in self._saved:
                p.copy_(w)
        self._saved = []

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.restore()
        self.base.before_step(optimizer)
