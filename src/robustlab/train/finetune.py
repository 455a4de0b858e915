"""Fine-tuning: start a run from a trained model's weights (AFD, vanilla adversarial fine-tuning).

``finetune(cfg, source)`` runs the standard training loop (:class:`~robustlab.train.Trainer`) with
three differences from ``train(cfg)``:

1. The student starts from the source model's weights (loaded with
   :func:`robustlab.runs.model.load_model`: its EMA weights when it kept an EMA). The source must have
   the run's architecture (model name, options, classes, input channels). Modules the run's method
   adds (AFD's disentangler) keep their own initialisation, identity maps for AFD, so the student's
   logits start equal to the source's. The EMA starts from the same weights.
2. A method with ``set_teacher`` (AFD) gets the source model, frozen in eval mode, as its teacher. The
   teacher lives in the method, not the student, so it is never written to the student's checkpoints.
3. After every epoch (and once before the first) the feature gap of the evaluated model is logged
   (:mod:`robustlab.train.feature_gap`), AFD's motivating measurement, before the epoch's checkpoint.

Resume: when the run folder already holds ``checkpoints/last.safetensors`` the run resumes from it
exactly as ``train`` does and is *not* re-initialised from the source; the source is still loaded
for the teacher and must be the same weights as at the start (``finetune.json`` in the run folder
records the source and a fingerprint of its weights).

Vanilla adversarial fine-tuning (the AFD paper's "vAFT" baseline) is method ``pgd_at`` fine-tuned
from the same source with the same schedule.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from robustlab.atomic import atomic_write_text
from robustlab.config import RunConfig
from robustlab.errors import UserError
from robustlab.runs.checkpoint import checkpoint_path
from robustlab.runs.model import load_model
from robustlab.train.feature_gap import feature_gap_logger
from robustlab.train.loop import FINETUNE_RECORD, Trainer

RECORD = FINETUNE_RECORD
_ARCH_KEYS = ("name", "options", "num_classes", "in_channels")


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (order-independent)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_architecture(student_spec: dict[str, Any], source_spec: dict[str, Any], source: str) -> None:
    for key in _ARCH_KEYS:
        if student_spec.get(key) != source_spec.get(key):
            raise UserError(
                f"source {source} has model {key} {source_spec.get(key)!r} but this config has "
                f"{student_spec.get(key)!r}; fine-tune from a run of the same architecture or change model.* to match"
            )


def _initialise_student(trainer: Trainer, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy the source weights into the student (and its EMA); returns the student-only entries kept as built."""
    try:
        missing, unexpected = trainer.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"source {source} does not fit this model ({str(exc).splitlines()[0][:100]})") from None
    if unexpected:
        raise UserError(
            f"source {source} holds entries this model lacks ({unexpected[0]}, ...): it carries a plug-in's modules; "
            "fine-tune from a run whose method adds none (natural, pgd_at, trades, mart)"
        )
    if trainer.ema is not None:
        trainer.ema.load_state_dict(trainer.model.state_dict())
    return list(missing)


def _prepare(cfg: RunConfig, source: str | Path, *, which: str, weights: str,
             log: Callable[[str], None]) -> tuple[Trainer, bool]:
    trainer = Trainer(cfg, log=log)
    source_model, meta = load_model(source, which=which, weights=weights, device=trainer.device)
    label = str(meta["checkpoint"])
    _check_architecture(trainer.spec, meta["model"], label)
    state = source_model.state_dict()
    fingerprint = weights_fingerprint(state)
    record_path = trainer.run_dir / RECORD
    resuming = checkpoint_path(trainer.run_dir).exists()
    if resuming:
        if record_path.exists():
            saved = json.loads(record_path.read_text())
            if saved.get("fingerprint") != fingerprint:
                raise UserError(
                    f"run {trainer.run_dir} was fine-tuned from {saved.get('source')}, whose weights differ from "
                    f"{label}; pass the same --from or choose another name=..."
                )
    else:
        trainer.prepare_run_dir()  # the folder and config.yaml (or the same-config check); nothing to restore
        added = _initialise_student(trainer, state, label)
        record = {
            "source": label, "weights": meta["weights"], "fingerprint": fingerprint,
            "source_method": meta["model"].get("method", {}).get("name"), "source_epoch": meta.get("epoch"),
            "source_dataset": meta.get("config", {}).get("data", {}).get("name"), "student_only_entries": added,
        }
        if trainer.ranks.main:  # one writer: rank 0's fit() clears other ranks' in-flight temp files
            atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        log(f"fine-tuning from {label} ({record['source_method']}, epoch {record['source_epoch']}, "
            f"{meta['weights']} weights)")
    set_teacher = getattr(trainer.method, "set_teacher", None)
    if callable(set_teacher):
        set_teacher(source_model)
    return trainer, not resuming


def prepare_finetune(cfg: RunConfig, source: str | Path, *, which: str = "last", weights: str = "auto",
                     log: Callable[[str], None] = print) -> Trainer:
    """A :class:`Trainer` for ``cfg`` initialised from ``source`` (run folder or checkpoint), ready to ``fit()``.

    On a fresh run the student (and its EMA) get the source weights; on a run with a ``last``
    checkpoint nothing is copied (``fit`` resumes). A method with ``set_teacher`` gets the frozen source.
    """
    trainer, _ = _prepare(cfg, source, which=which, weights=weights, log=log)
    return trainer


def finetune(cfg: RunConfig, source: str | Path, *, which: str = "last", weights: str = "auto",
             log: Callable[[str], None] = print, after_epoch: Callable[[int], None] | None = None,
             probe_examples: int = 256) -> dict[str, Any]:
    """Fine-tune (or resume fine-tuning) the run ``cfg`` from ``source``; returns the last epoch's record.

    ``source`` is a run folder (its ``which`` checkpoint) or a ``.safetensors`` checkpoint; ``weights``
    picks ``model``/``ema``/``auto`` weights of it. ``probe_examples`` held-out samples probe the
    feature gap each epoch (0: off).
    """
    trainer, fresh = _prepare(cfg, source, which=which, weights=weights, log=log)
    gap = feature_gap_logger(trainer, examples=probe_examples) if probe_examples > 0 else None
    if gap is not None and fresh:
        gap(0)

    return trainer.fit(after_epoch=after_epoch, before_checkpoint=gap)
