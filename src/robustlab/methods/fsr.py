"""FSR: Feature Separation and Recalibration, a plug-in for adversarial training (METHODS.md §2).

Source: Woo Jae Kim, Yoonki Cho, Junsik Jung, Sung-Eui Yoon, "Feature Separation and Recalibration
for Adversarial Robustness", CVPR 2023 (arXiv 2303.13846). Formulas from METHODS.md §2; no code of the
official release is used.

Module (inserted after one late stage, feature map f of C×H×W): separation net S and recalibration
net R, both conv3×3(C→64)-BN-ReLU-conv3×3(64→64)-BN-ReLU-conv3×3(64→C) without conv biases;
r = S(f), s = sigmoid(r), m = sigmoid((log(s+δ) − log(1−s+δ) + n)/τ) with n ~ Logistic(0, 1) in
train mode and n = 0 in eval mode (τ = 0.1, δ = 1e-8); f⁺ = m⊙f, f⁻ = (1−m)⊙f,
f̃ = f⁻ + (1−m)⊙R(f⁻); the output f⁺ + f̃ = f + (1−m)⊙R((1−m)⊙f) replaces f. A separate linear head
h after global average pooling gives the auxiliary logits z⁺ = h(GAP f⁺), z⁻ = h(GAP f⁻),
z̃ = h(GAP f̃) (loss only; :func:`robustlab.methods.aux.capture_aux` keys ``z_pos``, ``z_neg``,
``z_rec``, plus ``mask`` = m).

Loss on the adversarial x' of the base method: L = L_base + λ_sep·[CE(z⁺, y) + CE(z⁻, y*)] +
λ_rec·CE(z̃, y), y* = the highest-scoring wrong class of f(x') (no gradient), λ_sep = λ_rec = 1.

Placement (``stage`` option, or the per-model default of METHODS.md §2): after ``stages[stage]``;
when that is the last stage, after the network's ``final`` norm/activation too, i.e. on the map
``forward_features`` returns. Defaults: ``small_cnn`` and ``resnet18`` after the last stage
(``final`` is the identity there); ``wide_resnet`` after block3 + final BN-ReLU; ``vgg16_bn`` after
``stages[3]`` (4th conv stage, before its pool); ``preact_resnet18`` after layer4 + final BN-ReLU
(see deviations).

Deviations and choices [ours]:

- With TRADES and MART the auxiliary terms use the same x' the base method crafted (the official code
  only covers PGD-AT) (METHODS.md §2).
- PreAct-ResNet-18: METHODS.md says "the same" as ResNet-18 (after layer4). Its layer4 output is not
  activated (the network's BN-ReLU is ``final``), so FSR goes after ``final``, as for the other
  pre-activation network (WRN), and works on the activated last feature map like on ResNet-18.
- The noise n is tied to ``self.training`` only. During training forwards it is drawn from the
  method's seeded generator (checkpointed); train-mode forwards outside the method (e.g. a training
  attack run with ``method.attack.bn_mode=train``) draw from the global torch RNG. n is sampled as
  log u − log(1 − u), u ~ U(0, 1): the same Logistic(0, 1) law as a difference of two Gumbels.
- The mask is computed in float32 (then cast to f's dtype) under mixed precision.
- y* comes from the same train-mode forward of x' whose logits enter L_base (no extra pass): the
  auxiliary logits are captured on the base objective's "adv" forward through its forward hook.

Test-time path (what evaluation must respect): one deterministic forward pass; the mask uses no
noise (m = sigmoid(logit(s)/τ), a steep but smooth function of f), no label and no prediction
dependence; the auxiliary head h is not part of the prediction. The prediction is the plain
``model(x)``; ``capture_aux`` exposes z⁺, z⁻, z̃ and m for adaptive attacks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.config import parse_number
from robustlab.errors import UserError
from robustlab.methods.aux import AuxModule, append_to, aux_modules, capture_aux
from robustlab.methods.base import PLUGINS, Method, Parts, PlugIn, Terms
from robustlab.models.base import ImageClassifier, init_weights
from robustlab.models.vgg import VGG

SUPPORTED_BASES = ("pgd_at", "trades", "mart")
# Default insertion stage per architecture class (METHODS.md §2); -1 = the last stage (+ final).
DEFAULT_STAGE: dict[type, int] = {VGG: 3}


def _fsr_net(channels: int, hidden: int) -> nn.Sequential:
    """conv3×3(C→h)-BN-ReLU-conv3×3(h→h)-BN-ReLU-conv3×3(h→C), stride 1, padding 1, no conv bias."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 3, padding=1, bias=False),
    )


