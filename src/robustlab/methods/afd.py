"""AFD: adversarial fine-tuning by feature disentanglement (Zhou et al., AAAI 2025, arXiv 2401.14707).

Fine-tunes a naturally trained model on adversarial inputs only, with the pre-trained model as a
frozen teacher (METHODS.md §4). The pooled penultimate feature g(x') goes through two bias-free
d×d maps, both initialised to the identity: f1 = D1·g(x') carries the intrinsic feature and is
classified (z1 = ω(f1)); f2 = D2·stopgrad(g(x')) is trained to carry the "confusing" part
(z2 = ω(f2) is pushed toward the most likely wrong class of z1), and f1 is pushed away from f2 and
toward the teacher's clean feature:

    L_dis  = alpha_dis · CE(z2, ỹ)                      (ỹ = argmax_{k≠y} z1, no gradient)
    L_excl = beta_excl · mean cos(f1, f2)
    L_main = CE(z1, y) + gamma_teacher · (1 − mean cos(f1, t)),   t = g_pre(x) (teacher, clean x)

Implementation: :class:`DisentangledHead` replaces the model's ``head``. It *is* an ``nn.Linear``
(its ``weight``/``bias`` are ω, so a pre-trained model's ``head.*`` weights load unchanged) that
applies D1 first: ``forward(x) -> logits`` of the model is ω(D1·g(x)) in both modes, so attacks and
evaluation see the test-time network without any special path. D2 lives beside it (``head.d2``) and
is used by the loss only. :func:`fold_disentangler` folds D1 into ω (W' = W·D1) and returns a plain
:class:`~robustlab.models.ImageClassifier` with equal logits, for export.

Deviations / our choices:

- The update, option ``update`` (both from one graph; L_excl sees ``f2.detach()``: since
  f2 = D2·stopgrad(g) depends on nothing but D2, detaching it removes exactly D2's share of ∇L_excl
  and nothing else; L_main does not involve D2; L_dis reaches only D2 and ω, g being stopped and ỹ
  carrying no gradient):

  - ``single`` (default) [ours, METHODS.md §4]: one optimiser step per batch. D2 gets ∇L_dis only,
    every other parameter ∇(L_main + L_excl + L_dis).
  - ``released``: the released code's effective update. It runs three backward/step pairs without
    ``zero_grad`` between them, two of its optimisers holding the same tensors, so every parameter
    except D2 takes two SGD steps per batch: first with ∇(L_dis + L_excl), then with the accumulated
    ∇(L_dis + L_excl + L_main); D2 takes one step with ∇L_dis. L_excl, L_dis on the head and the
    weight decay thus act about twice relative to L_main. On current PyTorch the released code stops
    with an in-place error (its later backward passes need weights an earlier step changed); here all
    gradients come from the batch's one graph at the pre-step weights (what the old PyTorch computed
    for most layers), the first step's gradient by ``autograd.grad`` (averaged over ranks under
    torchrun), and both steps use the run's one optimiser (one momentum buffer; the released code's
    two optimisers each keep their own). ``optim.grad_clip`` clips the second step's gradient only;
    under ``train.amp: fp16`` the gradient scaler may skip the second step, never the first.
    Not from the released code itself (we have only its description): the order "D2 and the first
    step together, then the second".
- [ours] The training attack's step is 2/255 (paper: 0.007); PGD-K on CE of z1 (the model's own
  logits), uniform start, eval mode (``method.attack``).
- [ours] Weight decay applies to D1 and D2 like every other parameter (the optimiser's rule), so it
  pulls them toward 0, not toward I.
- The teacher is a frozen copy of the pre-trained model given by :meth:`afd.set_teacher`
  (``robustlab finetune`` does this); it is held by the method, never by the model, so it is not in
  the student's checkpoint. Without a teacher the loss raises a UserError.

Test-time path: one deterministic forward, ω(D1·g(x)); no randomness, no label or prediction
dependence; D2 unused. The EMA of the weights (``train.ema_decay: 0.999``, warm-up
min(0.999, (t+1)/(t+10))) is the model saved and evaluated, as in the released code.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from robustlab.config import AttackConfig, parse_number
from robustlab.errors import UserError
from robustlab.methods.base import METHODS, Method, Terms, accuracy


class DisentangledHead(nn.Linear):
    """The classifier ω applied after the disentangler map D1: ``ω(D1·v)``; D2 rides along, unused here.

    ``weight``/``bias`` are ω's (same names as the plain head, so pre-trained weights load as they are);
    ``d1``, ``d2`` are bias-free d×d ``nn.Linear`` maps initialised to the identity. Because the
    module is an ``nn.Linear``, ``get_classifier()`` still returns it; note that its ``weight`` is ω
    alone, the effective classifier is ω·D1 (:meth:`folded_weight`).
    """

    def __init__(self, head: nn.Linear) -> None:
        d = head.in_features
        factory = {"device": head.weight.device, "dtype": head.weight.dtype}
        super().__init__(d, head.out_features, bias=head.bias is not None, **factory)
        with torch.no_grad():
            self.weight.copy_(head.weight)
            if head.bias is not None:
                self.bias.copy_(head.bias)
        self.d1 = nn.Linear(d, d, bias=False, **factory)
        self.d2 = nn.Linear(d, d, bias=False, **factory)
        with torch.no_grad():
            self.d1.weight.copy_(torch.eye(d, **factory))
            self.d2.weight.copy_(torch.eye(d, **factory))

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """ω(f): the shared head applied to an already disentangled feature."""
        return F.linear(f, self.weight, self.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.classify(self.d1(v))

    def folded_weight(self) -> torch.Tensor:
        """W' = W·D1, the single linear map equal to ω∘D1."""
        return self.weight @ self.d1.weight


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under ``torch.compile`` (``_orig_mod``) and DistributedDataParallel (``module``) wrappers."""
    while True:
        inner = (model.module if isinstance(model, nn.parallel.DistributedDataParallel)
                 else getattr(model, "_orig_mod", None))
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def disentangled_head(model: nn.Module) -> DisentangledHead:
    """The model's :class:`DisentangledHead`, or a UserError when AFD's modules are missing."""
    head = getattr(_unwrap(model), "head", None)
    if not isinstance(head, DisentangledHead):
        raise UserError("this model has no AFD disentangler (model.head is not a DisentangledHead); build it with "
                        "method afd")
    return head


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """g(x): the pooled penultimate feature vector, taken by a call of ``model`` itself (``output="pre_logits"``)
    so that a DistributedDataParallel wrapper sees the forward and syncs the gradients."""
    return model(x, output="pre_logits")


def most_likely_wrong(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmax over k ≠ y of the logits (no gradient): AFD's ỹ, FSR's y*."""
    masked = logits.detach().float().scatter(1, y[:, None], float("-inf"))
    return masked.argmax(dim=1)


