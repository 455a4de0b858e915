"""``robustlab audit``: is the attack strong enough to find an adversarial example that is known to exist?

The binarization test of Zimmermann, Brendel, Tramèr & Carlini ("Increasing Confidence in Adversarial Robustness
Evaluations", NeurIPS 2022; ``google-research/active-adversarial-tests``, ``active_tests/
decision_boundary_binarization.py``, ``interior_boundary_discrimination_attack``). Per test image the model
classifies correctly, in a fixed seeded order (:func:`clean_correct`), :func:`audit_image`

1. samples the task's points in the ε-ball around the image (:mod:`.points`): the clean image and ``inner_points``
   inner points (label 0) and one boundary point on the ε-sphere (label 1);
2. reads their features, the input of the model's last ``nn.Linear`` (:mod:`.features`), and fits a two-class linear
   head that separates them, its boundary moved next to the boundary point (:mod:`.head`); a task whose head does
   not separate them, or whose boundary point is not adversarial on the model's own forward of it alone, is not set
   up and is counted (the reference skips it too);
3. counts the random-sampling baseline: ``random_points`` random points of each kind in the ball, any classified 1;
4. evaluates the binarized model (features + new head) on the clean image, labelled 0, exactly as
   ``robustlab eval`` would with the same attacks (:func:`robustlab.evaluate.api.evaluate_model`: the probe, the
   straight-through surrogate for hidden gradients with its own ``straight-through`` entry, the randomized and
   batch-dependent routes), and notes per entry whether it found an adversarial example.

The record (:mod:`.record`) gives per entry the share of tasks solved with its exact 95% interval, whether it passes,
and the random baseline. Resumable per image (:mod:`.state`).

Deviations from the reference: the features are standardised for the head's fit (:mod:`.head`); the boundary point
must also be adversarial alone (step 2); the reference's "logit difference improvement" is not computed; every attack
runs through robustlab's suite, not the defenses' own attack code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import robustlab
from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.evaluate.api import evaluate_model
from robustlab.evaluate.audit.features import Binarized, features_and_logits, last_linear
from robustlab.evaluate.audit.head import fit_head
from robustlab.evaluate.audit.points import boundary_points, inner_points, random_points
from robustlab.evaluate.audit.record import AUDIT, SETUP_OK, format_audit, make_audit_record
from robustlab.evaluate.audit.state import AuditState
from robustlab.evaluate.failures import forward_failures
from robustlab.evaluate.output import claim_output
from robustlab.evaluate.probe import probe_forward
from robustlab.evaluate.state import labels_hash, model_hash
from robustlab.evaluate.suite import check_attack_names
from robustlab.evaluate.target import Target
from robustlab.rules import MAX_RESTARTS, check_budget, check_count, check_seed
from robustlab.runs.ranks import resolve_device
from robustlab.runs.record import ROBUST, write_record

DEFAULT_IMAGES = 100  # about a minute for fast on a digits CNN on 2 CPU cores
DEFAULT_INNER = 999  # the authors' scripts (9,999 for the RobustBench models of case_studies/robust_models/)
DEFAULT_RANDOM = 200  # per kind: the reference's n_samples_evaluation (case_studies/evaluate_classifier.py line 486)
MAX_COUNT = 100_000  # images, inner and random points: beyond it an audit would not finish
PROBE = 16
NOT_SEPARATED = "the linear head does not separate the boundary point from the inner points"
NOT_ADVERSARIAL = "the boundary point alone is not adversarial on the model's forward (float rounding)"
CLEAN_MOVED = "the clean image was not classified as inner in the evaluation's forward"


class _Once:
    """A log that says each distinct line once (the per-image evaluations repeat their notes)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.said = log, set()

    def __call__(self, line: str) -> None:
        if line not in self.said:
            self.said.add(line)
            self.log(line)


def image_seed(seed: int, index: int) -> int:
    """The seed of one image's task and attacks, from the audit's seed and the image's index in the data set."""
    return (seed * 1_000_003 + index) % 2**32


def check_settings(eps: float, norm: str, *, n_images: int, inner_points: int, random_points: int, restarts: int,
                   batch_size: int, seed: int) -> None:
    """Refuse, in one line each, what would make the audit meaningless or endless."""
    check_budget(eps, norm, key="eps")
    if eps == 0:
        raise UserError("eps=0 leaves no ball to put a boundary point in, so the audit has no task; pass --eps > 0, "
                        "e.g. 8/255")
    for key, value, low in (("--n-images", n_images, 1), ("--inner-points", inner_points, 1),
                            ("--random-points", random_points, 0), ("--batch-size", batch_size, 1)):
        if value < low:
            raise UserError(f"{key} must be >= {low}, got {value}")
        check_count(value, MAX_COUNT, key=key)
    if restarts < 1:
        raise UserError(f"--restarts must be >= 1, got {restarts}")
    check_count(restarts, MAX_RESTARTS, key="--restarts")
    check_seed(seed, key="--seed")