def logistic_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Logistic(0, 1) samples (float32): log u − log(1 − u), u ~ U(0, 1) clamped away from 0."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32).clamp_min(1e-10)
    return torch.log(u) - torch.log1p(-u)


class FSRModule(AuxModule):
    """Separation (S), recalibration (R) and the auxiliary head (h) on a C-channel feature map.

    ``forward(f)`` returns ``f + (1−m)⊙R((1−m)⊙f)``; inside a capture it also records ``z_pos``,
    ``z_neg``, ``z_rec`` (auxiliary logits) and ``mask``. Train mode adds Logistic noise to the
    mask logits (from the capture's generator when given); eval mode is deterministic.
    """

    def __init__(self, channels: int, num_classes: int, *, tau: float = 0.1, hidden: int = 64,
                 delta: float = 1e-8) -> None:
        super().__init__()
        self.separation = _fsr_net(channels, hidden)
        self.recalibration = _fsr_net(channels, hidden)
        self.head = nn.Linear(channels, num_classes)
        self.tau = float(tau)
        self.delta = float(delta)
        init_weights(self)

    def mask(self, f: torch.Tensor) -> torch.Tensor:
        """m in (0, 1), float32, same shape as f (noisy in train mode)."""
        s = torch.sigmoid(self.separation(f).float())
        logits = torch.log(s + self.delta) - torch.log(1.0 - s + self.delta)
        if self.training:
            generator = self.capture.generator if self.capture is not None else None
            logits = logits + logistic_noise(logits.shape, generator, logits.device)
        return torch.sigmoid(logits / self.tau)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = self.mask(f).to(f.dtype)
        f_pos = m * f
        f_neg = (1.0 - m) * f
        f_rec = f_neg + (1.0 - m) * self.recalibration(f_neg)
        if self.capture is not None:
            self.record(z_pos=self._aux(f_pos), z_neg=self._aux(f_neg), z_rec=self._aux(f_rec), mask=m)
        return f_pos + f_rec

    def _aux(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f.mean(dim=(2, 3)))


