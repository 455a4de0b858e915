"""The audit record: per attack the share of binarized tasks it solved, its exact 95% interval and the verdict.

On every task whose setup succeeded an adversarial example is known to exist (the boundary point), so the share an
attack solves is its *test score* (the reference's ASR, ``format_result`` in ``active_tests/
decision_boundary_binarization.py`` lines 1355-1402, taken over the tasks that were set up). The reference prints it
with no threshold; robustlab calls an attack passing when it solved at least :data:`PASS_PERCENT` % of the tasks
(docs/EVALUATION.md, "The binarization test"), and gives the Clopper-Pearson interval so that a pass on few images is
read as the weak evidence it is. ``any`` is a task solved by any entry: the per-sample worst case ``robustlab eval``
would count with the same attacks. ``random`` is the random-sampling baseline (the reference's random ASR).
"""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Any

import robustlab
from robustlab.errors import UserError
from robustlab.evaluate.intervals import binomial_interval
from robustlab.evaluate.output import Outputs, state_path
from robustlab.ownership import Kind, json_object, json_with
from robustlab.runs.record import eps_label

TEST = "binarization test (Zimmermann, Brendel, Tramer & Carlini, NeurIPS 2022)"
PASS_PERCENT = 95  # an attack passes when it solves at least this share of the tasks (robustlab's threshold)
SETUP_OK = "ok"


def looks_like_audit(path: Path) -> bool:
    """A JSON object naming the test, with an ``attacks`` mapping and a ``per_image`` list, as audit records have."""
    data = json_object(path)
    return (data is not None and data.get("audit") == TEST and isinstance(data.get("attacks"), dict)
            and isinstance(data.get("per_image"), list))


def read_audit(path: Path) -> dict[str, Any]:
    """The audit record at ``path`` (a study's copy), or one UserError line when it is not a sound one: what
    :func:`looks_like_audit` asks, an integer ``set_up`` and an integer ``found`` per attack."""
    data = json_object(path) if looks_like_audit(path) else None
    if data is None or type(data.get("set_up")) is not int or not all(
            isinstance(a, dict) and type(a.get("found")) is int for a in data["attacks"].values()):
        raise UserError(f"audit record {path} is damaged or not a robustlab audit record; delete it to redo the audit "
                        "step")
    return data


AUDIT = Outputs(Kind("a robustlab audit record", looks_like_audit),
                ((state_path, Kind("a robustlab audit state", json_with("fingerprint", "images"))),), "audit record")


def share(found: int, tasks: int) -> dict[str, Any]:
    """``found`` of ``tasks``: the share, its Clopper-Pearson 95% interval and whether it passes."""
    lo, hi = binomial_interval(found, tasks)
    return {"found": found, "tasks": tasks, "share": found / tasks if tasks else None, "ci95": [lo, hi],
            "pass": tasks > 0 and 100 * found >= PASS_PERCENT * tasks}


def summarise(images: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's summary of per-image results (:data:`robustlab.evaluate.audit.state.IMAGE_KEYS`)."""
    built = [im for im in images if im["setup"] == SETUP_OK]
    entries = list(dict.fromkeys(name for im in built for name in im["found"]))
    attacks = {name: {**share(sum(im["found"].get(name, False) for im in built), len(built)),
                      "time_s": round(sum(im["attack_seconds"].get(name, 0.0) for im in built), 3)}
               for name in entries}
    kinds = list(dict.fromkeys(kind for im in built for kind in im["random"]))
    flags: dict[str, dict[str, Any]] = {}
    for im in built:
        for code, message in im["flags"].items():
            flags.setdefault(code, {"code": code, "tasks": 0, "example": message})["tasks"] += 1
    return {
        "images": len(images), "set_up": len(built),
        "setup_failed": dict(Counter(im["setup"] for im in images if im["setup"] != SETUP_OK)),
        "attacks": attacks,
        "any": share(sum(any(im["found"].values()) for im in built), len(built)),
        "random": {**{k: v for k, v in share(sum(any(im["random"].values()) for im in built), len(built)).items()
                      if k != "pass"},  # a baseline, not an attack: nothing to pass
                   "by_kind": {kind: sum(im["random"].get(kind, 0) > 0 for im in built) for kind in kinds}},
        "flags": list(flags.values()),
    }


def make_audit_record(images: list[dict[str, Any]], *, settings: dict[str, Any],
                      model_info: dict[str, Any]) -> dict[str, Any]:
    """The audit record: the test, the model's description, the settings, the summary and every image's result."""
    return {
        "audit": TEST, "robustlab_version": robustlab.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **model_info, **settings, "eps_label": eps_label(settings["eps"]), "pass_percent": PASS_PERCENT,
        **summarise(images), "per_image": images,
    }


def _row(name: str, s: dict[str, Any], verdict: str, seconds: str = "") -> str:
    share_text = "-" if s["share"] is None else f"{100 * s['share']:.1f}%"
    interval = f"[{100 * s['ci95'][0]:.1f}, {100 * s['ci95'][1]:.1f}]"
    return f"{name:<24} {s['found']:>4}/{s['tasks']:<4} {share_text:>7} {interval:>14} {verdict:>6} {seconds:>8}"


def format_audit(record: dict[str, Any]) -> str:
    """Plain-text table of an audit record: per attack found / tasks, share, 95% interval, pass, seconds."""
    lines = [f"binarization test: {record.get('dataset', '?')}, {record['set_up']} tasks of {record['images']} images, "
             f"eps={record['eps_label']} ({record['norm']}), {record['inner_points']} inner points, features: input "
             f"of {record['feature_layer']} ({record['features']} values)",
             f"{'attack':<24} {'found':>9} {'share':>7} {'95% interval':>14} {'pass':>6} {'time s':>8}"]
    for name, a in record["attacks"].items():
        lines.append(_row(name, a, "yes" if a["pass"] else "NO", f"{a['time_s']:.2f}"))
    if len(record["attacks"]) > 1:
        lines.append(_row("any (eval's worst case)", record["any"], "yes" if record["any"]["pass"] else "NO"))
    lines.append(_row("random sampling", record["random"], "-"))
    lines.append(f"an attack passes when it finds the known adversarial example on >= {record['pass_percent']}% of the "
                 "tasks (docs/EVALUATION.md, The binarization test)")
    if record["setup_failed"]:
        lines.append("tasks not set up: " + "; ".join(f"{n} x {why}" for why, n in record["setup_failed"].items()))
    lines += [f"  flag {f['code']} on {f['tasks']} tasks, e.g.: {f['example']}" for f in record["flags"]]
    return "\n".join(lines)
