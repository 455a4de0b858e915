"""AFD (METHODS.md §4): identity-initialised disentangler, gradient routing, loss formula, folded export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.config import AttackConfig, MethodConfig
from robustlab.errors import UserError
from robustlab.methods import METHODS, create_method
from robustlab.methods.afd import DisentangledHead, afd, fold_disentangler, most_likely_wrong, pooled_features
from robustlab.models import create_model


def _method(**options: object) -> afd:
    attack = AttackConfig(eps=0.1, steps=2, step_size=0.05)
    method = create_method(MethodConfig(name="afd", attack=attack, options=dict(options)),
                           torch.Generator().manual_seed(0))
    assert isinstance(method, afd)
    return method


def _setup(**options: object) -> tuple[afd, nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """A trained-looking source (random weights), its frozen copy as teacher, and an AFD student."""
    source = create_model("small_cnn", width=4)
    method = _method(**options)
    teacher = copy.deepcopy(source)
    method.set_teacher(teacher)
    student = method.prepare_model(copy.deepcopy(source)).train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    return method, student, source, x, y


def test_afd_is_a_registered_method_with_ascii_options() -> None:
    assert "afd" in METHODS.names()
    m = _method(alpha_dis=0.1, beta_excl=0.5, gamma_teacher=10)
    assert (m.alpha_dis, m.beta_excl, m.gamma_teacher) == (0.1, 0.5, 10.0)
    with pytest.raises(UserError, match="accepted options"):
        _method(alpha=0.1)


def test_disentangler_starts_at_identity_and_logits_equal_the_source() -> None:
    source = create_model("small_cnn", width=4).eval()
    x = torch.rand(5, 1, 8, 8)
    before = source(x)
    student = _method().prepare_model(copy.deepcopy(source)).eval()
    head = student.head
    assert isinstance(head, DisentangledHead) and isinstance(head, nn.Linear)
    eye = torch.eye(source.num_features)
    assert torch.equal(head.d1.weight, eye) and torch.equal(head.d2.weight, eye)
    assert head.d1.bias is None and head.d2.bias is None
    torch.testing.assert_close(student(x), before, rtol=0, atol=0)
    # the source's weights load into the student unchanged (same key names), only D1/D2 are new
    result = create_model("small_cnn", width=4).load_state_dict(source.state_dict())
    missing, unexpected = _method().prepare_model(create_model("small_cnn", width=4)).load_state_dict(
        source.state_dict(), strict=False)
    assert sorted(missing) == ["head.d1.weight", "head.d2.weight"] and not unexpected and not result.missing_keys
    assert _method().prepare_model(student) is student and student.head is head  # idempotent


def test_loss_matches_the_formula() -> None:
    method, student, _, x, y = _setup()
    with torch.no_grad():
        student.head.d1.weight.add_(0.05 * torch.randn_like(student.head.d1.weight))
        student.head.d2.weight.add_(0.05 * torch.randn_like(student.head.d2.weight))
    terms = method.terms(student, x, y, step=0)
    f1, f2, t = terms.extra["f1"], terms.extra["f2"], terms.extra["teacher"]
    head = student.head
    z1, z2 = f1 @ head.weight.T + head.bias, f2 @ head.weight.T + head.bias
    zd = z1.detach()
    wrong = torch.tensor([max((k for k in range(10) if k != int(y[i])), key=lambda k: float(zd[i, k]))
                          for i in range(8)])
    assert torch.equal(most_likely_wrong(z1, y), wrong)
    expected = (
        F.cross_entropy(z1, y) + 25.0 * (1 - F.cosine_similarity(f1, t).mean())
        + 0.25 * F.cosine_similarity(f1, f2).mean() + 0.05 * F.cross_entropy(z2, wrong)
    )
    torch.testing.assert_close(terms.per_sample.mean(), expected, rtol=1e-5, atol=1e-6)
    # t is the teacher's clean pooled feature, f2 = D2 · g(x')
    torch.testing.assert_close(t, pooled_features(method.teacher, x))
    torch.testing.assert_close(terms.logits_adv, z1, rtol=1e-5, atol=1e-6)
    assert student.training  # the update runs in train mode
    # the student's features are those of the adversarial x' (only x' is trained on), not of the clean x
    assert not torch.allclose(terms.x_adv, x)
    torch.testing.assert_close(f1, head.d1(pooled_features(student, terms.x_adv)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(f1, head.d1(pooled_features(student, x)), rtol=1e-3, atol=1e-4)


def test_dis_loss_reaches_only_d2_and_the_head() -> None:
    method, student, _, x, y = _setup()
    terms = method.terms(student, x, y, step=0)
    dis = method.alpha_dis * terms.parts["dis_ce"].mean()
    named = dict(student.named_parameters())
    grads = torch.autograd.grad(dis, list(named.values()), allow_unused=True)
    reached = {n for n, g in zip(named, grads) if g is not None and g.abs().sum() > 0}
    assert reached == {"head.d2.weight", "head.weight", "head.bias"}


def test_d2_gets_gradient_only_from_dis_others_from_the_whole_loss() -> None:
    method, student, _, x, y = _setup()
    with torch.no_grad():  # move D2 off the identity so the exclusion term has a gradient
        student.head.d2.weight.add_(0.1 * torch.randn_like(student.head.d2.weight))
    terms = method.terms(student, x, y, step=0)
    f1, f2, t = terms.extra["f1"], terms.extra["f2"], terms.extra["teacher"]
    named = dict(student.named_parameters())
    params = list(named.values())

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), gs)}

    total = grads(terms.per_sample.mean())
    dis = grads(method.alpha_dis * terms.parts["dis_ce"].mean())
    main = F.cross_entropy(terms.logits_adv, y) + method.gamma_teacher * (1 - F.cosine_similarity(f1, t).mean())
    excl_undetached = method.beta_excl * F.cosine_similarity(f1, f2).mean()  # gradient into D2 as well
    everything = grads(main + excl_undetached + method.alpha_dis * terms.parts["dis_ce"].mean())
    torch.testing.assert_close(total["head.d2.weight"], dis["head.d2.weight"], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(everything["head.d2.weight"], dis["head.d2.weight"])  # the exclusion would reach D2
    for name in named:
        if name != "head.d2.weight":
            torch.testing.assert_close(total[name], everything[name], rtol=1e-4, atol=1e-5, msg=name)
    assert total["head.d1.weight"].abs().sum() > 0 and total["stages.0.0.0.weight"].abs().sum() > 0


def test_training_attack_uses_the_models_own_logits_in_eval_mode() -> None:
    method, student, _, x, y = _setup()
    modes: list[bool] = []
    hook = student.head.register_forward_hook(lambda m, i, o: modes.append(m.training))
    method.terms(student, x, y, step=0)
    hook.remove()
    assert modes[:-1] and not any(modes[:-1])  # the attack's forwards: eval mode, through the head (z1)
    assert student.training


def test_without_teacher_the_loss_is_a_user_error() -> None:
    method = _method()
    student = method.prepare_model(create_model("small_cnn", width=4))
    with pytest.raises(UserError, match="finetune"):
        method.loss(student, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_teacher_is_frozen_and_not_part_of_the_student() -> None:
    method, student, _, x, y = _setup()
    assert not method.teacher.training and not any(p.requires_grad for p in method.teacher.parameters())
    assert not any(k.startswith("teacher") for k in student.state_dict())
    loss, _ = method.loss(student, x, y)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())


def test_folded_export_has_equal_logits_and_a_plain_head() -> None:
    method, student, _, x, _ = _setup()
    with torch.no_grad():
        student.head.d1.weight.copy_(torch.eye(16) + 0.2 * torch.randn(16, 16))
    student.eval()
    folded = fold_disentangler(student).eval()
    assert type(folded.head) is nn.Linear
    torch.testing.assert_close(folded(x), student(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.head.weight, student.head.weight @ student.head.d1.weight)
    plain = create_model("small_cnn", width=4)
    plain.load_state_dict(folded.state_dict())  # strict: a plain architecture
    torch.testing.assert_close(plain.eval()(x), student(x), rtol=1e-5, atol=1e-5)
    assert isinstance(student.head, DisentangledHead)  # the original is untouched
    with pytest.raises(UserError):
        fold_disentangler(plain)


@pytest.mark.parametrize("update", ["single", "released"])
def test_update_single_is_one_step_released_is_two_steps_except_d2(update: str) -> None:
    """``released``: every parameter but D2 steps with ∇(L_dis + L_excl), then with ∇(whole loss); D2 steps once
    with ∇L_dis. ``single``: one step with the loss's gradient (D2's being ∇L_dis)."""
    method, student, _, x, y = _setup(update=update)
    with torch.no_grad():  # move D2 off the identity so the exclusion term has a gradient
        student.head.d2.weight.add_(0.1 * torch.randn_like(student.head.d2.weight))
    named = dict(student.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    terms = method.terms(student, x, y, step=0)
    loss = terms.per_sample.mean()
    first_loss = (method.alpha_dis * terms.parts["dis_ce"] + method.beta_excl * terms.parts["excl_cos"]).mean()

    def grads(value: torch.Tensor) -> dict[str, torch.Tensor]:
        gs = torch.autograd.grad(value, list(named.values()), retain_graph=True, allow_unused=True)
        return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), gs)}

    first, whole = grads(first_loss), grads(loss)
    lr = 0.1
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    loss.backward()
    method.before_step(optimizer)
    optimizer.step()
    for name, p in named.items():
        if update == "single":
            expected = before[name] - lr * whole[name]
        elif name == "head.d2.weight":
            expected = before[name] - lr * first[name]
        else:
            expected = before[name] - lr * first[name] - lr * whole[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)
    assert first["stages.0.0.0.weight"].abs().sum() > 0 and first["head.weight"].abs().sum() > 0
    torch.testing.assert_close(first["head.d2.weight"], whole["head.d2.weight"], rtol=1e-5, atol=1e-7)
    with pytest.raises(UserError, match="update must be single or released"):
        _method(update="twice")
