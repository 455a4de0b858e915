"""Planted gradient-masking defenses: robustlab's automatic number next to an oracle and the reference AutoAttack.

Each defense of :mod:`robustlab.models.masking` wraps a PGD-AT model and hides its input from autograd the way a
real defense does (``--only`` names, in table order):

* ``none``: the base model itself, for reference;
* ``detach`` / ``data``: ``base(x.detach())`` / ``base(x.data)``;
* ``median``: a 3x3 median filter (reflect padding, torch) on ``x.detach()``;
* ``bitdepth``: ``base(torch.round(x * L) / L)``, ``L = 2**bits - 1`` (feature squeezing);
* ``jpeg``: JPEG-like DCT quantisation in torch (8x8 blocks, the JPEG luminance table at ``quality``, torch.round);
* ``meansparse``: a MeanSparse-like mask on the last feature map (``torch.where(|f - mu| < alpha * std, mu, f)``);
* ``nograd``: a 3x3 binomial blur run under ``torch.no_grad()`` in a submodule (``preprocess``);
* ``numpy``: a 3x3 median through numpy / scipy in a submodule (``preprocess``): robustlab gives the module it
  finds cut the identity backward on its own;
* ``numpy_marked``: the same, its ``preprocess`` marked by hand as docs/EVALUATION.md says
  (``robustlab.straight_through(preprocess, stand_in=<the torch median>)``);
* ``numpy_inline``: the same numpy round trip inline in the defense's own forward: robustlab cannot repair it
  (no submodule to give the identity backward), and its record's flag should name the module and the call.

Per defense, at each scale, on the same fixed test images (subset seed 0), L∞, batch = the whole set, seed 0, CPU:

1. clean accuracy (one forward);
2. the oracle: the full standard ``autoattack`` whose gradient attacks run on each of the defense's two
   hand-written differentiable twins (``twins()``: ``true``, the hiding step removed; ``identity``, the hidden
   component given the identity backward), Square and every verdict on the real defense
   (:func:`robustlab.evaluate.masking.crafted_on`); the lower of the two, and which twin gave it;
3. robustlab automatic, default settings: ``evaluate_model(defense, attacks=["fast"])`` with checks on (as
   ``robustlab eval``): the worst case, whether the straight-through surrogate was used, the flag codes;
4. robustlab automatic with ``attacks=["autoattack"]``: the worst case (which counts the ``straight-through``
   entry) and the ``autoattack`` entry alone (the reference algorithm on the real model);
5. the reference package ``pyautoattack`` 0.2.0 (``version='standard'``, seed 0) on the defense: robust accuracy
   (clean-correct and still correct at its output), or ``crash: Type: first line`` when it raises;
6. digits only: ``evaluate_model(attacks=["fast"], verify=20, adaptive=True)`` must return a record: ``ok`` or the
   exception's first line.

The acceptance (issue 32): on every defense whose hiding calls the surrogate replaces (:data:`REPAIR`: detach,
data, median, bitdepth, jpeg, meansparse, nograd), robustlab's automatic ``autoattack`` worst case is at most 1
point above the oracle (column ``auto AA - oracle``; a last line per scale says whether it holds and lists the
exceptions). Numpy round trips are outside those calls (the mode cannot see numpy): a second line gives their gaps
(module identity, marked by hand), and for the inline one the table shows the flag's message (shortened), naming
the module and the call. A second line lists defenses whose clean accuracy is more than
:data:`CLEAN_DROP` below the base's (a setting to revisit, not part of the acceptance).

Scales and settings (each says where it comes from):

* digits: the robustlab ``digits_pgd_at`` model (its config, trained here, cached under ``--out-dir``), sklearn
  digits test split, ``--digits-examples`` (default 180) fixed images, eps 0.1 (the model's training eps and
  ``benchmarks/eval_speed.py``'s digits L∞ budget);
* CIFAR-10: the study's ``cifar10s_pgd_at`` (configs/cifar10s_pgd_at.yaml; ``--data-root``, about 4 min of training
  on 2 CPU cores, cached under ``--out-dir``), channels-last as in the study, ``--cifar-examples`` (default 100)
  fixed test images, eps 8/255 (the standard CIFAR-10 L∞ budget and the model's training eps);
* ``bits``: digits 3 (ours; on all 360 digits test images the defense keeps 99.2% clean
  against the base's 98.9%); CIFAR-10 5 (the depth Xu, Evans & Qi, NDSS 2018, kept for CIFAR-10; not measured on
  this model when written: the clean column shows it);
* ``quality``: 75 at both scales (Guo et al., ICLR 2018, "Countering adversarial images using input
  transformations", JPEG at quality 75; digits: 99.2% clean on all 360 test images);
* ``alpha`` (MeanSparse): ours, calibrated per scale: the largest of :data:`ALPHA_GRID` whose accuracy on the
  statistics images stays within :data:`ALPHA_TOLERANCE` of the base's (MeanSparse's authors also choose the
  threshold against clean accuracy); ``mu`` and ``std`` from :data:`STATS_IMAGES` fixed training images (subset
  seed 0) of the same data set; the record keeps the sweep. On digits it picks 1.5, the grid's top (99.2% clean on
  all 360 test images, 90% of the feature entries masked; 2.0 would cost 2.2 points);
* ``median`` / ``numpy``: a 3x3 window (ours: the smallest median filter); on 8x8 digits it costs about 25-30
  points of clean accuracy (67.8% torch reflect, 73.3% scipy reflect on all 360 test images), kept because the
  benchmark is about gradients;
* ``nograd``: a 3x3 binomial blur ([1, 2, 1] x [1, 2, 1] / 16; ours: milder than a box blur, 96.1% on digits);
* ``detach`` / ``data``: both twins are the base itself (the identity is the true gradient), so the oracle runs
  only the ``true`` one (``IDENTITY_IS_TRUE``).

Caching: every (scale, defense, column) is one JSON under ``--out-dir``/cells, keyed by a hash of everything it
depends on (base weights, data size, eps, the defense's settings, the protocol's settings, robustlab's version), so
an interrupted run resumes and a finished cell is never recomputed (delete the file to redo one, e.g. after a change
to robustlab's surrogate). One small record per (scale, defense) goes to ``--results``, and ``table.md`` is written
from the records there; ``--report`` only prints and writes the table.

    python benchmarks/masking_zoo.py --part digits
    python benchmarks/masking_zoo.py --part digits --only bitdepth --only numpy_inline --digits-examples 12
    nohup nice -n 5 python benchmarks/masking_zoo.py --part cifar --data-root ../shared/data/cifar10-jpeg.tar.gz &
    python benchmarks/masking_zoo.py --report
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import robustlab
from robustlab.atomic import atomic_write_text
from robustlab.config import load_config
from robustlab.data import ImageDataset, fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.masking import crafted_on
from robustlab.evaluate.runner import run_suite, summarise
from robustlab.evaluate.state import model_hash
from robustlab.evaluate.suite import build_attack, build_suite
from robustlab.models.masking import (
    BitDepth,
    BlurredInput,
    DataInput,
    DetachedInput,
    JpegInput,
    MeanSparse,
    MedianInput,
    NumpyMedian,
    NumpyMedianInline,
    NumpyMedianMarked,
)
from robustlab.runs.model import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import data_overrides, trained  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """One scale: the base model's config, the budget and the per-scale defense settings (module docs)."""

    name: str
    config: str
    eps: float
    bits: int
    quality: int
    channels_last: bool
    verify_adaptive: bool


