"""The one training loop: any method, any model, resumable, logged, checkpointed.

``train(cfg)`` builds data, model, method, optimiser and EMA from a :class:`RunConfig`, resumes from
``<run>/checkpoints/last.safetensors`` when it exists (same config required), and after every epoch
evaluates clean and PGD accuracy on a fixed held-out subset (of ``data.eval_split``, or of the training images
``data.val_examples`` holds out, when no test image is read at all), writes ``last`` and, by the configured
rule, ``best`` checkpoints atomically, each saying how it was chosen (:mod:`robustlab.runs.selection`). All
randomness comes from seeded generators whose states are checkpointed, so on CPU a run killed after an epoch
and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from robustlab.atomic import atomic_write_text, remove_stale_temps
from robustlab.attacks._common import eval_mode
from robustlab.attacks.pgd import fgsm, pgd
from robustlab.config import RunConfig, build_config, dump_yaml, read_yaml, to_dict
from robustlab.data import DeviceLoader, ImageDataset, fixed_subset, hold_out, load_dataset
from robustlab.errors import UserError
from robustlab.methods import create_method
from robustlab.rules import config_warnings
from robustlab.runs.checkpoint import (
    CHECKPOINT_DIR,
    EMA,
    LOADER_GENERATOR,
    METHOD_GENERATOR,
    MODEL,
    OPTIM,
    RNG_CUDA,
    RNG_TORCH,
    checkpoint_path,
    header,
    is_resumable,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from robustlab.runs.folder import claim_run_folder
from robustlab.runs.lock import RunLock
from robustlab.runs.metrics import MetricsLog
from robustlab.runs.model import build_model, check_input_size, model_spec
from robustlab.runs.ranks import join, ranks_from_env, resolve_device
from robustlab.runs.selection import checkpoint_selection, selection_metric
from robustlab.train.distributed import barrier, per_rank_batch, wrap
from robustlab.train.ema import ModelEma
from robustlab.train.optim import build_optimizer, lr_factor, set_lr
from robustlab.train.overfit import OverfitWatch, agree, describe
from robustlab.train.precision import attack_autocast, update_autocast


def evaluate_clean_and_pgd(
    model: nn.Module, data: ImageDataset, *, eps: float, steps: int, step_size: float, norm: str,
    batch_size: int, device: torch.device, seed: int,
) -> dict[str, float]:
    """Clean, FGSM and PGD-``steps`` accuracy of ``model`` (in eval mode) on ``data``; the per-epoch monitor.

    FGSM accuracy feeds the catastrophic-overfitting watch (:mod:`robustlab.train.overfit`).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    loader = DeviceLoader(data, batch_size, shuffle=False, device=device)
    clean = robust = single = 0
    with eval_mode(model):
        for x, y in loader:
            with torch.no_grad():
                clean += (model(x).argmax(1) == y).sum().item()
            if steps > 0 and eps > 0:
                x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, generator=generator)
                x_one = fgsm(model, x, y, eps=eps, norm=norm)
                with torch.no_grad():
                    robust += (model(x_adv).argmax(1) == y).sum().item()
                    single += (model(x_one).argmax(1) == y).sum().item()
    n = len(data.labels)
    attacked = steps > 0 and eps > 0
    return {"clean_acc": clean / n, "robust_acc": robust / n if attacked else float("nan"),
            "fgsm_acc": single / n if attacked else float("nan")}


