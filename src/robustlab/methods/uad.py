"""UAD-AT (built from the abstract): uncertainty-aware distributional adversarial training.

Source: Dong et al., arXiv 2411.02871. No code is public and the paper body could not be read, so
everything here is **[ours]**, built from the abstract as METHODS.md §5 specifies: three switchable
components on top of PGD-AT or TRADES, every constant an option.

(a) ``dsu`` — distributional adversaries with uncertainty (feature-statistics Gaussian in the style
    of DSU, Li et al., ICLR 2022). A :class:`FeatureStatNoise` module is appended to each chosen stage
    (``dsu_stages``; default the first three stages, or all but the last when the model has fewer
    than four). On the *adversarial* training forward only, with probability ``dsu_prob`` per module
    and batch, it replaces the feature map A by σ̂·(A − μ)/σ + μ̂ with μ, σ the per-sample, per-channel
    spatial mean and std, μ̂ = μ + ξ₁·Σ_μ, σ̂ = σ + ξ₂·Σ_σ, Σ² the variance of μ (σ) over the batch and
    ξ ~ N(0, I). ``samples`` = M such draws per x' form the adversarial distribution.
(b) ``refined_reference`` — the reference distribution q_i is P(x_i) (detached) when the clean x_i is
    classified correctly, else the similarity-weighted mean of P(x_j) over correctly classified clean
    x_j of class y_i in the batch, weights ∝ exp(−‖s_i − s_j‖²/t) with s = (μ, σ) of the clean last
    feature map and t the median of those squared distances; with no such x_j, one-hot y_i smoothed by
    ``smoothing`` (0.1). L_dist = mean_i (1/M) Σ_m KL(q_i ‖ P(x̂'_{i,m})).
(c) ``iga`` — introspective gradient alignment: g = ∇_x CE(f(x), y), g' = ∇_{x'} CE(f(x̂'_1), y), both
    with ``create_graph``; L_iga = mean_i (1 − cos(g_i, g'_i)).

Loss with PGD-AT: (1/M) Σ_m CE(f(x̂'_m), y) + beta_dist·L_dist + lambda_g·L_iga (beta_dist 6,
lambda_g 1). With TRADES: CE(f(x), y) + β·L_dist + lambda_g·L_iga, i.e. (b) replaces TRADES' KL
reference P(x) (β = ``beta_dist`` when given, else TRADES' own ``beta``); with (b) off the KL is
TRADES' own, KL(P(x) ‖ P(x̂'_m)) with gradient through P(x). With all three components off the
objective is exactly the base method's.

Our choices where the spec is silent [ours]:
- The DSU modules are appended to the stages' ``nn.Sequential`` (no parameters, no buffers): the
  checkpoint's keys are those of the plain network, and a plain model loads UAD weights as they are.
- They act only while the plug-in switches them on around its adversarial forwards, and only in train
  mode: the training attack, the clean forward and every eval-mode forward are the plain network.
- Each module flips its own coin per batch; the coins and ξ come from the method's seeded generator
  (checkpointed, so resumes are exact). σ = sqrt(var + 1e-6) with the population variance, and
  Σ = sqrt(batch variance + 1e-6), as in DSU, which keeps gradients finite for constant channels.
- g' is taken on the first sampled adversarial forward x̂'_1 (the plain f(x') when DSU is off or its
  coins came up off), which saves a forward; L_iga is 0 when x' = x and DSU is off.
- With (a) off, M is 1 (the samples would be identical).
- The clean forward runs in train mode (BN batch statistics), as TRADES' does; with PGD-AT it is an
  extra forward needed by (b) and (c) only (skipped when both are off).

Test-time path: the plain deterministic network (DSU modules are the identity in eval mode); no
randomness, no label use. The gradient regulariser (c) is a known source of flattering PGD numbers:
evaluate with AutoAttack and the Square check.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.config import parse_number
from robustlab.errors import UserError
from robustlab.methods.base import PLUGINS, Method, PlugIn, Terms, accuracy
from robustlab.methods.objectives import kl_per_sample

_EPS = 1e-6


class FeatureStatNoise(nn.Module):
    """DSU-style feature-statistics perturbation: identity unless ``active`` and in train mode.

    When active, with probability ``prob`` (one coin per forward), the B×C×H×W input A becomes
    σ̂·(A − μ)/σ + μ̂ (see :mod:`robustlab.methods.uad`). ``generator`` supplies the coin and ξ; the
    UAD plug-in sets ``active`` and ``generator`` around its adversarial forwards only. No parameters
    and no buffers, so the module adds no checkpoint entries.
    """

    def __init__(self, prob: float = 0.5) -> None:
        super().__init__()
        self.prob = float(prob)
        self.active = False
        self.generator: torch.Generator | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active) or a.ndim != 4:
            return a
        gen = self.generator
        coin = torch.rand((), generator=gen, device=a.device if gen is None else gen.device).to(a.device)
        # a device-side choice (no host sync per step): the perturbed map is always computed
        return torch.where(coin < self.prob, perturb_statistics(a, gen), a)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


def perturb_statistics(a: torch.Tensor, generator: torch.Generator | None = None,
                       noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """σ̂·(A − μ)/σ + μ̂ with μ̂ = μ + ξ₁Σ_μ, σ̂ = σ + ξ₂Σ_σ; ``noise`` = (ξ₁, ξ₂) of shape (B, C) or drawn."""
    x = a.float()
    mu = x.mean(dim=(2, 3))
    sigma = (x.var(dim=(2, 3), unbiased=False) + _EPS).sqrt()
    sd_mu = (mu.var(dim=0, unbiased=False, keepdim=True) + _EPS).sqrt()
    sd_sigma = (sigma.var(dim=0, unbiased=False, keepdim=True) + _EPS).sqrt()
    if noise is None:
        gen_device = a.device if generator is None else generator.device
        xi = torch.randn((2, *mu.shape), generator=generator, device=gen_device, dtype=torch.float32).to(a.device)
        noise = (xi[0], xi[1])
    mu_hat = mu + noise[0] * sd_mu
    sigma_hat = sigma + noise[1] * sd_sigma
    out = (x - mu[..., None, None]) / sigma[..., None, None] * sigma_hat[..., None, None] + mu_hat[..., None, None]
    return out.to(a.dtype)


def feature_statistics(f: torch.Tensor) -> torch.Tensor:
    """s = concatenated per-channel spatial mean and std of a B×C×H×W map, shape (B, 2C)."""
    x = f.float()
    return torch.cat([x.mean(dim=(2, 3)), (x.var(dim=(2, 3), unbiased=False) + _EPS).sqrt()], dim=1)


def refined_reference(logits_clean: torch.Tensor, stats: torch.Tensor, y: torch.Tensor, *,
                      smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference q (B, K), detached, and a per-sample flag: 1 where q was refined (x_i misclassified).

    Correct x_i: q_i = P(x_i). Misclassified x_i: Σ_j w_ij P(x_j) over correctly classified x_j with
    y_j = y_i, w_ij ∝ exp(−‖s_i − s_j‖²/t), t = median of those squared distances over the batch; with
    no such x_j, (1 − smoothing)·onehot(y_i) + smoothing/K.
    """
    p = F.softmax(logits_clean.detach().float(), dim=1)
    s = stats.detach().float()
    k = p.shape[1]
    correct = p.argmax(dim=1) == y
    q = p.clone()
    wrong = ~correct
    if bool(wrong.any()):
        dist = torch.cdist(s[wrong], s).pow(2)  # (W, B)
        allowed = correct[None, :] & (y[wrong][:, None] == y[None, :])
        used = dist[allowed]
        t = used.median().clamp_min(1e-12) if used.numel() else dist.new_tensor(1.0)
        logw = (-dist / t).masked_fill(~allowed, float("-inf"))
        has = allowed.any(dim=1)
        w = torch.softmax(logw[has], dim=1)
        q_wrong = (1.0 - smoothing) * F.one_hot(y[wrong], k).float() + smoothing / k
        q_wrong[has] = (w @ p).float()  # matmul under bf16 autocast returns bf16
        q[wrong] = q_wrong
    return q, wrong.float()


