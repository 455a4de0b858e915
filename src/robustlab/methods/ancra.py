"""ANCRA: asymmetric negative contrast and reverse attention, a plug-in for adversarial training (METHODS.md §3).

Source: Nuoyan Zhou, Nannan Wang, Decheng Liu, Dawei Zhou, Xinbo Gao, "Robust Representation Learning
via Asymmetric Negative Contrast and Reverse Attention" (later "Enhancing Robust Representation in
Adversarial Training: Alignment and Exclusion Criteria"), arXiv 2310.03358. Formulas from METHODS.md §3;
no code of the official release is used.

**Reverse attention (RA)**, after each of the last two blocks of the last stage (after the only block
when the last stage has one): for the block output z (first passed through the network's ``final``
norm/activation when it has one: WRN, PreAct-ResNet), p = h(GAP z) with the network's own head h
(auxiliary logits ``p1``, ``p2``); row j = the true label in train mode, argmax p in eval mode;
z' = z ⊙ W[j] broadcast over space (not detached) goes on to the next block; the last RA block's
h(GAP z') is the network's output. The network's ``final`` is then skipped on the main path (it was
applied inside the RA blocks) but keeps its parameters and state-dict keys.

**Negatives (OEs)**: for each anchor (x_i, y_i) one example x_n of another class of the batch
(uniformly among the classes present, then among that class's examples, from the method's
generator); x^o = targeted PGD on x_n toward y_i minimising CE(final) + λ_cr·mean_b CE(aux_b), from
x_n + 0.001·N(0, I); x^o keeps its own label for the train-mode gates of the loss forward.

**Asymmetric negative contrast**: S(u, v) = Σ_i 1[argmax u_i = argmax v_i]·sqrt(max u_i · max v_i)
with u (anchor, clean) detached; L_anc = S(P(x), P(x^o))/N, also per auxiliary head.

**Loss** (λ_cr = 2, ζ = 3, aux terms averaged over the RA blocks b):
TRADES-ANCRA [code]: CE(f(x), y) + λ_cr·mean_b CE(p_b(x), y) + β·[KL(P(x)‖P(x')) + λ_cr·mean_b
KL(P_b(x)‖P_b(x'))] + ζ·(L_anc + λ_cr·mean_b L_anc,b). PGD-ANCRA / MART-ANCRA [ours, not released]:
the base loss on the final head + λ_cr·mean_b the same base loss on each aux head + ζ·(L_anc +
λ_cr·mean_b L_anc,b). Training x' for every base: PGD maximising CE(final) + λ_cr·mean_b CE(aux_b),
model in ``method.attack.bn_mode`` (eval by default, as the released code), gates on argmax.

How the base's attack is replaced: the plug-in does not call the base's ``terms``; it crafts x' and
the negatives itself (through the base's ``craft`` on an :class:`~robustlab.methods.aux.AuxStack`
of the model, so the attack settings are the run's), runs the train-mode forwards itself, and
applies the base's per-sample formula (``trades_terms`` / ``mart_terms`` / CE, with the base's
``beta`` / ``lam``) to the final and each auxiliary head.

Deviations and choices [ours]:

- PGD-ANCRA and MART-ANCRA, as above (METHODS.md §3 [ours]).
- PGD-ANCRA has no clean forward in its base loss; the anchor P(x) of the contrast comes from a
  train-mode forward of x (gates on y) without gradient (u is detached anyway).
- The negatives' PGD uses ``neg_steps`` / ``neg_step_size``, by default the training attack's steps
  and step size (10 and 2/255 in the CIFAR configs; the paper uses 0.007).
- x' starts at x + 0.001·N(0, I) clipped to [0, 1] for every base (``adv_start=normal``, as the
  released code); ``adv_start=uniform`` uses the base's uniform random start instead.
- An anchor whose batch holds no other class gets no contrast term (masked to 0).
- A train-mode forward without labels (outside a capture that gives them) gates on argmax p, as in
  eval mode; a capture's ``gate`` forces the gates in both modes (evaluation tool).
- With a ``final`` BN (WRN, PreAct-ResNet) that BN runs once per RA block in each train-mode
  forward, so its running statistics mix both blocks' maps, as in the released code [code].

Test-time path (what evaluation must respect): one deterministic forward pass, no randomness, no
label use, but **prediction-dependent**: each RA block gates on the hard argmax of its own auxiliary
logits, so the output is piecewise defined and the gate choice has no gradient; the gated logit of
class j at the last block is Σ_c W_jc²·z̄_c + b_j. ``capture_aux`` exposes ``p1``, ``p2`` (and the
chosen ``gate1``, ``gate2``); ``capture_aux(model, gate=classes)`` fixes every gate to given classes.

**Evaluation warning** (METHODS.md §3): the README's reported AutoAttack numbers (ResNet-18 CIFAR-10
≈ 59–60%, WRN-34-10 66.3%) are far above the field, and a third-party listing shows PGD-40 accuracy
above clean accuracy. Treat ANCRA as a suspected gradient-masking case: evaluation must include
attacks on the auxiliary logits and on final+aux, an attack with the gate fixed to each candidate
class (or straight-through), transfer from a PGD-AT model, Square, an ε-sweep to 0, and the check
robust ≤ clean. Report what holds honestly; reproducing an inflated number is not the goal.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.config import parse_number
from robustlab.errors import UserError
from robustlab.methods.aux import AuxModule, AuxStack, capture_aux
from robustlab.methods.base import PLUGINS, Method, Parts, PlugIn, Terms, accuracy
from robustlab.methods.objectives import trades_start
from robustlab.models.base import ImageClassifier

SUPPORTED_BASES = ("pgd_at", "trades", "mart")


class DeferredFinal(nn.Sequential):
    """The network's ``final`` norm/activation, moved into the RA blocks.

    Same children (so the same state-dict keys) as the original ``final``; on the model's main path it
    is the identity because the RA blocks already applied it; :meth:`activate` runs it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = module(x)
        return x