def highest_wrong_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y*: per sample the class other than ``y`` with the largest logit (no gradient)."""
    with torch.no_grad():
        return logits.detach().float().scatter(1, y[:, None], float("-inf")).argmax(dim=1)


def fsr_terms(
    z_pos: torch.Tensor, z_neg: torch.Tensor, z_rec: torch.Tensor, y: torch.Tensor, y_star: torch.Tensor,
    lambda_sep: float, lambda_rec: float,
) -> tuple[torch.Tensor, Parts]:
    """Per sample λ_sep·[CE(z⁺, y) + CE(z⁻, y*)] + λ_rec·CE(z̃, y), and the three CE terms."""
    ce_pos = F.cross_entropy(z_pos.float(), y, reduction="none")
    ce_neg = F.cross_entropy(z_neg.float(), y_star, reduction="none")
    ce_rec = F.cross_entropy(z_rec.float(), y, reduction="none")
    total = lambda_sep * (ce_pos + ce_neg) + lambda_rec * ce_rec
    return total, {"fsr_pos": ce_pos, "fsr_neg": ce_neg, "fsr_rec": ce_rec}


@PLUGINS.register
class fsr(PlugIn):
    """FSR plug-in (Kim et al., CVPR 2023): ``pgd_at+fsr``, ``trades+fsr``, ``mart+fsr``.

    Options: ``lambda_sep`` (1.0), ``lambda_rec`` (1.0), ``tau`` (0.1, Gumbel-sigmoid temperature),
    ``stage`` (None = the per-model default; else the index of the stage after which FSR goes).
    Sources, deviations and the test-time path: see :mod:`robustlab.methods.fsr`.
    The training attack is the base method's own (PGD-10 on the main logits, eval mode, for PGD-AT).
    """

    supported_bases = SUPPORTED_BASES

    def __init__(
        self, base: Method, *, lambda_sep: float = 1.0, lambda_rec: float = 1.0, tau: float = 0.1,
        stage: int | None = None
    ) -> None:
        super().__init__(base)
        self.lambda_sep = parse_number(lambda_sep, "method.options.lambda_sep")
        self.lambda_rec = parse_number(lambda_rec, "method.options.lambda_rec")
        self.tau = parse_number(tau, "method.options.tau")
        if not self.tau > 0:
            raise UserError(f"method.options.tau must be > 0, got {tau!r}")
        if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int)):
            raise UserError(f"method.options.stage must be a stage index (integer) or null, got {stage!r}")
        self.stage = stage
        self._inner_hook = base.forward_hook
        self._adv_aux: dict[str, torch.Tensor] | None = None
        base.forward_hook = self._forward

    # ------------------------------------------------------------------ model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Insert one :class:`FSRModule` (keys ``...fsr.*``); original state-dict keys are unchanged."""
        model = self.base.prepare_model(model)
        if not isinstance(model, ImageClassifier):
            raise UserError(f"FSR needs a robustlab ImageClassifier, got {type(model).__name__}")
        if any(isinstance(m, FSRModule) for m in model.modules()):
            return model
        n = len(model.stages)
        stage = DEFAULT_STAGE.get(type(model), -1) if self.stage is None else self.stage
        if not -n <= stage < n:
            raise UserError(f"method.options.stage={stage} is out of range for a model with {n} stages")
        stage %= n
        ref = next(model.parameters())
        module = FSRModule(int(model.feature_info[stage]["num_chs"]), model.num_classes, tau=self.tau)
        module = module.to(device=ref.device, dtype=ref.dtype)
        module.train(model.training)
        if stage == n - 1:
            model.final = append_to(model.final, "fsr", module)
        else:
            model.stages[stage] = append_to(model.stages[stage], "fsr", module)
        return model

    # ------------------------------------------------------------------- loss
    def _forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, role: str) -> torch.Tensor:
        """The base's forward hook: seeded mask noise, and the aux logits of the "adv" forward kept."""
        with capture_aux(model, generator=self.generator) as aux:
            logits = self._inner_hook(model, x, y, role) if self._inner_hook is not None else model(x)
        if role == "adv":
            self._adv_aux = dict(aux)
        return logits

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        self._adv_aux = None
        try:
            base = self.base.terms(model, x, y, step=step)
            aux = self._adv_aux
        finally:
            self._adv_aux = None
        if aux is None or "z_pos" not in aux or base.logits_adv is None:
            if not aux_modules(model):
                raise UserError(
                    "the model has no FSR module; build it with the method's prepare_model "
                    "(robustlab.runs.model.build_model does)"
                )
            raise RuntimeError("the base objective made no 'adv' forward through its forward hook")
        y_star = highest_wrong_class(base.logits_adv, y)
        extra_loss, parts = fsr_terms(aux["z_pos"], aux["z_neg"], aux["z_rec"], y, y_star, self.lambda_sep,
                                      self.lambda_rec)
        extra: dict[str, Any] = {**base.extra, "fsr_aux": aux, "y_star": y_star}
        return Terms(
            base.per_sample + extra_loss, {**base.parts, **parts}, x_adv=base.x_adv,
            logits_clean=base.logits_clean, logits_adv=base.logits_adv, extra=extra,
        )