def clean_correct(model: nn.Module, data: ImageDataset, n: int, *, seed: int, batch_size: int,
                  device: torch.device) -> list[int]:
    """The first ``n`` indices, in a seeded random order of ``data``, of images ``model`` classifies correctly."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    chosen: list[int] = []
    with forward_failures(model, "while the audit picks clean-correct images"), torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            right = model(data.images[idx].to(device).float() / 255).argmax(1).cpu() == data.labels[idx]
            chosen += idx[right].tolist()
            if len(chosen) >= n:
                break
    return chosen[:n]


def _batched(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        parts = [features_and_logits(model, layer, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([f for f, _ in parts]), torch.cat([z for _, z in parts])


def audit_image(
    model: nn.Module, layer: str, data: ImageDataset, index: int, *, attacks: list[str], eps: float, norm: str,
    step_size: float | None, restarts: int, inner: int, random: int, batch_size: int, seed: int,
    device: torch.device, log: Callable[[str], None],
) -> dict[str, Any]:
    """One binarized task on image ``index`` of ``data`` (module docs, steps 1-4): its result
    (:data:`robustlab.evaluate.audit.state.IMAGE_KEYS`)."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x = data.images[index].float() / 255
    points = torch.cat([x[None], inner_points(x, inner, eps, norm, generator),
                        boundary_points(x, 1, eps, norm, generator)]).to(device)
    labels = torch.zeros(len(points), dtype=torch.long, device=device)
    labels[-1] = 1
    result: dict[str, Any] = {"index": index, "setup": SETUP_OK, "found": {}, "random": {}, "seconds": 0.0,
                              "attack_seconds": {}, "flags": {}}
    with forward_failures(model, "on the audit task's points"):
        features, logits = _batched(model, layer, points, batch_size)
        head = fit_head(features, labels, logits)
        binarized = Binarized(model, layer, head).eval() if head is not None else None
        if binarized is None:
            result["setup"] = NOT_SEPARATED
        else:
            with torch.no_grad():
                alone = [int(binarized(points[i:i + 1]).argmax(1)) for i in (0, len(points) - 1)]
            if alone != [0, 1]:
                result["setup"] = NOT_ADVERSARIAL
    if result["setup"] != SETUP_OK:
        return {**result, "seconds": round(time.perf_counter() - started, 4)}
    with forward_failures(binarized, "on the random-sampling baseline's points"), torch.no_grad():
        for kind, pts in random_points(x, random, eps, norm, generator).items():
            hits = [int((binarized(pts[i:i + batch_size].to(device)).argmax(1) == 1).sum())
                    for i in range(0, len(pts), batch_size)]
            result["random"][kind] = sum(hits)
    task = ImageDataset(data.images[index:index + 1], torch.zeros(1, dtype=torch.long), ["inner", "boundary"],
                        data.name)
    record = evaluate_model(binarized, task, attacks=attacks, eps=eps, norm=norm, step_size=step_size,
                            restarts=restarts, batch_size=1, seed=seed, device=device, checks=False, log=log)
    if record["per_sample"]["clean"][0] != 1:
        return {**result, "setup": CLEAN_MOVED, "random": {}, "seconds": round(time.perf_counter() - started, 4)}
    result["found"] = {name: verdicts[0] != ROBUST for name, verdicts in record["per_sample"]["broken_by"].items()}
    result["attack_seconds"] = {name: a["time_s"] for name, a in record["attacks"].items()}
    result["flags"] = {f["code"]: f["message"] for f in record["flags"]}
    return {**result, "seconds": round(time.perf_counter() - started, 4)}


