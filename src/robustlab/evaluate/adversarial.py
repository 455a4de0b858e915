"""The adversarial file of a record (``eval --save-adversarial``): every break the worst case counts, checkable.

``RECORD.adv.safetensors`` beside ``RECORD.json`` holds, for every sample the record counts as broken (clean-correct
and broken by some attack of the suite, or by the verification), one row (docs/EVALUATION.md, "Verifiable
breaks", is the reference for readers):

* tensors: ``x_adv`` float32 (N, C, H, W), the point the evaluation judged (:mod:`robustlab.evaluate.breaks`);
  ``x_uint8`` uint8 (N, C, H, W), its 8-bit copy (below); ``uint8_breaks`` bool (N,), whether that copy is still
  misclassified; ``index`` int64 (N,), the sample's position in the evaluated set (the record's per-sample order);
  ``source_index`` int64 (N,), its index in the data set's split; ``label`` int64 (N,), its true class;
* metadata: ``format`` (:data:`FORMAT`), ``record`` (the record's file name), ``record_digest``
  (:func:`record_digest`), ``model_sha256`` (:func:`robustlab.evaluate.state.model_hash` of the evaluated model,
  before robustlab's wrappers), ``dataset``, ``split``, ``n_examples``, ``seed`` (the subset's), ``data_hash``,
  ``eps``, ``norm``, ``tolerance``, ``breaks`` and ``attacks`` (a JSON list: the attack that made each row).

The record names the file back: ``adversarial`` = ``{file, sha256, breaks, uint8_breaks, format}``, where
``sha256`` is the file's bytes. The two hashes cannot both cover whole files (each would contain the other), so
the file holds a digest of what the record *says* (:func:`record_digest`: the per-sample verdicts, the
verification's breaks and the settings that fix the samples and the threat model), and the record the hash of the
whole file.

8-bit copies (robustlab's images are always uint8, so "where the data are 8-bit" is every data set): the evaluated
point is stored as float32 (what was judged; the count ``robustlab check`` compares with the record). Its copy is
rounded to the nearest multiple of 1/255 and then put back inside the ε-ball on the 8-bit grid: under L∞ clamped to
the clean pixel ± ⌊255 ε⌋; under L2, when rounding left the ball, every pixel rounded toward the clean pixel
instead (each offset shrinks, so the norm does). Rounding can undo a break, so the copy is judged again by the
model and ``uint8_breaks`` says which still break; the record gives their number. Deviation: no search for an
8-bit point that breaks where the rounded one does not.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from robustlab.atomic import atomic_write_bytes
from robustlab.attacks._common import eval_mode
from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.evaluate.breaks import Break
from robustlab.evaluate.failures import forward_failures
from robustlab.evaluate.guard import guard_model
from robustlab.evaluate.runner import TOLERANCE
from robustlab.evaluate.state import model_hash
from robustlab.runs.record import ROBUST

FORMAT = "robustlab-adversarial/1"
SUFFIX = ".adv.safetensors"
PROBE = 16  # the probe images robustlab's wrappers are fitted on, as in evaluate_model
TENSORS = {"x_adv": torch.float32, "x_uint8": torch.uint8, "uint8_breaks": torch.bool, "index": torch.int64,
           "source_index": torch.int64, "label": torch.int64}
META_KEYS = ("format", "record", "record_digest", "model_sha256", "dataset", "split", "n_examples", "seed",
             "data_hash", "eps", "norm", "tolerance", "breaks", "attacks")
DIGEST_KEYS = ("dataset", "split", "n_examples", "data_hash", "seed", "eps", "norm", "per_sample")


def adversarial_path(out: Path) -> Path:
    """The adversarial file beside the record ``out``: ``RECORD.adv.safetensors``."""
    return out.with_suffix(SUFFIX)


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a record's verdicts and the settings that fix its samples and threat model (sorted-key JSON of
    :data:`DIGEST_KEYS` and the verification's broken indices)."""
    content = {key: record.get(key) for key in DIGEST_KEYS}
    content["verify_broken"] = (record.get("verify") or {}).get("broken_indices", [])
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def broken_indices(record: dict[str, Any]) -> list[int]:
    """The samples the record counts as broken, in order: clean-correct and broken by an attack, or by the
    verification."""
    per_sample = record["per_sample"]
    broken = {i for i, ok in enumerate(per_sample["clean"]) if ok == 1
              and any(verdicts[i] != ROBUST for verdicts in per_sample["broken_by"].values())}
    return sorted(broken | set((record.get("verify") or {}).get("broken_indices", [])))