SCALES = {
    "digits": Scale("digits", "digits_pgd_at", 0.1, bits=3, quality=75, channels_last=False, verify_adaptive=True),
    "cifar": Scale("cifar", "cifar10s_pgd_at", 8 / 255, bits=5, quality=75, channels_last=True,
                   verify_adaptive=False),
}
DEFENSES = ("none", "detach", "data", "median", "bitdepth", "jpeg", "meansparse", "nograd", "numpy", "numpy_marked",
            "numpy_inline")
# What repairs each defense. The acceptance (auto AA - oracle <= 1 point) is over the calls the surrogate replaces
# (issue 32, item 1); a numpy round trip is outside them by the issue's own terms (the mode cannot see numpy): in a
# submodule robustlab gives it the identity backward on its own, marked by hand it gets the author's stand-in, and
# inline in the forward it is named, not repaired.
REPAIR = {"none": "nothing to repair", "detach": "call", "data": "call", "median": "call", "bitdepth": "call",
          "jpeg": "call", "meansparse": "call", "nograd": "call", "numpy": "module identity",
          "numpy_marked": "marked by hand", "numpy_inline": "not repairable"}
STATS_IMAGES = 300  # MeanSparse statistics: this many fixed training images (subset seed 0); ours
ALPHA_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # MeanSparse thresholds tried, in feature standard deviations; ours
ALPHA_TOLERANCE = 0.02  # the calibration keeps accuracy on the statistics images within 2 points of the base's
ACCEPT_POINTS = 1.0  # robustlab's automatic autoattack at most this many points above the oracle
ROUNDING_POINTS = 1e-4  # accuracies stored as float32 ratios (0.16 is 0.15999999642): 17 - 16 of 100 is 1.0000005
CLEAN_DROP = 3.0  # points of clean accuracy below the base's that the note line lists
NORM = "linf"
SEED = 0
VERIFY = 20