def audit_model(
    model: nn.Module,
    data: ImageDataset,
    *,
    attacks: list[str],
    eps: float,
    norm: str = "linf",
    step_size: float | None = None,
    restarts: int = 1,
    n_images: int = DEFAULT_IMAGES,
    inner_points: int = DEFAULT_INNER,
    random_points: int = DEFAULT_RANDOM,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    state_path: str | Path | None = None,
    model_info: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the binarization test (module docs) of ``attacks`` on ``model`` over ``n_images`` clean-correct images of
    ``data``; returns the audit record (:func:`robustlab.evaluate.audit.record.make_audit_record`).

    ``step_size`` defaults to ε/4, as in an evaluation. ``state_path``: the per-image results are saved there after
    every image, and a rerun with the same model, data and settings continues from it. Refused in one line: ε = 0,
    a model with fewer than two classes or without an ``nn.Linear`` in its forward, counts out of range.
    """
    check_attack_names(attacks)
    check_settings(eps, norm, n_images=n_images, inner_points=inner_points, random_points=random_points,
                   restarts=restarts, batch_size=batch_size, seed=seed)
    dev = resolve_device(device, key="--device") if isinstance(device, str) else device
    model = model.to(dev).eval()
    probe = data.images[:PROBE].to(dev).float() / 255
    probe_forward(model, probe)
    layer = last_linear(model, probe)
    with torch.no_grad():
        features, logits = features_and_logits(model, layer, probe)
    if logits.shape[1] < 2:
        raise UserError(f"the model has {logits.shape[1]} class; the audit needs a classifier of at least 2 classes "
                        "(it asks whether an attack changes the class)")
    fingerprint = {
        "model": model_hash(model), "data": labels_hash(data.images, data.labels), "layer": layer,
        "attacks": [a.strip().lower() for a in attacks], "eps": eps, "norm": norm, "step_size": step_size,
        "restarts": restarts, "inner_points": inner_points, "random_points": random_points, "seed": seed,
        "batch_size": batch_size, "version": robustlab.__version__,
    }
    path = Path(state_path) if state_path is not None else None
    state = AuditState.resume_or_new(path, fingerprint, log=log)
    chosen = clean_correct(model, data, n_images, seed=seed, batch_size=batch_size, device=dev)
    if [im["index"] for im in state.images[:len(chosen)]] != chosen[:len(state.images)]:
        log(f"audit state {path} holds other images; starting fresh")
        state = AuditState(fingerprint)
    if len(chosen) < n_images:
        log(f"audit: only {len(chosen)} of the {len(data)} images are classified correctly; auditing those")
    width, points = int(features.shape[1]), inner_points + 2
    log(f"audit: features are the input of {layer} ({width} values); {len(chosen)} images, {inner_points} inner "
        f"points each, attacks {', '.join(attacks)}"
        + ("" if width > points else f"; note: fewer features than the task's {points} points, so some heads may not "
           "separate them (the reference warns of this too; such tasks are counted as not set up)"))
    started, say = time.perf_counter(), _Once(log)
    for k, index in enumerate(chosen):
        if k < len(state.images):
            continue
        result = audit_image(model, layer, data, index, attacks=attacks, eps=eps, norm=norm,
                             step_size=step_size, restarts=restarts, inner=inner_points, random=random_points,
                             batch_size=batch_size, seed=image_seed(seed, index), device=dev, log=say)
        state.images.append(result)
        state.save(path)
        found = ", ".join(f"{n} {'found' if v else 'missed'}" for n, v in result["found"].items()) or result["setup"]
        log(f"audit: image {k + 1}/{len(chosen)} (index {index}): {found}; random sampling "
            f"{'found one' if any(result['random'].values()) else 'none'}; {result['seconds']:.1f} s")
    settings = {
        "dataset": data.name, "eps": eps, "norm": norm, "step_size": eps / 4 if step_size is None else step_size,
        "restarts": restarts, "attacks_requested": list(attacks), "n_images": n_images, "inner_points": inner_points,
        "random_points": random_points, "seed": seed, "batch_size": batch_size, "device": str(dev),
        "feature_layer": layer, "features": width, "wall_time_s": round(time.perf_counter() - started, 3),
    }
    return make_audit_record(state.images[:len(chosen)], settings=settings, model_info=dict(model_info or {}))


def audit_into(
    out: Path, target: Target, *, attacks: list[str], step_size: float | None = None, restarts: int = 1,
    n_images: int = DEFAULT_IMAGES, inner_points: int = DEFAULT_INNER, random_points: int = DEFAULT_RANDOM,
    batch_size: int = 256, seed: int = 0, device: str | torch.device = "auto", log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Audit ``target`` (:func:`audit_model`) into the record at ``out``, claimed first
    (:data:`~robustlab.evaluate.audit.record.AUDIT`: an existing file there that is not a robustlab audit record, a
    damaged one included, is refused before any work) and locked while the audit runs; the per-image state beside it
    makes a rerun resume. ``step_size``: the attacks' step (default: the target's, else ε/4)."""
    check_attack_names(attacks)
    check_settings(target.eps, target.norm, n_images=n_images, inner_points=inner_points, random_points=random_points,
                   restarts=restarts, batch_size=batch_size, seed=seed)  # before the claim: nothing is written
    with claim_output(out, log=log, outputs=AUDIT) as state:
        record = audit_model(target.model, target.data, attacks=attacks, eps=target.eps, norm=target.norm,
                             step_size=target.step_size if step_size is None else step_size, restarts=restarts,
                             n_images=n_images, inner_points=inner_points, random_points=random_points,
                             batch_size=batch_size, seed=seed, device=device, state_path=state,
                             model_info=target.model_info, log=log)
        write_record(out, record)
        log(format_audit(record))
        log(f"audit record written to {out}")
    return record