def kl_to(q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ softmax(logits)) per sample, q a fixed probability vector (0·log 0 = 0)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (torch.xlogy(q, q) - q * log_p).sum(dim=1)


def input_gradient(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_x Σ_i CE(logits_i, y_i) with ``create_graph`` (so a loss on it trains the weights)."""
    ce = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(ce, x, create_graph=True)
    return grad


def alignment_loss(grad_clean: torch.Tensor, grad_adv: torch.Tensor) -> torch.Tensor:
    """1 − cos(g_i, g'_i) per sample over the flattened input gradients."""
    return 1.0 - F.cosine_similarity(grad_clean.flatten(1).float(), grad_adv.flatten(1).float(), dim=1, eps=1e-12)


def default_stages(num_stages: int) -> list[int]:
    """The first three stages, or all but the last when there are fewer than four."""
    return list(range(min(3, max(num_stages - 1, 1))))


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"method.options.{key}: expected true or false, got {value!r}")
    return value


@PLUGINS.register
class uad(PlugIn):
    """UAD-AT (built from the abstract): uncertainty-aware distributional AT, Dong et al., arXiv 2411.02871.

    Options (all [ours], METHODS.md §5): ``dsu`` (true), ``dsu_stages`` (null = default stages),
    ``dsu_prob`` (0.5), ``samples`` (M = 1), ``refined_reference`` (true), ``smoothing`` (0.1),
    ``iga`` (true), ``lambda_g`` (1.0), ``beta_dist`` (null = 6 on PGD-AT, TRADES' ``beta`` on TRADES).
    Formulas, deviations and the test-time path: see the module docstring.
    """

    help = "UAD-AT (built from the abstract): distributional adversaries + refined reference + gradient alignment"
    supported_bases = ("pgd_at", "trades")

    def __init__(self, base: Method, *, dsu: bool = True, dsu_stages: Sequence[int] | None = None,
                 dsu_prob: float = 0.5, samples: int = 1, refined_reference: bool = True, smoothing: float = 0.1,
                 iga: bool = True, lambda_g: float = 1.0, beta_dist: float | None = None) -> None:
        super().__init__(base)
        # TRADES: CE(x) + β·distance; PGD-AT: CE(x') (+ β·distance to the refined reference)
        self.trades_form = base.clean_in_loss
        self.dsu = _flag(dsu, "dsu")
        self.refined = _flag(refined_reference, "refined_reference")
        self.iga = _flag(iga, "iga")
        self.dsu_prob = parse_number(dsu_prob, "method.options.dsu_prob")
        if not 0.0 <= self.dsu_prob <= 1.0:
            raise UserError(f"method.options.dsu_prob must be in [0, 1], got {dsu_prob!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(f"method.options.samples must be an integer >= 1, got {samples!r}")
        self.samples = samples if self.dsu else 1
        if dsu_stages is not None and (not isinstance(dsu_stages, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in dsu_stages)):
            raise UserError(
                f"method.options.dsu_stages must be a list of stage indices, e.g. [0, 1, 2], got {dsu_stages!r}")
        self.dsu_stages = None if dsu_stages is None else list(dsu_stages)
        self.smoothing = parse_number(smoothing, "method.options.smoothing")
        self.lambda_g = parse_number(lambda_g, "method.options.lambda_g")
        if beta_dist is not None:
            self.beta_dist = parse_number(beta_dist, "method.options.beta_dist")
        else:
            self.beta_dist = base.beta if self.trades_form else 6.0

    # ------------------------------------------------------------------ modules
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Append a :class:`FeatureStatNoise` to each chosen stage (none when ``dsu`` is off)."""
        model = self.base.prepare_model(model)
        if not self.dsu:
            return model
        stages = getattr(model, "stages", None)
        if not isinstance(stages, nn.ModuleList):
            raise UserError("plug-in uad needs an ImageClassifier with stages (model.stages)")
        n = len(stages)
        chosen = default_stages(n) if self.dsu_stages is None else self.dsu_stages
        for i in chosen:
            if not -n <= i < n:
                raise UserError(f"method.options.dsu_stages: stage {i} out of range for a model with {n} stages")
        for i in sorted({i % n for i in chosen}):
            if not any(isinstance(m, FeatureStatNoise) for m in stages[i]):
                stages[i].append(FeatureStatNoise(self.dsu_prob))
        return model

    @contextlib.contextmanager
    def sampling(self, model: nn.Module) -> Iterator[None]:
        """Switch the model's DSU modules on (train mode only) for the block, drawing from the method's generator."""
        modules = [m for m in model.modules() if isinstance(m, FeatureStatNoise)] if self.dsu else []
        for m in modules:
            m.active, m.generator = True, self.generator
        try:
            yield
        finally:
            for m in modules:
                m.active, m.generator = False, None

    # ------------------------------------------------------------------- loss
    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' of the base: PGD-K on CE (PGD-AT) or the TRADES KL attack; DSU modules are off meanwhile."""
        return self.base.adversarial(model, x, y)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        is_trades = self.trades_form
        x_adv = self.adversarial(model, x, y)
        need_clean = is_trades or self.refined or self.iga
        parts: dict[str, torch.Tensor] = {}

        logits_clean = stats = grad_clean = None
        if need_clean:
            x_in = x.detach().clone().requires_grad_(self.iga)
            with torch.enable_grad():
                feats, logits_clean = model(x_in, output="features_and_logits")  # through any DDP wrapper
                if self.iga:
                    grad_clean = input_gradient(logits_clean, x_in, y)
            stats = feature_statistics(feats)
            parts["acc_clean"] = accuracy(logits_clean, y)

        reference = None
        if self.refined:
            reference, refined = refined_reference(logits_clean, stats, y, smoothing=self.smoothing)
            parts["ref_refined"] = refined

        ce_adv = torch.zeros_like(y, dtype=torch.float32)
        dist = torch.zeros_like(ce_adv)
        iga = torch.zeros_like(ce_adv)
        logits_first = None
        for m in range(self.samples):
            x_in = x_adv.detach().clone().requires_grad_(self.iga and m == 0)
            with self.sampling(model), torch.enable_grad():
                logits_adv = model(x_in)
            ce_adv = ce_adv + F.cross_entropy(logits_adv.float(), y, reduction="none") / self.samples
            if reference is not None:
                dist = dist + kl_to(reference, logits_adv) / self.samples
            elif is_trades:
                dist = dist + kl_per_sample(logits_clean, logits_adv) / self.samples
            if m == 0:
                logits_first = logits_adv
                if self.iga:
                    iga = alignment_loss(grad_clean, input_gradient(logits_adv, x_in, y))

        if is_trades:
            ce_clean = F.cross_entropy(logits_clean.float(), y, reduction="none")
            total = ce_clean + self.beta_dist * dist
            parts["ce_clean"] = ce_clean
        else:
            total = ce_adv + (self.beta_dist * dist if reference is not None else 0.0)
        if self.iga:
            total = total + self.lambda_g * iga
            parts["iga"] = iga
        parts.update(ce_adv=ce_adv, acc_adv=accuracy(logits_first, y))
        if reference is not None or is_trades:
            parts["dist"] = dist
        return Terms(total, parts, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_first)