class ReverseAttention(AuxModule):
    """One RA block: aux logits p = h(GAP z), then z ⊙ W[j] with j = label (train) or argmax p (eval).

    Holds no parameters: it reads the owning model's ``head`` (and ``final`` when deferred) at each
    forward through a plain reference (not a registered submodule, so no duplicate state-dict keys).
    Records ``p<index>`` and ``gate<index>`` in a capture.
    """

    def __init__(self, owner: ImageClassifier, index: int) -> None:
        super().__init__()
        self.index = int(index)
        self._owner = (owner,)  # a tuple: not registered as a child module

    def extra_repr(self) -> str:
        return f"index={self.index}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        if isinstance(owner.final, DeferredFinal):
            z = owner.final.activate(z)
        head = owner.head
        p = head(z.mean(dim=(2, 3)))
        cap = self.capture
        if cap is not None and cap.gate is not None:
            gate = cap.gate
        elif self.training and cap is not None and cap.labels is not None:
            gate = cap.labels
        else:
            gate = p.detach().argmax(dim=1)
        weight = head.weight[gate].to(z.dtype)
        out = z * weight[:, :, None, None]
        self.record(**{f"p{self.index}": p, f"gate{self.index}": gate})
        return out


def ra_keys(model: nn.Module) -> list[str]:
    """Capture keys of the auxiliary logits of ``model``'s RA blocks, in forward order (``p1``, ``p2``)."""
    blocks = sorted((m for m in model.modules() if isinstance(m, ReverseAttention)), key=lambda m: m.index)
    return [f"p{m.index}" for m in blocks]


