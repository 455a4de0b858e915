"""``robustlab check ADV_FILE RUN|--model FILE.py:factory|--robustbench NAME``: confirm every stored break.

The check trusts neither the file nor the record: it loads the model through the loaders ``eval`` (and ``audit``)
use, as the same :class:`~robustlab.evaluate.target.Target` (a run folder or checkpoint:
:func:`~robustlab.evaluate.target.checkpoint_target`, the run's data set; an outside model:
:func:`~robustlab.evaluate.external.external_target`; a zoo entry: :func:`~robustlab.evaluate.zoo.zoo_target`) on
the file's split (:func:`check_target`), re-loads the evaluated images from the data set (the record's subset size
and seed), and re-runs only the model on the stored images. It refuses, with one
:class:`~robustlab.errors.UserError` line each:

1. a record that does not name this file by its sha256, or a file whose ``record_digest`` differs from the
   record's verdicts and settings (:func:`~robustlab.evaluate.adversarial.record_digest`);
2. a model whose hash differs from the evaluated one's, or data whose hash differs from the record's;
3. rows whose indices are not exactly the record's breaks (count included), whose split index is not the
   subset's, or whose label is not the data set's;
4. an image outside the ε-ball of its clean image or outside [0, 1] (the evaluation's tolerance, 1e-5), float32 or
   8-bit;
5. a float32 image the model classifies correctly, or an 8-bit copy marked as breaking that it classifies
   correctly (and a record whose 8-bit count differs from the file's).

Hashes alone would catch an accidental mismatch; 3-5 catch a file whose hashes were forged to match. The images
are forwarded through the wrappers the evaluation used (:mod:`robustlab.evaluate.guard`), in batches of the
record's batch size. Deviation: a break whose margin is below float rounding may flip in another batch
composition, and a randomized model gives one draw; the writer warns when it sees either.

``robustbench_pt``: once every break is confirmed, also write what RobustBench's "New external evaluation(s)"
issue template asks for, "a ``.pt`` tensor of the same size of the corresponding test set": the whole split's
images as float32 (N, C, H, W) in [0, 1], each confirmed break's row replaced by its adversarial image
(:func:`robustbench_tensor`; ``torch.save``). Only for a record that evaluated the whole split; the path is claimed
before any work and never replaces an existing file (a tensor file cannot be recognised as robustlab's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.atomic import atomic_write
from robustlab.data import ImageDataset, subset_indices
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import (
    FORMAT,
    SUFFIX,
    broken_indices,
    guarded,
    misclassified,
    read_adversarial,
    record_digest,
)
from robustlab.evaluate.external import external_target, sha256_file
from robustlab.evaluate.runner import within_threat_model
from robustlab.evaluate.state import labels_hash, model_hash
from robustlab.evaluate.target import Target, checkpoint_target
from robustlab.evaluate.zoo import zoo_target
from robustlab.ownership import Kind, claim
from robustlab.runs.ranks import resolve_device
from robustlab.runs.record import per_sample_problem, read_record

SHOWN = 5  # indices named in a refusal
TENSOR_FILE = Kind("absent (robustlab never replaces a tensor file)", lambda _: False)
RECORD_KEYS = ("n_examples", "seed", "eps", "norm", "batch_size", "data_hash")  # what the check reads from a record


def _named(indices: torch.Tensor) -> str:
    shown = ", ".join(map(str, indices[:SHOWN].tolist()))
    return shown + (f" and {indices.numel() - SHOWN} more" if indices.numel() > SHOWN else "")


def _record(path: Path, meta: dict[str, str], record_path: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """The record the file belongs to (``record_path``, else the file the metadata names beside it), parsed."""
    where = Path(record_path) if record_path is not None else path.parent / Path(meta["record"]).name
    record, problem = read_record(where, per_sample_problem)
    if record is None:
        raise UserError(f"record {where} cannot be read ({problem}); pass the evaluation record with --record")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise UserError(f"record {where} lacks {', '.join(missing)}; pass the evaluation record with --record")
    return where, record


def _check_hashes(path: Path, meta: dict[str, str], where: Path, record: dict[str, Any]) -> None:
    named = record.get("adversarial") if isinstance(record.get("adversarial"), dict) else {}
    digest = sha256_file(path)
    if named.get("sha256") != digest:
        raise UserError(f"record {where} does not name {path} (its sha256 is {digest[:12]}…, the record's "
                        f"adversarial file {named.get('sha256', 'none')!s:.12}…): the file changed after the "
                        "evaluation or belongs to another record")
    if meta["record_digest"] != record_digest(record):
        raise UserError(f"{path} was written for other verdicts or settings than record {where} holds (record digest "
                        "mismatch): the record was edited or the file belongs to another evaluation")


def _check_rows(tensors: dict[str, torch.Tensor], record: dict[str, Any], data: ImageDataset,
                subset: torch.Tensor, path: Path) -> None:
    index = tensors["index"]
    wanted = torch.tensor(broken_indices(record), dtype=torch.long)
    if index.numel() != wanted.numel() or not torch.equal(index.sort().values, wanted):
        raise UserError(f"{path} holds {index.numel()} images but the record counts {wanted.numel()} breaks (or other "
                        "samples): every break must be stored once")
    moved = (tensors["source_index"] != subset[index]).nonzero().flatten()
    if moved.numel():
        raise UserError(f"{path} names split indices that are not the evaluated subset's for rows {_named(moved)}")
    relabelled = (tensors["label"] != data.labels[index]).nonzero().flatten()
    if relabelled.numel():
        raise UserError(f"{path} stores labels that differ from the data set's for rows {_named(relabelled)}")


def _check_ball(x: torch.Tensor, clean: torch.Tensor, record: dict[str, Any], path: Path, what: str) -> None:
    outside = (~within_threat_model(clean, x, record["eps"], record["norm"])).nonzero().flatten()
    if outside.numel():
        raise UserError(f"{path}: {outside.numel()} {what} lie outside the {record['norm']} ε-ball "
                        f"({record['eps']:g}) of their clean images or outside [0, 1] (rows {_named(outside)})")


def robustbench_tensor(full: ImageDataset, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The split's images (float32 in [0, 1]) with each stored break's row replaced by its adversarial image."""
    x = full.images.float() / 255
    x[tensors["source_index"]] = tensors["x_adv"]
    return x