def fold_disentangler(model: nn.Module) -> nn.Module:
    """A copy of an AFD model with D1 folded into the head (W' = W·D1) and D2 dropped.

    The result is a plain model of the original architecture (``head`` an ``nn.Linear``) whose logits
    equal the AFD model's; its ``state_dict`` loads into ``create_model(name, ...)``.
    """
    head = disentangled_head(model)
    folded = copy.deepcopy(_unwrap(model))
    linear = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                       device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(head.folded_weight())
        if head.bias is not None:
            linear.bias.copy_(head.bias)
    folded.head = linear
    return folded


@METHODS.register
class afd(Method):
    """AFD, adversarial fine-tuning by feature disentanglement (Zhou et al., AAAI 2025); fine-tuning only.

    Options: ``alpha_dis`` (0.05, weight of CE(z2, ỹ)), ``beta_excl`` (0.25, weight of mean cos(f1, f2)),
    ``gamma_teacher`` (25, weight of 1 − mean cos(f1, t)). Needs a teacher (:meth:`set_teacher`):
    run it with ``robustlab finetune CONFIG --from NATURAL_RUN``. ``update``: ``single`` (one step,
    [ours]) or ``released`` (the released code's two steps per batch). Deviations and the test-time
    path: see the module docstring (update, attack step 2/255 [ours]).
    """

    help = "AFD: adversarial fine-tuning by feature disentanglement (fine-tuning only: robustlab finetune --from RUN)"

    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, alpha_dis: float = 0.05,
                 beta_excl: float = 0.25, gamma_teacher: float = 25.0, update: str = "single") -> None:
        super().__init__(attack, generator)
        if update not in ("single", "released"):
            raise UserError(f"method.options.update must be single or released, got {update!r}")
        self.update = update
        self._first_step: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._d2: list[nn.Parameter] = []
        self.alpha_dis = parse_number(alpha_dis, "method.options.alpha_dis")
        self.beta_excl = parse_number(beta_excl, "method.options.beta_excl")
        self.gamma_teacher = parse_number(gamma_teacher, "method.options.gamma_teacher")
        self.teacher: nn.Module | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Replace ``model.head`` by a :class:`DisentangledHead` (D1 = D2 = I): the logits do not change."""
        head = getattr(model, "head", None)
        if isinstance(head, DisentangledHead):
            return model
        if not isinstance(head, nn.Linear) or not hasattr(model, "forward_head"):
            raise UserError("method afd needs an ImageClassifier with a linear head (model.head)")
        model.head = DisentangledHead(head)
        return model

    def set_teacher(self, teacher: nn.Module) -> None:
        """Use ``teacher`` (the pre-trained model) as the frozen teacher: put in eval mode, gradients off.

        The module is frozen in place (pass a copy if it is used elsewhere). It is kept by the method,
        not the student, so it never enters the student's checkpoint.
        """
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """t = g_pre(x): the frozen teacher's pooled penultimate feature of the clean x (eval, no grad)."""
        if self.teacher is None:
            raise UserError("method afd needs the pre-trained model as teacher; run robustlab finetune CONFIG --from "
                            "RUN")
        self.teacher.eval()
        first = next(self.teacher.parameters(), None)
        if first is not None and first.device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            return pooled_features(self.teacher, x)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        head = disentangled_head(model)
        t = self.teacher_features(x)
        x_adv = self.craft(model, x, y, loss="ce")  # CE on z1 = the model's own logits
        g = pooled_features(model, x_adv)
        f1 = head.d1(g)
        f2 = head.d2(g.detach())
        z1 = head.classify(f1)
        z2 = head.classify(f2)
        y_wrong = most_likely_wrong(z1, y)
        ce_main = F.cross_entropy(z1.float(), y, reduction="none")
        dis = F.cross_entropy(z2.float(), y_wrong, reduction="none")
        # f2.detach(): D2's gradient comes from L_dis only (f2 depends on nothing else; see module docs)
        excl = F.cosine_similarity(f1.float(), f2.detach().float(), dim=1)
        teacher_cos = F.cosine_similarity(f1.float(), t.float(), dim=1)
        total = ce_main + self.gamma_teacher * (1.0 - teacher_cos) + self.beta_excl * excl + self.alpha_dis * dis
        if self.update == "released" and torch.is_grad_enabled():
            self._prepare_first_step(model, (self.alpha_dis * dis + self.beta_excl * excl).mean())
        parts = {
            "ce_adv": ce_main, "teacher_cos": teacher_cos, "excl_cos": excl, "dis_ce": dis,
            "acc_adv": accuracy(z1, y), "acc_dis_wrong": accuracy(z2, y_wrong),
        }
        return Terms(total, parts, x_adv=x_adv, logits_adv=z1, extra={"f1": f1, "f2": f2, "teacher": t})

    def _prepare_first_step(self, model: nn.Module, first_loss: torch.Tensor) -> None:
        """Keep ∇(L_dis + L_excl) of every trainable parameter for :meth:`before_step` (``update: released``)."""
        student = _unwrap(model)
        params = [p for p in student.parameters() if p.requires_grad]
        grads = torch.autograd.grad(first_loss, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for g in grads:  # the loss's own gradients are averaged by DDP; do the same for the first step's
                dist.all_reduce(g)
                g.div_(dist.get_world_size())
        self._first_step = list(zip(params, grads))
        self._d2 = list(disentangled_head(student).d2.parameters())

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``update: released``: the first step with ∇(L_dis + L_excl) (D2 included), then D2 is left out
        of the trainer's own step, which follows with ∇(L_dis + L_excl + L_main)."""
        if not self._first_step:
            return
        second = [p.grad for p, _ in self._first_step]
        for p, g in self._first_step:
            p.grad = g
        optimizer.step()
        for (p, _), g in zip(self._first_step, second):
            p.grad = g
        for p in self._d2:
            p.grad = None  # SGD skips it: D2's one step was the first
        self._first_step, self._d2 = [], []
