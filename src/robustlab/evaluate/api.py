"""Evaluation entry points: any ``nn.Module`` (:func:`evaluate_model`) or a trained run
(:func:`evaluate_checkpoint`)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import robustlab
from robustlab.attacks.counting import Stopwatch, count_passes
from robustlab.data import ImageDataset, fixed_subset
from robustlab.errors import UserError
from robustlab.evaluate.adaptive import build_adaptive
from robustlab.evaluate.adversarial import adversarial_path, write_adversarial
from robustlab.evaluate.breaks import SUITE_PREFIX, Keep, partial_folder
from robustlab.evaluate.checks import announce_checks, run_checks
from robustlab.evaluate.checks.trace import SuiteTrace, watching
from robustlab.evaluate.failures import forward_failures
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.guard import guard_model
from robustlab.evaluate.masking import ENTRY, inspect_masking, masking_flag, routed_suite
from robustlab.evaluate.output import check_output, claim_output, evaluation_outputs, verify_state_of
from robustlab.evaluate.probe import probe_forward
from robustlab.evaluate.progress import Progress
from robustlab.evaluate.runner import run_suite, summarise
from robustlab.evaluate.sharding import gather_states, shard_batches
from robustlab.evaluate.state import EvalState, finished_work, labels_hash, model_hash
from robustlab.evaluate.suite import autoattack_version, check_attack_names, group_that_ran
from robustlab.evaluate.target import attack_tag, checkpoint_target
from robustlab.evaluate.verify import parse_verify, verify_survivors
from robustlab.rules import (
    MAX_RESTARTS,
    budget_warnings,
    check_budget,
    check_count,
    check_seed,
    check_step_size,
    eval_budget_warnings,
)
from robustlab.runs.model import load_model
from robustlab.runs.ranks import join, ranks_from_env, resolve_device
from robustlab.runs.record import format_table, make_record, write_record
from robustlab.runs.selection import describe, on_test


def _placed(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` on ``device`` in eval mode, its 4-d weights channels-last when asked."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _check_channels_last(model: nn.Module, probe: torch.Tensor) -> None:
    """One line instead of a traceback when the model cannot run channels-last (e.g. ``.view`` on a feature map)."""
    try:
        with torch.no_grad():
            model(probe)
    except RuntimeError as err:
        raise UserError(f"the model fails in channels-last memory format ({str(err).splitlines()[0]}); "
                        "evaluate without --channels-last") from None


def _selection_flag(model_info: dict[str, Any]) -> Flag | None:
    """``selected_on_test``: the checkpoint was chosen on test images (:mod:`robustlab.runs.selection`)."""
    selection = model_info.get("selection")
    if not on_test(selection):
        return None
    return Flag("selected_on_test",
                f"the checkpoint was chosen on the test split ({describe(selection)}), so its test accuracy is biased "
                "upwards (Rice et al. 2020); evaluate last, or train with data.val_examples=1000 to choose on training "
                "images held out")


def evaluate_model(
    model: nn.Module,
    data: ImageDataset,
    *,
    attacks: list[str],
    eps: float,
    norm: str = "linf",
    step_size: float | None = None,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    state_path: str | Path | None = None,
    model_info: dict[str, Any] | None = None,
    adaptive: bool = False,
    transfer_source: nn.Module | None = None,
    checks: bool = True,
    probe_size: int = 64,
    channels_last: bool = False,
    verify: int | str | None = None,
    keep: Keep | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate any classifier (inputs in [0, 1], logits out) on ``data``; returns the record.

    ``state_path``: per-sample verdicts are saved there after every batch, and a rerun with the same
    model, data, attacks and settings continues from it. ``step_size`` defaults to ε/4.
    ``adaptive``: add the model-specific attacks of :mod:`robustlab.evaluate.adaptive` (auxiliary
    heads, fixed gates, EOT, transfer from ``transfer_source``) as one more entry, ``adaptive``.
    ``checks``: run the cheap gradient-masking checks of EVALUATION.md (1–6) on a probe of
    ``probe_size`` samples; their flags join the record's and their measurements go under ``checks``.
    ``autoattack`` on a randomized model runs as ``autoattack-rand``, flagged ``autoattack_rand``. A model whose
    logits depend on the rest of its batch is flagged ``batch_dependent`` and never given a batch of one
    (:mod:`robustlab.evaluate.batch`); an exception from the model's forward inside an attack is one UserError line
    naming the model and the batch size (:mod:`robustlab.evaluate.failures`).
    ``channels_last``: convert ``model`` (in place) and the transfer source to the channels-last memory
    format, which makes convolutions much faster on CPU (1.5-1.75x per forward for the study's ResNet);
    the logits agree to float rounding. Recorded under ``channels_last``.
    ``model_info`` describes the model; a ``selection`` in it saying the test split chose the checkpoint adds the
    ``selected_on_test`` flag (:mod:`robustlab.runs.selection`).
    ``verify``: a number K of survivors (or ``"all"``) on which the full standard ``autoattack`` then runs
    (:mod:`robustlab.evaluate.verify`): the record gets ``verify`` (the estimated gap and its 95%
    interval), the worst case counts what it broke, and ``verify_gap`` flags an upper end above 0.5
    points. Runs in the main process only.
    ``keep``: keep the adversarial point of every break (the suite's and the verification's) in its per-batch side
    files, resumably (:mod:`robustlab.evaluate.breaks`); on the main process ``keep.breaks`` then holds them all.
    """
    check_attack_names(attacks)
    verify = parse_verify(verify)
    requested = list(attacks)
    ranks = ranks_from_env()
    dev = join(ranks, resolve_device(device, key="--device") if isinstance(device, str) else device)
    log = log if ranks.main else (lambda _: None)
    selected = _selection_flag(dict(model_info or {}))
    if selected is not None:
        log(f"warning: {selected.message}")
    model = _placed(model, dev, channels_last)
    check_budget(eps, norm, key="eps")
    if step_size is None:
        step_size = eps / 4  # 0 at eps 0, where the attacks cannot move anyway: warned below, not refused
    else:
        check_step_size(step_size)
    check_count(restarts, MAX_RESTARTS, key="--restarts")
    check_seed(seed, key="--seed")
    for warning in budget_warnings(eps, step_size, key="evaluation") + eval_budget_warnings(eps):
        log(f"warning: {warning}")
    n_probe = min(len(data.labels), 16)
    probe, probe_y = data.images[:n_probe].to(dev).float() / 255, data.labels[:n_probe].to(dev)
    if channels_last:
        _check_channels_last(model, probe)
    probe_forward(model, probe)
    model, writes, batch_flag = guard_model(model, probe, log)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # the attacks' draws stay as they were
        masking = inspect_masking(model, probe, probe_y)  # hidden gradients: the straight-through surrogate
    attacks, version_flag = autoattack_version(model, probe, attacks)  # randomized model: the rand version
    specs, gradient_flag = routed_suite(masking, attacks, eps=eps, norm=norm, step_size=step_size, restarts=restarts)
    if gradient_flag is not None:
        log(f"warning: {gradient_flag.message}")
    elif masking.surrogate is not None:
        log(f"straight-through: gradients hidden from autograd ({masking.calls()}); every gradient attack also runs "
            f"through a straight-through surrogate, judged on the real model (entry {ENTRY})")
    if adaptive or transfer_source is not None:
        group = build_adaptive(
            model, probe, eps=eps, norm=norm, step_size=step_size, num_classes=data.num_classes,
            transfer_source=None if transfer_source is None else _placed(transfer_source, dev, channels_last),
            through=masking.surrogate, gradients=masking.surrogate is not None or not masking.no_graph,
        )
        if group is None:
            log("adaptive: no auxiliary heads, gates, randomness or transfer source; nothing model-specific to add")
        else:
            specs.append(group)
    fingerprint = {
        "model": model_hash(model), "data": labels_hash(data.images, data.labels),
        "attacks": {s.name: s.describe() for s in specs}, "eps": eps, "norm": norm, "seed": seed,
        "batch_size": batch_size, "channels_last": channels_last, "version": robustlab.__version__,
    }
    if masking.surrogate is not None:
        fingerprint["straight_through"] = masking.report["replaced"]
    first, end = shard_batches(len(data.labels), batch_size, ranks)
    shard = (data.select(torch.arange(first * batch_size, min(end * batch_size, len(data.labels)))) if end > first
             else None)
    path = Path(state_path) if state_path is not None else None
    verify_path = None if path is None else verify_state_of(path)  # one file, claimed beside the record, every rank
    if path is not None and ranks.enabled:
        fingerprint["shard"] = [first, end]
        path = path.with_suffix(f".rank{ranks.rank}{path.suffix}")
    names = [s.name for s in specs]
    size = 0 if shard is None else len(shard.labels)
    state = EvalState.resume_or_new(path, fingerprint, size, batch_size, names, log=log)
    keeper = None
    if keep is not None:
        keeper = keep.stage(SUITE_PREFIX, torch.arange(first * batch_size, first * batch_size + size), specs,
                            batch_size, first)
        state = keep.resumable(keeper, state, lambda: EvalState.new(fingerprint, size, batch_size, names), log)
    fresh = checks and not ranks.enabled and not masking.no_graph and not finished_work(state, len(specs))
    trace = SuiteTrace.of_probe(data, probe_size, seed=seed, eps=eps, norm=norm, device=dev) if fresh else None  # 9
    started = time.perf_counter()
    if shard is not None:
        progress = (Progress(len(state.clean) * len(specs), done=finished_work(state, len(specs))) if ranks.main
                    else None)
        try:
            with (progress.watch(model) if progress is not None else nullcontext(),
                  watching(trace, model, transfer_source)):
                state = run_suite(model, shard, specs, eps=eps, norm=norm, batch_size=batch_size, device=dev, seed=seed,
                                  state=state, state_path=path, batch_offset=first, progress=progress, keep=keeper)
        finally:
            if progress is not None:
                progress.close()
    gathered = gather_states(state, ranks)
    result = summarise(gathered, specs)
    if keep is not None and ranks.main:
        keep.breaks = keep.stage(SUITE_PREFIX, torch.arange(len(data.labels)), specs, batch_size).collect(gathered)
    for flag in (selected, writes, batch_flag, version_flag, gradient_flag, masking_flag(masking, result)):
        if flag is not None:
            result["flags"].append(flag.to_dict())
    if masking.found:
        result["straight_through"] = masking.report
    if verify is not None and ranks.main:
        verify_survivors(model, data, result, verify, eps=eps, norm=norm, step_size=step_size, batch_size=batch_size,
                         device=dev, seed=seed, fingerprint=fingerprint, log=log, masking=masking, keep=keep,
                         state_path=verify_path)
    if checks and ranks.main and not masking.no_graph:
        probe = fixed_subset(data, min(probe_size, len(data.labels)), seed=seed)
        x_probe, y_probe = probe.images.to(dev).float() / 255, probe.labels.to(dev)
        log(announce_checks(len(probe.labels), traced=trace is not None))
        with forward_failures(model, "inside the automatic checks"):
            with count_passes(model) as passes, Stopwatch(dev) as watch:
                flags, values = run_checks(model, x_probe, y_probe, eps=eps, norm=norm, step_size=step_size,
                                           suite_result=result, trace=trace,
                                           generator=torch.Generator(device=dev).manual_seed(seed))
        log(f"checks: done in {watch.seconds:.1f} s ({passes.forward:,} forward and {passes.backward:,} backward "
            "sample passes)")
        result["flags"] += [f.to_dict() for f in flags]
        result["checks"] = values
        result["checks_run"] = True
    settings = {
        "dataset": data.name, "n_examples": len(data.labels), "data_hash": fingerprint["data"], "seed": seed,
        "eps": eps, "norm": norm, "step_size": step_size, "batch_size": batch_size, "model_mode": "eval",
        "wall_time_s": round(time.perf_counter() - started, 3), "device": str(dev), "processes": ranks.world,
        "channels_last": channels_last,
    }
    params = {s.name: s.describe() for s in specs}
    faithful = group_that_ran("autoattack", params.get("autoattack", {})) == "autoattack"
    return make_record(result, settings=settings, attack_params=params, model_info=dict(model_info or {}),
                       attacks=requested, autoattack_faithful=faithful)