class Trainer:
    """Holds the state of one run; :meth:`fit` runs the remaining epochs."""

    def __init__(self, cfg: RunConfig, *, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.ranks = ranks_from_env()
        self.log = log if self.ranks.main else (lambda _: None)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.lock = RunLock.for_run(self.run_dir)
        for warning in config_warnings(cfg):
            self.log(f"warning: {warning}")
        self.device = join(self.ranks, resolve_device(cfg.train.device))
        torch.manual_seed(cfg.seed)
        train_set, eval_set = _training_data(cfg)
        wanted = cfg.data.eval_examples or len(eval_set)  # 0 = the whole split; capped at its size
        self.eval_set = fixed_subset(eval_set, min(wanted, len(eval_set)), seed=cfg.seed)
        self.loader = DeviceLoader(
            train_set, per_rank_batch(cfg.data.batch_size, self.ranks), shuffle=True,
            drop_last=len(train_set.labels) > cfg.data.batch_size, crop_padding=cfg.data.crop_padding,
            flip=cfg.data.flip, device=self.device, seed=cfg.seed, shard=(self.ranks.rank, self.ranks.world),
        )
        self.spec = model_spec(cfg, train_set)
        self.method = create_method(cfg.method, torch.Generator(device=self.device).manual_seed(self._attack_seed()))
        self.method.set_attack_precision(attack_autocast(cfg.train.attack_amp, self.device))
        self.model = build_model(self.spec).to(self.device)
        check_input_size(self.model, self.eval_set, self.device)  # before any file of the run is written
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        ddp_model = wrap(self.model, self.ranks, self.device)
        self.forward_model = torch.compile(ddp_model) if cfg.train.compile else ddp_model
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = ModelEma(self.model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay else None
        self.autocast, self.scaler = update_autocast(cfg.train.amp, self.device)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.epoch = 0
        self.step = 0
        self.best: dict[str, Any] = {"metric": None, "epoch": None}
        attacked = cfg.train.eval_pgd_steps > 0 and cfg.method.attack.eps > 0
        self.chosen_by = selection_metric(cfg.train.checkpoint_rule, attacked)  # the metric that picks `best`
        self.overfit = OverfitWatch()

    def _attack_seed(self, step: int = 0) -> int:
        """Each rank draws its own attack noise (rank 0 of a single process: ``seed + 1``)."""
        return self.cfg.seed + 1 + 7919 * self.ranks.rank + step

    # ----------------------------------------------------------------- resume
    def prepare_run_dir(self) -> bool:
        """Create the run folder or check it holds this same run (a folder holding anything else is refused:
        :func:`~robustlab.runs.folder.claim_run_folder`); True when a checkpoint was restored."""
        config_path = self.run_dir / "config.yaml"
        last = checkpoint_path(self.run_dir)
        if self.ranks.main:
            claim_run_folder(self.run_dir)  # before the lock file: a refused folder gains nothing
            stale = self.lock.acquire(f"run folder {self.run_dir}")
            if stale is not None:
                self.log(f"took over the lock of process {stale}, which is gone")
            for folder in (self.run_dir, self.ckpt_dir):
                remove_stale_temps(folder)
        if config_path.exists():
            saved = build_config(read_yaml(config_path))
            if _identity(saved) != _identity(self.cfg):
                raise UserError(
                    f"run folder {self.run_dir} holds a run with a different config; "
                    "choose another name=... or delete that folder"
                )
        elif self.ranks.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(config_path, dump_yaml(self.cfg))
        barrier(self.ranks)
        if last.exists():
            self.restore(last)
            return True
        return False

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path, device="cpu")
        if not is_resumable(meta):
            raise UserError(f"checkpoint {path} is not a resumable robustlab training checkpoint; delete it to start "
                            "over")
        try:
            self.model.load_state_dict(unprefixed(MODEL, tensors))
            self.optimizer.load_state_dict(optimizer_from_flat(unprefixed(OPTIM, tensors), meta["optimizer"]))
            if self.ema is not None:
                self.ema.load_state_dict(unprefixed(EMA, tensors))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"checkpoint {path} does not match this config's model ({str(exc).splitlines()[0][:100]}); "
                            "use another run name") from None
        self.loader.load_state_dict({"generator": tensors[LOADER_GENERATOR]})
        self.method.load_state_dict({"generator": tensors[METHOD_GENERATOR]})
        if self.ranks.rank:  # the checkpoint holds rank 0's attack generator; others reseed deterministically
            self.method.generator.manual_seed(self._attack_seed(meta["step"]))
        torch.set_rng_state(tensors[RNG_TORCH])
        if self.device.type == "cuda" and RNG_CUDA in tensors:
            torch.cuda.set_rng_state(tensors[RNG_CUDA], self.device)
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.epoch, self.step, self.best = meta["epoch"], meta["step"], meta["best"]
        self.overfit = OverfitWatch(meta.get("overfit"))

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = prefixed(MODEL, self.model.state_dict())
        if self.ema is not None:
            tensors.update(prefixed(EMA, self.ema.state_dict()))
        return tensors

    def save(self, name: str, *, resumable: bool, metrics: dict[str, float]) -> None:
        tensors = self.checkpoint_tensors()
        meta = header(epoch=self.epoch, step=self.step, best=self.best, overfit=self.overfit.state_dict(),
                      model=self.spec, config=to_dict(self.cfg), metrics=metrics,
                      weights=EMA if self.ema is not None else MODEL,
                      selection=checkpoint_selection(name, metric=self.chosen_by, split=self.cfg.data.eval_split,
                                                     examples=len(self.eval_set)))
        if resumable:
            optim_tensors, optim_meta = optimizer_to_flat(self.optimizer)
            tensors.update(prefixed(OPTIM, optim_tensors))
            tensors[LOADER_GENERATOR] = self.loader.state_dict()["generator"]
            tensors[METHOD_GENERATOR] = self.method.state_dict()["generator"]
            tensors[RNG_TORCH] = torch.get_rng_state()
            if self.device.type == "cuda":
                tensors[RNG_CUDA] = torch.cuda.get_rng_state(self.device)
            meta["optimizer"] = optim_meta
            meta["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
        save_checkpoint(checkpoint_path(self.run_dir, name), tensors, meta)

    # ------------------------------------------------------------------ train
    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        self.method.start_epoch(self.epoch)
        sums: dict[str, torch.Tensor] = {}
        batches = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", leave=False,
                       disable=not cfg.train.progress or not sys.stderr.isatty(), dynamic_ncols=True)
        for x, y in batches:
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = cfg.optim.lr * lr_factor(self.step, self.total_steps, self.steps_per_epoch, cfg.schedule)
            set_lr(self.optimizer, lr)
            with self.autocast():
                loss, parts = self.method.loss(self.forward_model, x, y, step=self.step)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward_and_step(loss)
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            self.step += 1
            if self.step % cfg.train.log_every == 0:
                record = self.metrics.write("step", self.step, {"lr": lr, **parts})
                self._check_finite(record["loss"])
        epoch_means = {k: (v / self.steps_per_epoch).item() for k, v in sums.items()}
        self._check_finite(epoch_means.get("loss", 0.0))
        return epoch_means

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        clip = self.cfg.optim.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.method.before_step(self.optimizer)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.method.before_step(self.optimizer)
        self.optimizer.step()

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            raise UserError(
                f"training loss became {value} at step {self.step}; lower optim.lr or set optim.grad_clip "
                f"(the last good checkpoint in {self.ckpt_dir} is kept)"
            )

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        attack = cfg.method.attack
        model = self.ema.module if self.ema is not None else self.model
        return evaluate_clean_and_pgd(
            model, self.eval_set, eps=attack.eps, steps=cfg.train.eval_pgd_steps, step_size=attack.step_size,
            norm=attack.norm, batch_size=max(cfg.data.batch_size, 256), device=self.device, seed=cfg.seed,
        )

    def _watch_overfit(self, record: dict[str, Any]) -> bool:
        """Flag catastrophic overfitting in ``record``; True when training should stop here."""
        if not self.overfit.update(record):
            return False
        record["overfit"] = True
        self.log(describe(record, self.overfit))
        return self.cfg.train.stop_on_overfit

    def _is_better(self, metrics: dict[str, float]) -> bool:
        """Whether this epoch becomes ``best``: every evaluated epoch under rule ``last``, else a higher value of
        :attr:`chosen_by` (clean accuracy when the per-epoch evaluation runs no attack)."""
        if self.chosen_by is None:
            return True
        value = metrics[self.chosen_by]
        if self.best["metric"] is None or value > self.best["metric"]:
            self.best = {"metric": value, "epoch": self.epoch, "rule": self.cfg.train.checkpoint_rule}
            return True
        return False

    def fit(self, *, after_epoch: Callable[[int], None] | None = None,
            before_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run (or resume) training; returns the final epoch's evaluation record.

        Each epoch's records (the ``epoch`` record, then whatever ``before_checkpoint(epoch)`` logs) are
        written *before* the ``last`` checkpoint: a run killed in between redoes the epoch and drops
        them on resume (records newer than the checkpoint), so the log never misses or repeats an epoch.
        ``after_epoch(epoch)`` runs once the checkpoint is written.
        """
        try:
            resumed = self.prepare_run_dir()
            self.metrics = MetricsLog(self.run_dir, enabled=self.ranks.main)
            self.metrics.truncate_after(self.step)
        except BaseException:
            self.lock.release()
            raise
        if resumed:
            self.log(f"resumed {self.run_dir} at epoch {self.epoch}/{self.cfg.train.epochs}")
        if self.epoch >= self.cfg.train.epochs:
            self.log(f"{self.run_dir} is already complete ({self.epoch} epochs); nothing to do")
        last: dict[str, Any] = {}
        try:
            while self.epoch < self.cfg.train.epochs:
                started = time.perf_counter()
                train_means = self.train_epoch()
                self.epoch += 1
                record: dict[str, Any] = {"epoch": self.epoch, "time_s": round(time.perf_counter() - started, 3)}
                record.update({f"train_{k}": v for k, v in train_means.items()})
                stop = False
                if self.ranks.main and (self.epoch % self.cfg.train.eval_every == 0
                                        or self.epoch == self.cfg.train.epochs):
                    record.update(self.evaluate())
                    stop = self._watch_overfit(record)
                    if not stop and self._is_better(record):
                        self.save("best", resumable=False, metrics=record)
                last = self.metrics.write("epoch", self.step, record)
                if before_checkpoint is not None:
                    before_checkpoint(self.epoch)
                if self.ranks.main and not stop:  # a flagged epoch is logged but never checkpointed
                    self.save("last", resumable=True, metrics=record)
                barrier(self.ranks)
                self.log(_epoch_line(last))
                if after_epoch is not None:
                    after_epoch(self.epoch)
                if agree(self.ranks, stop, self.device):
                    self.log(f"stopped (train.stop_on_overfit=true); the checkpoints in {self.ckpt_dir} predate epoch "
                             f"{self.epoch}")
                    break
        finally:
            self.metrics.close()
            self.lock.release()
        return last


def _training_data(cfg: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    """``(training images, the split the per-epoch evaluation draws from)``.

    With ``data.val_examples=N`` the second is the N training images :func:`~robustlab.data.hold_out` keeps out of
    the first, and no other split is loaded: training never reads a test image. Otherwise it is ``data.eval_split``
    (test, or the training images themselves), checked to have the training split's classes.
    """
    options = dict(cfg.data.options)
    train_set = load_dataset(cfg.data.name, "train", root=cfg.data.root, download=cfg.data.download, **options)
    if cfg.data.val_examples:
        return hold_out(train_set, cfg.data.val_examples, seed=cfg.seed)
    eval_set = load_dataset(cfg.data.name, cfg.data.eval_split, root=cfg.data.root, download=False, **options)
    if eval_set.classes != train_set.classes:
        raise UserError(
            f"data {cfg.data.name}: the {cfg.data.eval_split} split has classes {_short(eval_set.classes)} but "
            f"train has {_short(train_set.classes)}; give both splits the same classes (e.g. data.options.num_classes)"
        )
    return train_set, eval_set


def _identity(cfg: RunConfig) -> dict[str, Any]:
    """The settings that define a run; where it lives and whether bars are drawn do not."""
    data = to_dict(cfg)
    data.pop("out_dir")
    data["train"].pop("progress")
    return data


FINETUNE_RECORD = "finetune.json"  # written by robustlab.train.finetune into a fine-tuning run folder


def _short(classes: list[str]) -> str:
    return f"{len(classes)} ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})"


def _epoch_line(record: dict[str, Any]) -> str:
    shown = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "clean_acc", "robust_acc", "time_s"):
        if key in record and isinstance(record[key], float) and not math.isnan(record[key]):
            shown.append(f"{key} {record[key]:.4f}" if key != "time_s" else f"{record[key]:.1f}s")
    return "  ".join(shown)


def train(cfg: RunConfig, *, log: Callable[[str], None] = print,
          after_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns the last epoch's record.

    A run folder that holds a fine-tuning run (its ``finetune.json``) is refused: resuming it here would
    continue another run's weights as if they were this config's own.
    """
    if (cfg.run_dir / FINETUNE_RECORD).exists():
        raise UserError(f"run folder {cfg.run_dir} holds a fine-tuning run ({FINETUNE_RECORD}); resume it with "
                        "robustlab finetune CONFIG --from SOURCE, or choose another name=...")
    return Trainer(cfg, log=log).fit(after_epoch=after_epoch)