def protocol_settings(protocol: str) -> str:
    """A short hash of a protocol's member settings, so a retuned protocol reruns its cells."""
    spec = build_attack(protocol, eps=0.0, norm=NORM, step_size=0.0)
    return hashlib.sha256(json.dumps(spec.describe(), sort_keys=True, default=str).encode()).hexdigest()[:10]


def _overrides(scale: Scale, args: argparse.Namespace) -> list[str]:
    return data_overrides(scale.name, args.data_root)


def scale_data(scale: Scale, args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset]:
    """(the fixed test images, the fixed training images for MeanSparse's statistics) of ``scale``."""
    cfg = load_config(scale.config, _overrides(scale, args))
    n = args.digits_examples if scale.name == "digits" else args.cifar_examples
    test = load_dataset(cfg.data.name, "test", root=cfg.data.root, **cfg.data.options)
    train_split = load_dataset(cfg.data.name, "train", root=cfg.data.root, **cfg.data.options)
    test = fixed_subset(test, n, seed=0) if n < len(test.labels) else test
    return test, fixed_subset(train_split, min(STATS_IMAGES, len(train_split.labels)), seed=0)


def base_model(scale: Scale, args: argparse.Namespace) -> tuple[nn.Module, Path]:
    """The scale's PGD-AT model, trained under ``--out-dir``/models when it is not there yet."""
    run = trained(scale.config, Path(args.out_dir) / "models", _overrides(scale, args))
    return load_model(run, device="cpu")[0], run


def _floats(data: ImageDataset) -> torch.Tensor:
    return data.images.float() / 255


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return hits / max(len(y), 1)


def calibrate_alpha(base: nn.Module, stats: ImageDataset) -> tuple[MeanSparse, dict[str, Any]]:
    """MeanSparse around ``base`` with the largest alpha of :data:`ALPHA_GRID` that keeps the accuracy on ``stats``
    within :data:`ALPHA_TOLERANCE` of the base's (the smallest alpha when none does); the sweep for the record."""
    x, y = _floats(stats), stats.labels
    mean, std = MeanSparse.statistics(base, x)
    reference = accuracy(base, x, y)
    sweep = {str(a): accuracy(MeanSparse(base, mean, std, a), x, y) for a in ALPHA_GRID}
    fitting = [a for a in ALPHA_GRID if sweep[str(a)] >= reference - ALPHA_TOLERANCE]
    alpha = max(fitting) if fitting else ALPHA_GRID[0]
    return MeanSparse(base, mean, std, alpha), {"alpha": alpha, "stats_images": len(y), "base_acc_on_stats": reference,
                                                "acc_on_stats": sweep, "tolerance": ALPHA_TOLERANCE}