def evaluate_into(
    out: Path, model: nn.Module, data: ImageDataset, *, transfer_from: str | Path | None = None, device: torch.device,
    save_adversarial: bool = False, source_index: torch.Tensor | None = None, log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` into the record at ``out``: the one tail of every entry point.

    Under the record's lock (:func:`~robustlab.evaluate.output.claim_output`: an existing ``out`` that is
    not a robustlab record is refused before any work, stale temp files are cleared) it runs
    :func:`evaluate_model` (``options`` are its keywords) with the per-sample state beside ``out``, so a
    rerun resumes; rank 0 writes the record and prints its table. ``transfer_from``: a run folder or
    checkpoint whose model crafts transfer attacks. ``save_adversarial``: also write the adversarial file
    ``OUT.adv.safetensors`` (:mod:`robustlab.evaluate.adversarial`), named in the record, before the record;
    ``source_index[i]``: the split index of ``data``'s row ``i`` (default: row ``i``).
    """
    main = ranks_from_env().main
    outputs = evaluation_outputs(save_adversarial)
    if main:
        check_output(out, outputs)  # before the transfer source loads
    source = load_model(transfer_from, device=device)[0] if transfer_from is not None else None
    with claim_output(out, main=main, log=log, outputs=outputs) as state:
        keep = Keep(partial_folder(out)) if save_adversarial else None
        record = evaluate_model(model, data, state_path=state, transfer_source=source, device=device, keep=keep,
                                log=log, **options)
        if main:
            if keep is not None:
                index = torch.arange(len(data.labels)) if source_index is None else source_index
                record["adversarial"] = write_adversarial(adversarial_path(out), record, keep.breaks, model, data,
                                                          index, device=device, log=log)
            write_record(out, record)
            log(format_table(record))
            log(f"record written to {out}")
    return record


def evaluate_checkpoint(
    path: str | Path,
    *,
    attacks: list[str],
    eps: float | None = None,
    norm: str | None = None,
    step_size: float | None = None,
    restarts: int = 1,
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    split: str = "test",
    which: str = "last",
    weights: str = "auto",
    device: str = "auto",
    out: str | Path | None = None,
    adaptive: bool = False,
    transfer_from: str | Path | None = None,
    checks: bool = True,
    channels_last: bool = False,
    verify: int | str | None = None,
    save_adversarial: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate a trained run; ε, norm and step size default to the run's training attack
    (:func:`~robustlab.evaluate.target.checkpoint_target`).

    ``transfer_from``: a run folder or checkpoint whose model crafts transfer attacks (implies adaptive).
    ``save_adversarial``: write the adversarial file beside the record (:func:`evaluate_into`).
    """
    check_attack_names(attacks)
    parse_verify(verify)
    dev = resolve_device(device, key="--device")
    target = checkpoint_target(path, eps=eps, norm=norm, step_size=step_size, n_examples=n_examples, seed=seed,
                               split=split, which=which, weights=weights, device=dev, log=log)
    if out is None:
        tag = attack_tag(attacks) + ("_adaptive" if adaptive or transfer_from else "")
        out = target.default_out("eval", tag + ("" if verify is None else f"_verify{verify}"))
    return evaluate_into(
        Path(out), target.model, target.data, attacks=attacks, eps=target.eps, norm=target.norm,
        step_size=target.step_size, restarts=restarts, batch_size=batch_size, seed=seed, device=dev,
        model_info=target.model_info, adaptive=adaptive,
        transfer_from=transfer_from, checks=checks, channels_last=channels_last, verify=verify, log=log,
        save_adversarial=save_adversarial, source_index=target.source_index,
    )