def asymmetric_contrast(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample terms of S(u, v): 1[argmax u = argmax v]·sqrt(max u · max v), u detached (α = 1).

    ``u``, ``v``: probability vectors (N, K) of the anchors and their negatives; S = the sum.
    """
    u = u.detach().float()
    v = v.float()
    u_max, u_arg = u.max(dim=1)
    v_max, v_arg = v.max(dim=1)
    return (u_arg == v_arg).float() * torch.sqrt(u_max * v_max)


class _AnchorCE:
    """Per-sample CE(final, y) + λ·mean_b CE(aux_b, y) on an :class:`AuxStack` output (N, 1+B, K)."""

    def __init__(self, lambda_cr: float) -> None:
        self.lambda_cr = lambda_cr

    def __call__(self, stacked: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(stacked[:, 0].float(), y, reduction="none")
        if stacked.shape[1] == 1:
            return ce
        aux = torch.stack([F.cross_entropy(stacked[:, b].float(), y, reduction="none")
                           for b in range(1, stacked.shape[1])])
        return ce + self.lambda_cr * aux.mean(dim=0)


@PLUGINS.register
class ancra(PlugIn):
    """ANCRA plug-in (Zhou et al., arXiv 2310.03358): ``pgd_at+ancra``, ``trades+ancra``, ``mart+ancra``.

    Options: ``zeta`` (3.0, weight of the negative contrast), ``lambda_cr`` (2.0, weight of the
    auxiliary heads), ``neg_steps`` / ``neg_step_size`` (None = the training attack's), ``adv_start``
    (``normal``: x + 0.001·N(0, I) as the released code; ``uniform``: the base's random start).
    TRADES' ``beta`` and MART's ``lam`` stay the base's options. Sources, deviations, the test-time
    path and the evaluation warning: see :mod:`robustlab.methods.ancra`.
    """

    supported_bases = SUPPORTED_BASES

    def __init__(
        self,
        base: Method,
        *,
        zeta: float = 3.0,
        lambda_cr: float = 2.0,
        neg_steps: int | None = None,
        neg_step_size: float | None = None,
        adv_start: str = "normal",
    ) -> None:
        super().__init__(base)
        self.zeta = parse_number(zeta, "method.options.zeta")
        self.lambda_cr = parse_number(lambda_cr, "method.options.lambda_cr")
        if neg_steps is not None and (isinstance(neg_steps, bool) or not isinstance(neg_steps, int) or neg_steps < 0):
            raise UserError(f"method.options.neg_steps must be an integer >= 0 or null, got {neg_steps!r}")
        self.neg_steps = neg_steps
        self.neg_step_size = (None if neg_step_size is None
                              else parse_number(neg_step_size, "method.options.neg_step_size"))
        if adv_start not in ("normal", "uniform"):
            raise UserError(f"method.options.adv_start must be normal or uniform, got {adv_start!r}")
        self.adv_start = adv_start

    # ------------------------------------------------------------------ model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Insert RA blocks ``ra1``/``ra2`` after the last two blocks of the last stage; defer ``final``.

        The last stage is rebuilt as an ``nn.Sequential`` with the same child names plus ``ra1``, ``ra2``
        (parameter-free), so every original state-dict key is unchanged and none is added.
        """
        model = self.base.prepare_model(model)
        if not isinstance(model, ImageClassifier):
            raise UserError(f"ANCRA needs a robustlab ImageClassifier, got {type(model).__name__}")
        if any(isinstance(m, ReverseAttention) for m in model.modules()):
            return model
        if not isinstance(model.final, (nn.Identity, nn.Sequential)):
            raise UserError(f"ANCRA cannot move a final module of type {type(model.final).__name__} into its blocks")
        if isinstance(model.final, nn.Sequential):
            deferred = DeferredFinal(OrderedDict(model.final.named_children()))
            deferred.train(model.training)
            model.final = deferred
        stage = model.stages[-1]
        children = list(stage.named_children())
        blocks = [name for name, child in children if any(True for _ in child.parameters())]
        chosen = blocks[-2:]
        if not chosen:
            raise UserError("ANCRA found no block with parameters in the model's last stage")
        layers: list[tuple[str, nn.Module]] = []
        for name, child in children:
            layers.append((name, child))
            if name in chosen:
                index = chosen.index(name) + 1
                ra = ReverseAttention(model, index)
                ra.train(model.training)
                layers.append((f"ra{index}", ra))
        model.stages[-1] = nn.Sequential(OrderedDict(layers))
        return model

    # -------------------------------------------------------------- examples
    def _ra_info(self, model: nn.Module) -> tuple[list[str], int]:
        blocks = sorted((m for m in model.modules() if isinstance(m, ReverseAttention)), key=lambda m: m.index)
        if not blocks:
            raise UserError(
                "the model has no ANCRA blocks; build it with the method's prepare_model "
                "(robustlab.runs.model.build_model does)"
            )
        return [f"p{m.index}" for m in blocks], int(blocks[0]._owner[0].num_classes)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training x': PGD maximising CE(final) + λ_cr·mean_b CE(aux_b) (the run's attack settings)."""
        keys, _ = self._ra_info(model)
        start = trades_start(x, self.generator) if self.adv_start == "normal" else None
        return self.craft(AuxStack(model, keys, labels=y), x, y, loss=_AnchorCE(self.lambda_cr), x_init=start)

    def pick_negatives(self, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per anchor the index of a negative in the batch, and whether the batch had another class.

        The class is drawn uniformly among the classes present other than the anchor's, then the
        example uniformly among that class's examples (method's generator). Anchors without any other
        class get their own index back and ``has_neg`` False.
        """
        n = y.shape[0]
        counts = torch.bincount(y, minlength=num_classes)
        valid = (counts > 0).unsqueeze(0).expand(n, -1).clone()
        rows = torch.arange(n, device=y.device)
        valid[rows, y] = False
        has_neg = valid.any(dim=1)
        weights = torch.where(has_neg[:, None], valid.float(), F.one_hot(y, num_classes).float())
        cls = torch.multinomial(weights, 1, generator=self.generator).squeeze(1)
        order = torch.argsort(y, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        u = torch.rand(n, generator=self.generator, device=y.device)
        rank = torch.minimum((u * counts[cls]).long(), counts[cls] - 1)
        idx = order[starts[cls] + rank]
        return torch.where(has_neg, idx, rows), has_neg

    def negatives(self, model: nn.Module, x_neg: torch.Tensor, y_neg: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """x^o: targeted PGD (:meth:`~robustlab.methods.base.Method.craft`) from x_n + 0.001·N(0, I) toward ``target``
        (the anchors' classes), minimising CE(final) + λ_cr·mean_b CE(aux_b); gates (train mode only) use the negatives'
        labels."""
        a = self.attack
        steps = a.steps if self.neg_steps is None else self.neg_steps
        if steps == 0 or a.eps == 0:  # before the start's draw, so the generator is left as it was
            return x_neg.detach()
        keys, _ = self._ra_info(model)
        start = trades_start(x_neg, self.generator)
        return self.craft(AuxStack(model, keys, labels=y_neg), x_neg, target, loss=_AnchorCE(self.lambda_cr),
                          x_init=start, targeted=True, steps=steps, step_size=self.neg_step_size)

    # ------------------------------------------------------------------- loss
    def combine(
        self,
        y: torch.Tensor,
        logits_clean: torch.Tensor,
        aux_clean: list[torch.Tensor],
        logits_adv: torch.Tensor,
        aux_adv: list[torch.Tensor],
        logits_neg: torch.Tensor,
        aux_neg: list[torch.Tensor],
        has_neg: torch.Tensor,
    ) -> tuple[torch.Tensor, Parts]:
        """Per-sample ANCRA loss from the three forwards' final and auxiliary logits (see module doc)."""
        lam = self.lambda_cr
        main, parts = self.base.head_loss(logits_clean, logits_adv, y)
        aux_loss = torch.stack([self.base.head_loss(c, a, y)[0] for c, a in zip(aux_clean, aux_adv)]).mean(dim=0)
        mask = has_neg.float()
        anc = asymmetric_contrast(F.softmax(logits_clean.float(), 1), F.softmax(logits_neg.float(), 1)) * mask
        anc_aux = torch.stack(
            [asymmetric_contrast(F.softmax(c.float(), 1), F.softmax(v.float(), 1)) for c, v in zip(aux_clean, aux_neg)]
        ).mean(dim=0) * mask
        total = main + lam * aux_loss + self.zeta * (anc + lam * anc_aux)
        parts = {**parts, "aux_loss": aux_loss, "anc": anc, "anc_aux": anc_aux}
        return total, parts

    def _train_forward(
        self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, keys: list[str]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with capture_aux(model, labels=labels) as aux:
            logits = model(x)
        return logits, [aux[k] for k in keys]

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        keys, num_classes = self._ra_info(model)
        x_adv = self.adversarial(model, x, y)
        neg_idx, has_neg = self.pick_negatives(y, num_classes)
        y_neg = y[neg_idx]
        x_neg = self.negatives(model, x[neg_idx], y_neg, y)
        if not self.base.clean_in_loss:  # PGD-AT's loss reads no clean logits
            with torch.no_grad():
                logits_clean, aux_clean = self._train_forward(model, x, y, keys)
        else:
            logits_clean, aux_clean = self._train_forward(model, x, y, keys)
        logits_adv, aux_adv = self._train_forward(model, x_adv, y, keys)
        logits_neg, aux_neg = self._train_forward(model, x_neg, y_neg, keys)
        total, parts = self.combine(y, logits_clean, aux_clean, logits_adv, aux_adv, logits_neg, aux_neg, has_neg)
        parts.update(
            acc_clean=accuracy(logits_clean, y), acc_adv=accuracy(logits_adv, y),
            neg_to_anchor=(logits_neg.argmax(1) == y).float(),
        )
        extra = {
            "x_neg": x_neg, "neg_index": neg_idx, "has_neg": has_neg, "logits_neg": logits_neg,
            "aux_clean": aux_clean, "aux_adv": aux_adv, "aux_neg": aux_neg,
        }
        return Terms(total, parts, x_adv=x_adv, logits_clean=logits_clean, logits_adv=logits_adv, extra=extra)