def build_defense(name: str, base: nn.Module, scale: Scale, stats: ImageDataset) -> tuple[nn.Module, dict[str, Any]]:
    """The defense ``name`` around ``base`` at ``scale`` and its settings."""
    simple: dict[str, Callable[[], nn.Module]] = {
        "none": lambda: base, "detach": lambda: DetachedInput(base), "data": lambda: DataInput(base),
        "median": lambda: MedianInput(base), "bitdepth": lambda: BitDepth(base, bits=scale.bits),
        "jpeg": lambda: JpegInput(base, quality=scale.quality), "nograd": lambda: BlurredInput(base),
        "numpy": lambda: NumpyMedian(base), "numpy_marked": lambda: NumpyMedianMarked(base),
        "numpy_inline": lambda: NumpyMedianInline(base),
    }
    if name == "meansparse":
        defense, settings = calibrate_alpha(base, stats)
    else:
        defense = simple[name]()
        settings = defense.settings() if hasattr(defense, "settings") and name != "none" else {}
    defense = defense.eval()
    if scale.channels_last:
        defense = defense.to(memory_format=torch.channels_last)
    return defense, settings


def twins_of(defense: nn.Module) -> dict[str, nn.Module]:
    """The oracle's gradient sources: the defense's twins, or the model itself (the ``none`` row)."""
    if not hasattr(defense, "twins"):
        return {"true": defense}
    twins = defense.twins()
    return {"true": twins["true"]} if defense.IDENTITY_IS_TRUE else twins


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


# --- the columns: each returns a JSON-able dict (its wall time is added by Cells) ---------------------------------

def clean_cell(defense: nn.Module, data: ImageDataset) -> dict[str, Any]:
    return {"clean_acc": accuracy(defense, _floats(data), data.labels)}


def oracle_cell(defense: nn.Module, twin: nn.Module, data: ImageDataset, eps: float) -> dict[str, Any]:
    """The full standard autoattack with its gradient attacks crafted on ``twin``, judged on ``defense``."""
    specs = crafted_on(build_suite(["autoattack"], eps=eps, norm=NORM, step_size=eps / 4), twin)
    state = run_suite(defense, data, specs, eps=eps, norm=NORM, batch_size=len(data.labels),
                      device=torch.device("cpu"), seed=SEED)
    result = summarise(state, specs)
    entry = result["attacks"]["autoattack"]
    return {"robust_acc": result["robust_acc"], "clean_acc": result["clean_acc"],
            "robust_acc_after": entry.get("robust_acc_after"), "attack_time_s": entry["time_s"],
            "flags": result["flags"]}