def to_uint8(x_adv: torch.Tensor, clean: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The 8-bit copy of ``x_adv`` (in [0, 1]) inside the ε-ball of the uint8 ``clean`` images (module docs)."""
    target, c = x_adv.double() * 255, clean.double()
    q = target.round().clamp(0, 255)
    if norm == "linf":
        k = math.floor(255 * eps + 1e-6)  # 8/255 * 255 may fall a hair below 8
        q = torch.minimum(torch.maximum(q, c - k), c + k)
    else:
        outside = (q - c).flatten(1).norm(dim=1) > 255 * eps
        q = torch.where(outside.view(-1, 1, 1, 1), (c + (target - c).trunc()).clamp(0, 255), q)
    return q.to(torch.uint8)


def misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """Per row of ``x`` (on the CPU): the model's prediction differs from ``y``; forwarded in batches of
    ``batch_size`` in row order, each batch its own copy."""
    found = []
    with eval_mode(model), torch.no_grad(), forward_failures(model, "on the adversarial images"):
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size].to(device).clone())
            found.append(logits.argmax(1).cpu() != y[start:start + batch_size])
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.bool)


def guarded(model: nn.Module, data: ImageDataset, device: torch.device) -> nn.Module:
    """``model`` with the wrappers the evaluation put around it (:func:`~robustlab.evaluate.guard.guard_model`, on
    the same probe images), its warnings silenced (the record carries them)."""
    probe = data.images[:PROBE].to(device).float() / 255
    return guard_model(model, probe, log=lambda _: None)[0]


def write_adversarial(
    path: Path, record: dict[str, Any], breaks: list[Break], model: nn.Module, data: ImageDataset,
    source_index: torch.Tensor, *, device: torch.device, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the adversarial file of ``record`` (whose ``breaks`` the evaluation kept) to ``path`` atomically;
    returns the record's ``adversarial`` block. ``data``: the evaluated images, ``source_index[i]`` the split index
    of ``data``'s row ``i``; ``model``: the evaluated model, before robustlab's wrappers."""
    wanted = broken_indices(record)
    kept = {b.index: b for b in breaks}
    if sorted(kept) != wanted or len(kept) != len(breaks):
        raise RuntimeError(f"the evaluation kept {len(breaks)} adversarial points for {len(wanted)} breaks")
    index = torch.tensor(wanted, dtype=torch.long)
    shape = (len(wanted), *data.image_shape)
    x_adv = torch.stack([kept[i].x for i in wanted]) if wanted else torch.zeros(shape)
    label = data.labels[index]
    x_uint8 = to_uint8(x_adv, data.images[index], record["eps"], record["norm"])
    judge = guarded(model, data, device)
    uint8_breaks = misclassified(judge, x_uint8.float() / 255, label, record["batch_size"], device)
    again = int(misclassified(judge, x_adv, label, record["batch_size"], device).sum())
    if again < len(wanted):
        log(f"warning: {len(wanted) - again} of {len(wanted)} kept adversarial images are not misclassified when "
            "forwarded again in other batches (a margin below float rounding, or a batch-dependent or randomized "
            "model); robustlab check will refuse the file")
    tensors = {"x_adv": x_adv.contiguous(), "x_uint8": x_uint8.contiguous(), "uint8_breaks": uint8_breaks,
               "index": index, "source_index": source_index[index].to(torch.long), "label": label.to(torch.long)}
    meta = {
        "format": FORMAT, "record": path.name.removesuffix(SUFFIX) + ".json", "record_digest": record_digest(record),
        "model_sha256": model_hash(model), "dataset": str(record.get("dataset")), "split": str(record.get("split")),
        "n_examples": str(record["n_examples"]), "seed": str(record["seed"]), "data_hash": record["data_hash"],
        "eps": repr(float(record["eps"])), "norm": record["norm"], "tolerance": repr(TOLERANCE),
        "breaks": str(len(wanted)), "attacks": json.dumps([kept[i].attack for i in wanted]),
    }
    content = save(tensors, metadata=meta)
    atomic_write_bytes(path, content)
    return {"file": path.name, "sha256": hashlib.sha256(content).hexdigest(), "breaks": len(wanted),
            "uint8_breaks": int(uint8_breaks.sum()), "format": FORMAT}


def read_adversarial(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (none unless ``tensors``) and metadata of an adversarial file, or a one-line UserError naming what
    is wrong with it."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        found = load_file(str(path)) if tensors else {}
    except FileNotFoundError:
        raise UserError(f"adversarial file {path} not found; pass the RECORD.adv.safetensors that robustlab eval "
                        "--save-adversarial wrote") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is not a safetensors file ({type(exc).__name__}); pass the RECORD.adv.safetensors "
                        "that robustlab eval --save-adversarial wrote") from None
    if meta.get("format") != FORMAT or any(k not in meta for k in META_KEYS):
        raise UserError(f"{path} is not a robustlab adversarial file (metadata format {meta.get('format')!r}, "
                        f"expected {FORMAT!r} with {', '.join(META_KEYS)})")
    if not tensors:
        return found, meta
    for name, dtype in TENSORS.items():
        if name not in found or found[name].dtype != dtype:
            raise UserError(f"adversarial file {path} lacks a {str(dtype).removeprefix('torch.')} tensor {name!r}")
    n = found["index"].shape[0]
    if any(t.shape[0] != n or (t.ndim != (4 if k.startswith("x_") else 1)) for k, t in found.items()) or (
            found["x_adv"].shape != found["x_uint8"].shape):
        raise UserError(f"adversarial file {path} has tensors of inconsistent shapes; it was cut or edited")
    return found, meta


def is_adversarial_file(path: Path) -> bool:
    """A safetensors file whose metadata names :data:`FORMAT` (what robustlab may replace at the adversarial path)."""
    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