def confirm_adversarial(path: str | Path, model: nn.Module, full: ImageDataset, *, device: torch.device,
                        record_path: str | Path | None = None, robustbench_pt: str | Path | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Confirm every break stored in the adversarial file ``path`` with ``model`` and ``full`` (the whole split the
    evaluation drew from), or raise a one-line UserError (module docs); returns a summary. ``robustbench_pt``: then
    write RobustBench's tensor there (module docs)."""
    path = Path(path)
    tensors, meta = read_adversarial(path)
    where, record = _record(path, meta, record_path)
    _check_hashes(path, meta, where, record)
    if robustbench_pt is not None and record["n_examples"] != len(full.labels):
        raise UserError(f"RobustBench asks for a tensor the size of the test set, but record {where} evaluated "
                        f"{record['n_examples']} of the {len(full.labels)} {record.get('split')} images; evaluate the "
                        "whole split (no --n-examples) for --robustbench-pt")
    if model_hash(model) != meta["model_sha256"]:
        raise UserError(f"the model differs from the one {path} was made with (weights hash "
                        f"{model_hash(model)[:12]}… vs {meta['model_sha256'][:12]}…); pass the evaluated run, or the "
                        "same --model, --weights and --mean/--std/--normalize")
    subset = subset_indices(len(full.labels), record["n_examples"], record["seed"])
    data = full.select(subset)
    if labels_hash(data.images, data.labels) != record["data_hash"]:
        raise UserError(f"the {record.get('split')} images of {full.name} differ from the evaluated ones (data hash "
                        f"mismatch with record {where}); pass the data set the evaluation used")
    _check_rows(tensors, record, data, subset, path)
    index, label = tensors["index"], tensors["label"]
    clean = data.images[index].float() / 255
    x_uint8 = tensors["x_uint8"].float() / 255
    _check_ball(tensors["x_adv"], clean, record, path, "images")
    _check_ball(x_uint8, clean, record, path, "8-bit images")
    judge = guarded(model.to(device).eval(), data, device)
    kept = (~misclassified(judge, tensors["x_adv"], label, record["batch_size"], device)).nonzero().flatten()
    if kept.numel():
        raise UserError(f"{path}: the model classifies {kept.numel()} of {index.numel()} stored images correctly "
                        f"(rows {_named(kept)}): they are not breaks of this model")
    marked = tensors["uint8_breaks"]
    breaks_8 = misclassified(judge, x_uint8, label, record["batch_size"], device)
    wrong = (marked & ~breaks_8).nonzero().flatten()
    if wrong.numel():
        raise UserError(f"{path}: {wrong.numel()} 8-bit images marked as breaks are classified correctly "
                        f"(rows {_named(wrong)})")
    stated = record["adversarial"].get("uint8_breaks")
    if stated != int(marked.sum()):
        raise UserError(f"{path} marks {int(marked.sum())} 8-bit breaks but record {where} says {stated}")
    summary = {"file": str(path), "record": str(where), "breaks": index.numel(), "uint8_breaks": int(marked.sum()),
               "format": FORMAT}
    if robustbench_pt is not None:
        x = robustbench_tensor(full, tensors)
        atomic_write(Path(robustbench_pt), lambda handle: torch.save(x, handle))
        log(f"RobustBench's external-evaluation tensor ({tuple(x.shape)}, float32: the {record.get('split')} images, "
            f"{index.numel()} of them adversarial) written to {robustbench_pt}")
    log(f"confirmed {index.numel()} adversarial images of {where}: each inside the {record['norm']} ε-ball "
        f"({record['eps']:g}) of its {full.name} {record.get('split')} image and [0, 1], each misclassified by the "
        f"model; {index.numel()} = the record's breaks; {int(marked.sum())} of them also as 8-bit images")
    return summary


def check_adversarial(
    path: str | Path, run: str | Path | None = None, *, which: str = "last", weights: str | None = None,
    model: str | None = None, data: str | None = None, data_root: str | Path | None = None, download: bool = False,
    stats: tuple[list[float], list[float]] | None = None, robustbench: str | None = None, dataset: str = "cifar10",
    threat_model: str = "Linf", model_dir: str | Path = "models", record: str | Path | None = None,
    robustbench_pt: str | Path | None = None, device: str = "auto", log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load the model as ``eval`` does (``run``, ``model`` with ``weights`` and ``data``, or ``robustbench``), and the
    split the file's evaluation used, then :func:`confirm_adversarial` (``robustbench_pt`` claimed first)."""
    routes = [name for name, value in (("a run folder", run), ("--model", model), ("--robustbench", robustbench))
              if value is not None]
    if len(routes) != 1:
        raise UserError("robustlab check needs the evaluated model: a run folder, --model FILE.py:factory --weights "
                        "FILE --data NAME, or --robustbench NAME" + (f"; got {' and '.join(routes)}" if routes else ""))
    if not str(path).endswith(SUFFIX):
        raise UserError(f"{path} is not an adversarial file (RECORD{SUFFIX}); pass the file eval --save-adversarial "
                        "wrote")
    if robustbench_pt is not None:
        claim(Path(robustbench_pt), TENSOR_FILE, "pass --robustbench-pt NEW.pt or move that file away")
    settings = read_adversarial(Path(path), tensors=False)[1]
    dev = resolve_device(device, key="--device")
    target = check_target(settings, run, which=which, weights=weights, model=model, data=data, data_root=data_root,
                          download=download, stats=stats, robustbench=robustbench, dataset=dataset,
                          threat_model=threat_model, model_dir=model_dir, device=dev, log=log)
    return confirm_adversarial(path, target.model, target.data, device=dev, record_path=record,
                               robustbench_pt=robustbench_pt, log=log)


def check_target(
    settings: dict[str, str], run: str | Path | None = None, *, which: str = "last", weights: str | None = None,
    model: str | None = None, data: str | None = None, data_root: str | Path | None = None, download: bool = False,
    stats: tuple[list[float], list[float]] | None = None, robustbench: str | None = None, dataset: str = "cifar10",
    threat_model: str = "Linf", model_dir: str | Path = "models", device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
) -> Target:
    """The evaluated model on the whole split the adversarial file's evaluation drew from (``settings``: the file's
    metadata; its ``split``), loaded by the loader ``eval`` used (:func:`~robustlab.evaluate.target.checkpoint_target`,
    :func:`~robustlab.evaluate.external.external_target`, :func:`~robustlab.evaluate.zoo.zoo_target`): the target's
    ``source_index`` is then every index of the split, and :func:`confirm_adversarial` draws the evaluated subset
    from it with the record's ``n_examples`` and ``seed``. The target's budget is its loader's default: the check
    judges with the record's ε and norm."""
    split = settings["split"]
    if run is not None:
        return checkpoint_target(run, split=split, which=which, weights=weights or "auto", device=device, log=log)
    if model is not None:
        if data is None:
            raise UserError("--model needs --data; e.g. --weights model.pt --data cifar10")
        return external_target(model, weights, data=data, data_root=data_root, download=download, split=split,
                               stats=stats, device=device, log=log)
    return zoo_target(str(robustbench), dataset=dataset, threat_model=threat_model, model_dir=model_dir, data=data,
                      data_root=data_root, split=split, download=download, device=device, log=log)