def _summary(record: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """The numbers of an evaluate_model record this benchmark keeps (no per-sample verdicts)."""
    block = record.get("straight_through") or {}
    verify = {k: v for k, v in (record.get("verify") or {}).items() if k not in ("indices", "broken_indices")}
    return {
        "robust_acc": record["robust_acc"], "clean_acc": record["clean_acc"],
        "straight_through_used": bool(block.get("used")),
        "entries": {name: {"robust_acc": a["robust_acc"], "time_s": a["time_s"],
                           "robust_acc_after": a.get("robust_acc_after")} for name, a in record["attacks"].items()},
        "flags": record["flags"], "straight_through": block, "verify": verify or None,
        "wall_time_s": record.get("wall_time_s"), "log": lines[-40:],
    }


def auto_cell(defense: nn.Module, data: ImageDataset, attacks: list[str], eps: float, channels_last: bool,
              **extra: Any) -> dict[str, Any]:
    """robustlab's automatic evaluation (checks on, as ``robustlab eval``)."""
    lines: list[str] = []
    record = evaluate_model(defense, data, attacks=attacks, eps=eps, norm=NORM, batch_size=len(data.labels),
                            device="cpu", seed=SEED, channels_last=channels_last, log=lines.append, **extra)
    return _summary(record, lines)


def verify_adaptive_cell(defense: nn.Module, data: ImageDataset, eps: float, channels_last: bool) -> dict[str, Any]:
    """``fast`` with ``verify=20`` and ``adaptive=True``: ``ok`` and its numbers, or the exception's first line."""
    try:
        out = auto_cell(defense, data, ["fast"], eps, channels_last, verify=VERIFY, adaptive=True)
    except Exception as exc:  # noqa: BLE001 - the column reports any failure
        return {"status": first_line(exc), "traceback": traceback.format_exc().splitlines()[-12:]}
    return {"status": "ok", **out}


def reference_cell(defense: nn.Module, data: ImageDataset, eps: float) -> dict[str, Any]:
    """pyautoattack's standard AutoAttack on ``defense``: robust accuracy over all samples (clean-correct and still
    correct at its output), or the crash."""
    from pyautoattack import AutoAttack

    x, y = _floats(data), data.labels
    defense.eval()
    with torch.no_grad():
        clean = defense(x).argmax(1) == y
    adversary = AutoAttack(defense, norm="Linf", eps=eps, version="standard", device="cpu", seed=SEED)
    run = adversary.run_standard_evaluation
    size = "batch_size" if "batch_size" in inspect.signature(run).parameters else "bs"
    try:
        out = run(x, y, **{size: len(y)})
    except Exception as exc:  # noqa: BLE001 - the column reports any failure
        return {"robust_acc": None, "crash": first_line(exc)}
    x_adv = out[0] if isinstance(out, tuple) else out  # 0.2.0 returns (x_adv, y_adv)
    with torch.no_grad():
        robust = clean & (defense(x_adv).argmax(1) == y)
    return {"robust_acc": robust.float().mean().item(), "clean_acc": clean.float().mean().item(),
            "max_linf": float((x_adv - x).abs().amax()) if len(y) else 0.0, "returned": type(out).__name__}


class Cells:
    """One JSON per (scale, defense, column) under ``folder``, keyed by a hash of what the cell depends on."""

    def __init__(self, folder: Path, key: dict[str, Any], label: str) -> None:
        self.folder, self.key, self.label = folder, key, label

    def get(self, column: str, compute: Callable[[], dict[str, Any]], **key: Any) -> dict[str, Any]:
        full = {**self.key, **key, "column": column}
        digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = self.folder / f"{column}_{digest}.json"
        if path.is_file():
            return json.loads(path.read_text())
        print(f"[{self.label}] {column} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        value = compute()
        value["time_s"] = round(time.perf_counter() - started, 2)
        value["key"] = full
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(value, indent=1) + "\n")
        print(f"[{self.label}] {column}: {value['time_s']:.1f} s", file=sys.stderr, flush=True)
        return value


def lean(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell without its cache key and log lines (they stay in the cell's file under ``--out-dir``)."""
    return {k: v for k, v in cell.items() if k not in ("key", "log", "traceback")}


def evaluate_defense(name: str, defense: nn.Module, settings: dict[str, Any], scale: Scale, data: ImageDataset,
                     base_hash: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every column of one defense at one scale (cached cell by cell); its record, written to ``--results``."""
    n, eps = len(data.labels), scale.eps
    label = f"{scale.name}/{name}"
    cells = Cells(Path(args.out_dir) / "cells" / f"{scale.name}_n{n}" / name,
                  {"scale": scale.name, "defense": name, "settings": settings, "eps": eps, "n": n, "base": base_hash,
                   "robustlab": robustlab.__version__}, label)
    aa, fast = protocol_settings("autoattack"), protocol_settings("fast")
    clean = cells.get("clean", lambda: clean_cell(defense, data))
    per_twin = {kind: cells.get(f"oracle_{kind}", lambda t=twin: oracle_cell(defense, t, data, eps), protocol=aa)
                for kind, twin in twins_of(defense).items()}
    best = min(per_twin, key=lambda k: (per_twin[k]["robust_acc"], k != "identity"))
    auto_fast = cells.get("auto_fast", lambda: auto_cell(defense, data, ["fast"], eps, scale.channels_last),
                          protocol=fast)
    auto_aa = cells.get("auto_autoattack",
                        lambda: auto_cell(defense, data, ["autoattack"], eps, scale.channels_last), protocol=aa)
    reference = cells.get("pyautoattack", lambda: reference_cell(defense, data, eps))
    verify = (cells.get("verify_adaptive", lambda: verify_adaptive_cell(defense, data, eps, scale.channels_last),
                        protocol=[fast, aa]) if scale.verify_adaptive else None)
    oracle = per_twin[best]["robust_acc"]
    record = {
        "scale": scale.name, "defense": name, "dataset": data.name, "n_examples": n, "eps": eps, "norm": NORM,
        "seed": SEED, "subset_seed": 0, "batch_size": n, "step_size": eps / 4, "base_run": str(run),
        "base_hash": base_hash[:16], "defense_class": type(defense).__name__, "settings": settings,
        "protocol_settings": {"autoattack": aa, "fast": fast}, "robustlab_version": robustlab.__version__,
        "repairable": REPAIR[name] in ("call", "nothing to repair"), "repair": REPAIR[name],
        "clean": lean(clean),
        "oracle": {"robust_acc": oracle, "twin": best, "per_twin": {k: lean(v) for k, v in per_twin.items()}},
        "auto_fast": lean(auto_fast), "auto_autoattack": lean(auto_aa), "pyautoattack": lean(reference),
        "verify_adaptive": lean(verify) if verify else None, "threads": torch.get_num_threads(),
        "auto_aa_minus_oracle_points": 100 * (auto_aa["robust_acc"] - oracle),
        "time_s": {"clean": clean["time_s"], **{f"oracle_{k}": v["time_s"] for k, v in per_twin.items()},
                   "auto_fast": auto_fast["time_s"], "auto_autoattack": auto_aa["time_s"],
                   "pyautoattack": reference["time_s"], "verify_adaptive": verify["time_s"] if verify else None},
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / f"{scale.name}_{name}_n{n}.json", json.dumps(record, indent=1) + "\n")
    return record


# --- the table -----------------------------------------------------------------------------------------------------

HEADER = ("| defense | settings | clean | oracle (twin) | auto fast (ST) | auto AA worst | without ST (entry) "
          "| auto AA - oracle "
          "| pyautoattack | verify+adaptive | flags | time s: oracle / fast / AA / ref / v+a |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def shorten(message: str, limit: int = 320) -> str:
    """The part of an unrepaired-masking flag's message that says what was not repaired, shortened."""
    start = message.find("no straight-through surrogate repairs it")
    text = message[start:] if start >= 0 else message
    end = text.find("; mark ")
    end = text.find(": mark ") if end < 0 else end
    text = text[:end] if end > 0 else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unrepaired_note(auto: dict[str, Any]) -> str:
    """The shortened flag naming the module and call robustlab could not repair; empty when it repaired or found
    nothing."""
    block = auto.get("straight_through") or {}
    if block.get("used"):
        return ""
    flags = [f for f in auto["flags"] if f["code"] in ("masking_unrepaired", "zero_gradients")]
    if not flags:
        return ""
    text = shorten(flags[0]["message"])
    calls = [f"{u['call']} in {u['module']}" for u in block.get("unrepaired", [])]
    missing = [c for c in calls if c not in text]
    return f"{flags[0]['code']}: {text}" + (f" [unrepaired: {'; '.join(missing)}]" if missing else "")


def clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def row(r: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k in ("bits", "quality", "alpha")) or "–"
    fast, aa, ref, va = r["auto_fast"], r["auto_autoattack"], r["pyautoattack"], r["verify_adaptive"]
    alone = {k: v["robust_acc"] for k, v in aa["entries"].items() if k != "straight-through"}
    without = min(alone, key=alone.__getitem__) if alone else None  # what robustlab printed before the surrogate
    st = "ST" if fast["straight_through_used"] else "no ST"
    codes = sorted({f["code"] for f in aa["flags"]} | {f["code"] for f in fast["flags"]})
    note = unrepaired_note(aa) or unrepaired_note(fast)
    flags = (", ".join(codes) or "none") + (f". {note}" if note else "")
    reference = (pct(ref["robust_acc"]) if ref.get("robust_acc") is not None
                 else f"crash: {clip(ref.get('crash', '?'))}")
    t = r["time_s"]
    oracle_time = sum(v for k, v in t.items() if k.startswith("oracle_"))
    times = (f"{oracle_time:.0f} / {t['auto_fast']:.0f} / {t['auto_autoattack']:.0f} / {t['pyautoattack']:.0f} / "
             + (f"{t['verify_adaptive']:.0f}" if t.get("verify_adaptive") is not None else "–"))
    return (f"| {r['defense']} | {settings} | {pct(r['clean']['clean_acc'])} | "
            f"{pct(r['oracle']['robust_acc'])} ({r['oracle']['twin']}) | {pct(fast['robust_acc'])} ({st}) | "
            f"{pct(aa['robust_acc'])} | {pct(alone.get(without))} ({without or '–'}) | "
            f"{r['auto_aa_minus_oracle_points']:+.2f} | {reference} | "
            f"{clip(va['status']) if va else '–'} | {flags} | {times} |")


def verdict(records: list[dict[str, Any]]) -> list[str]:
    """The acceptance line (and the clean-accuracy note) for one scale's records."""
    checked = [r for r in records if REPAIR.get(r["defense"]) in ("call", "nothing to repair")]
    late = [f"{r['defense']} ({r['auto_aa_minus_oracle_points']:+.2f})" for r in checked
            if r["auto_aa_minus_oracle_points"] > ACCEPT_POINTS + ROUNDING_POINTS]
    holds = "yes" if checked and not late else "no" if late else "nothing checked"
    beyond = [f"{r['defense']} ({REPAIR.get(r['defense'])}: {r['auto_aa_minus_oracle_points']:+.2f})"
              for r in records if r not in checked]
    lines = [f"acceptance (auto AA - oracle <= {ACCEPT_POINTS:g} point on every defense whose hiding calls the "
             f"surrogate replaces, {len(checked)} checked): {holds}"
             + (f"; exceptions: {', '.join(late)}" if late else ""),
             f"beyond those calls (auto AA - oracle in points): {', '.join(beyond) or 'none'}"]
    base = next((r["clean"]["clean_acc"] for r in records if r["defense"] == "none"), None)
    if base is not None:
        low = [f"{r['defense']} ({100 * r['clean']['clean_acc']:.1f})" for r in records
               if 100 * (base - r["clean"]["clean_acc"]) > CLEAN_DROP]
        lines.append(f"clean accuracy more than {CLEAN_DROP:g} points below the base's ({100 * base:.1f}): "
                     + (", ".join(low) or "none"))
    return lines


def table(records: list[dict[str, Any]]) -> str:
    """One table per (scale, n), defenses in :data:`DEFENSES` order, each followed by its acceptance lines."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["scale"], r["n_examples"]), []).append(r)
    parts = []
    for (scale, n), group in sorted(groups.items()):
        group.sort(key=lambda r: DEFENSES.index(r["defense"]) if r["defense"] in DEFENSES else len(DEFENSES))
        eps = group[0]["eps"]
        parts += [f"### {scale}: n={n}, L∞ eps={eps:.4g}", "", HEADER, *map(row, group), "", *verdict(group), ""]
    return "\n".join(parts) if parts else "no records yet\n"


def report(results: Path) -> str:
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*_n*.json"))]
    text = table(records)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "table.md", text + ("" if text.endswith("\n") else "\n"))
    return text


def run_scale(scale: Scale, args: argparse.Namespace) -> None:
    names = [d for d in DEFENSES if not args.only or d in args.only]
    data, stats = scale_data(scale, args)
    base, run = base_model(scale, args)
    base_hash = model_hash(base)
    print(f"\n### {scale.name}: n={len(data.labels)}, L∞ eps={scale.eps:.4g}\n\n{HEADER}", flush=True)
    records = []
    for name in names:
        defense, settings = build_defense(name, base, scale, stats)
        record = evaluate_defense(name, defense, settings, scale, data, base_hash, run, args)
        records.append(record)
        print(row(record), flush=True)
    print("", *verdict(records), sep="\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["digits", "cifar", "all"], default="digits")
    parser.add_argument("--digits-examples", type=int, default=180, help="fixed test subset (seed 0); 360 = all")
    parser.add_argument("--cifar-examples", type=int, default=100, help="fixed test subset (seed 0)")
    parser.add_argument("--data-root", default=None,
                        help="the CIFAR-10 archive, e.g. ../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--out-dir", default="runs/masking_zoo", help="trained models and the per-cell cache")
    parser.add_argument("--results", default="docs/masking_zoo", help="one record per (scale, defense) and table.md")
    parser.add_argument("--report", action="store_true", help="print and write the table of the records; run nothing")
    parser.add_argument("--only", action="append", choices=DEFENSES, default=None,
                        help="run only this defense (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        print(report(Path(args.results)))
        return
    for part in ("digits", "cifar"):
        if args.part in (part, "all"):
            run_scale(SCALES[part], args)
    report(Path(args.results))


if __name__ == "__main__":
    main()
