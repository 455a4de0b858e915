"""Base objectives of METHODS.md §1: natural, PGD-AT, TRADES and MART.

Per-sample formulas live in small functions (``trades_terms``, ``mart_terms``) so plug-ins can reuse
them on auxiliary heads; the :class:`Method` subclasses only craft inputs and combine terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.config import AttackConfig, parse_number
from robustlab.errors import UserError
from robustlab.methods.base import METHODS, Method, Parts, Terms, accuracy


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax p ‖ softmax q) summed over classes, one value per sample (gradient through both)."""
    log_p = F.log_softmax(logits_p.float(), dim=1)
    log_q = F.log_softmax(logits_q.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_terms(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, Parts]:
    """TRADES per sample: CE(f(x), y) + β·KL(P(x) ‖ P(x'))."""
    ce = F.cross_entropy(logits_clean.float(), y, reduction="none")
    kl = kl_per_sample(logits_clean, logits_adv)
    return ce + beta * kl, {"ce_clean": ce, "kl": kl}


def mart_terms(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
               lam: float) -> tuple[torch.Tensor, Parts]:
    """MART per sample: BCE(p', y) + λ·KL(p ‖ p')·(1 − p_y), with BCE = −log p'_y − log(1 − max_{k≠y} p'_k).

    ``1 − max p'_k`` is clamped at 1e-12 before the log (the official code adds 1e-4 instead).
    """
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
    p_adv = log_p_adv.exp()
    p_clean = F.softmax(logits_clean.float(), dim=1)
    ce_adv = -log_p_adv.gather(1, y[:, None]).squeeze(1)
    p_other = p_adv.scatter(1, y[:, None], 0.0).amax(dim=1)
    margin_term = -torch.log((1.0 - p_other).clamp_min(1e-12))
    kl = kl_per_sample(logits_clean, logits_adv)
    weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
    return ce_adv + margin_term + lam * kl * weight, {"ce_adv": ce_adv, "bce_margin": margin_term,
                                                      "kl_weighted": kl * weight}


def trades_start(x: torch.Tensor, generator: torch.Generator, scale: float = 0.001) -> torch.Tensor:
    """The attack start of TRADES and MART (their official codes): x + 0.001·N(0, I), clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + scale * noise).clamp(0.0, 1.0)


class TradesAttackLoss:
    """The TRADES attack objective: KL(P(x) ‖ P(x')) with P(x) fixed (computed once, no grad)."""

    def __init__(self, logits_clean: torch.Tensor) -> None:
        self.logits_clean = logits_clean.detach()

    def __call__(self, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return kl_per_sample(self.logits_clean, logits_adv)


class _CleanAndAdversarial(Method):
    """Objectives built from one clean and one adversarial forward (TRADES, MART)."""

    clean_in_loss = True

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        x_adv = self.adversarial(model, x, y)
        logits_clean = self.forward(model, x, y, "clean")
        logits_adv = self.forward(model, x_adv, y, "adv")
        total, parts = self.head_loss(logits_clean, logits_adv, y)
        parts.update(acc_clean=accuracy(logits_clean, y), acc_adv=accuracy(logits_adv, y))
        return Terms(total, parts, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv)


@METHODS.register
class natural(Method):
    """Natural training: CE(f(x), y). No attack; the teacher model for AFD."""

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        logits = self.forward(model, x, y, "clean")
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return Terms(ce, {"ce_clean": ce, "acc_clean": accuracy(logits, y)}, logits_clean=logits)


@METHODS.register
class pgd_at(Method):
    """PGD adversarial training (Madry et al., ICLR 2018): CE(f(x'), y), x' = PGD-K on CE.

    Deviation [ours, METHODS.md §1]: the attack runs with the model in eval mode by default
    (``method.attack.bn_mode``; Madry's code attacks in train mode).
    Test time: a plain deterministic forward.
    """

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' = PGD-K on CE (the run's attack settings)."""
        return self.craft(model, x, y, loss="ce")

    def head_loss(
        self, logits_clean: torch.Tensor | None, logits_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Parts]:
        """CE(f(x'), y) per sample (the clean logits are not used)."""
        ce = F.cross_entropy(logits_adv.float(), y, reduction="none")
        return ce, {"ce_adv": ce}

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        x_adv = self.adversarial(model, x, y)
        logits_adv = self.forward(model, x_adv, y, "adv")
        ce, parts = self.head_loss(None, logits_adv, y)
        return Terms(ce, {**parts, "acc_adv": accuracy(logits_adv, y)}, x_adv=x_adv, logits_adv=logits_adv)


@METHODS.register
class trades(_CleanAndAdversarial):
    """TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL(P(x) ‖ P(x')), β = 6.

    x' maximises KL(P(x) ‖ P(x')) from x + 0.001·N(0, I) with K sign steps (default 2/255; the
    paper uses 0.007), model in eval mode during the attack. Test time: a plain forward.
    """

    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, beta: float = 6.0) -> None:
        super().__init__(attack, generator)
        self.beta = parse_number(beta, "method.options.beta")

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' of the TRADES attack (eval-mode clean logits as the fixed reference); one tape entry."""

        def make() -> torch.Tensor:
            with eval_mode(model, self.attack.bn_mode == "eval"), torch.no_grad(), self.attack_precision():
                reference = model(x)
            return self.craft(model, x, y, loss=TradesAttackLoss(reference), x_init=trades_start(x, self.generator))

        return self.tape(make)

    def head_loss(
        self, logits_clean: torch.Tensor | None, logits_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Parts]:
        """:func:`trades_terms` with this run's β."""
        return trades_terms(logits_clean, logits_adv, y, self.beta)


@METHODS.register
class mart(_CleanAndAdversarial):
    """MART (Wang et al., ICLR 2020): BCE(f(x'), y) + λ·KL(P(x) ‖ P(x'))·(1 − P_y(x)), λ = 6.

    x' = PGD-K on CE, eval mode [ours default], starting at x + 0.001·N(0, I) clipped to [0, 1] as the
    official MART code does (option ``start: normal``, the default); ``start: uniform`` starts
    uniformly in the ε-ball instead (``method.attack.random_start``). Test time: a plain forward.
    """

    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, lam: float = 6.0,
                 start: str = "normal") -> None:
        super().__init__(attack, generator)
        self.lam = parse_number(lam, "method.options.lam")
        if start not in ("normal", "uniform"):
            raise UserError(f"method.options.start must be normal or uniform, got {start!r}")
        self.start = start

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' = PGD-K on CE from the chosen start."""
        x_init = trades_start(x, self.generator) if self.start == "normal" else None
        return self.craft(model, x, y, loss="ce", x_init=x_init)

    def head_loss(
        self, logits_clean: torch.Tensor | None, logits_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Parts]:
        """:func:`mart_terms` with this run's λ."""
        return mart_terms(logits_clean, logits_adv, y, self.lam)
