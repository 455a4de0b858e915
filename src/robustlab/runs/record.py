"""The evaluation record: its verdict constants, how it is built, written, shown, and read back.

An evaluation record is one flat, RobustBench-like JSON object (numbers as numbers, every setting
listed): robustlab's version and the date, the model's description, the settings, ``eps_label``,
``attack_params`` (each attack's resolved parameters), the suite's result (``clean_acc``,
``robust_acc``, ``attacks``, ``flags``, ``per_sample``) and ``model_info``, a RobustBench-style
model-info block (:func:`model_info_block`). :mod:`robustlab.evaluate` builds and writes records
through :func:`make_record` and :func:`write_record`; :mod:`robustlab.report` and the study page read
them only through :func:`read_record`, which names the first thing wrong with a damaged record
(:func:`table_problem`, :func:`per_sample_problem`) instead of raising.

Per-sample verdicts (``per_sample.broken_by[attack]``, one integer per sample): :data:`ROBUST` (no
attack or member broke it), ``k >= 0`` (member ``k`` broke it, 0 for single attacks), :data:`NOT_RUN`
(not computed yet, or the sample was classified wrongly before any attack).
"""

from __future__ import annotations

import datetime
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import robustlab
from robustlab.atomic import atomic_write_text
from robustlab.ownership import json_object
from robustlab.runs.selection import describe

ROBUST = -1  # no attack (member) broke the sample; k >= 0: member k broke it
NOT_RUN = -2  # verdict not computed yet (or the sample was clean-wrong)
NUMBER = (int, float)
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # RobustBench's threat-model names


def eps_label(eps: float) -> str:
    """``8/255`` for non-integer values in (0, 1) that are k/255, else the float (``0`` for either zero,
    ``100`` not ``25500/255``)."""
    if eps == 0:
        return "0"
    frac = Fraction(eps).limit_denominator(255)
    if 0 < eps < 1 and 255 % frac.denominator == 0 and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator * (255 // frac.denominator)}/255"
    return f"{eps:g}"


def model_info_block(record: dict[str, Any], attacks: list[str], autoattack_faithful: bool) -> dict[str, Any]:
    """A RobustBench-style model-info entry of a record (accuracies in percent, as RobustBench writes them).

    ``autoattack_acc`` is the robust accuracy under the record's ``autoattack`` entry when that entry ran
    the reference-faithful group (``autoattack_faithful``, read by the caller from the members'
    parameters with :func:`robustlab.evaluate.suite.group_that_ran`), else None; ``robust_acc`` is always
    the per-sample worst case over all of ``attacks`` (named in ``robust_acc_attacks``).
    ``attack_version`` names robustlab's version and the attacks.
    """
    names = [a.strip().lower() for a in attacks]
    autoattack = record["attacks"].get("autoattack") if autoattack_faithful else None
    return {
        "dataset": record["dataset"], "threat_model": THREAT_MODELS[record["norm"]],
        "eps": record["eps"], "eps_label": record["eps_label"], "norm": record["norm"],
        "n_examples": record["n_examples"],
        "clean_acc": round(100 * record["clean_acc"], 2),
        "autoattack_acc": None if autoattack is None else round(100 * autoattack["robust_acc"], 2),
        "robust_acc": round(100 * record["robust_acc"], 2), "robust_acc_attacks": names,
        "attack_version": f"robustlab {record['robustlab_version']} "
                          + ("autoattack standard" if autoattack is not None else "(no autoattack)")
                          + f": {', '.join(names)}",
    }


def make_record(
    result: dict[str, Any], *, settings: dict[str, Any], attack_params: dict[str, dict[str, Any]],
    model_info: dict[str, Any], attacks: list[str], autoattack_faithful: bool,
) -> dict[str, Any]:
    """The record of a finished suite: ``result`` (:func:`robustlab.evaluate.runner.summarise`), the
    ``settings`` and the model's description, plus its ``model_info`` block over the requested ``attacks``."""
    record = {
        "robustlab_version": robustlab.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **model_info,
        **settings,
        "eps_label": eps_label(settings["eps"]),
        "attack_params": attack_params,
        **result,
    }
    record["model_info"] = model_info_block(record, attacks, autoattack_faithful)
    return record


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (indented JSON, one trailing newline)."""
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def format_table(record: dict[str, Any]) -> str:
    """Plain-text table of a record plus its flags in words (and, for a run's checkpoint, how it was chosen)."""
    lines = [f"{'attack':<20} {'accuracy':>9} {'time s':>8} {'fwd/smp':>8} {'bwd/smp':>8}"]
    lines.append(f"{'clean':<20} {100 * record['clean_acc']:>8.2f}%")
    for name, a in record["attacks"].items():
        lines.append(f"{name:<20} {100 * a['robust_acc']:>8.2f}% {a['time_s']:>8.2f} "
                     f"{a['forward_per_sample']:>8.1f} {a['backward_per_sample']:>8.1f}")
        for member, acc in a.get("robust_acc_after", {}).items():
            lines.append(f"{'  after ' + member:<20} {100 * acc:>8.2f}%")
    if "verify" in record:
        v = record["verify"]
        lines.append(f"{'  verify ' + v['protocol']:<20} broke {v['broken']} of {v['sampled']} sampled survivors "
                     f"(of {v['survivors']}): gap {100 * v['gap']:.2f} points, "
                     f"95% [{100 * v['gap_ci95'][0]:.2f}, {100 * v['gap_ci95'][1]:.2f}]")
    lines.append(f"{'worst case':<20} {100 * record['robust_acc']:>8.2f}%")
    if "adversarial" in record:
        adv = record["adversarial"]
        lines.append(f"adversarial images of the {adv['breaks']} breaks in {adv['file']} ({adv['uint8_breaks']} also "
                     "as 8-bit images); robustlab check confirms them")
    header = f"{record.get('dataset', '?')} n={record['n_examples']} eps={record['eps_label']} ({record['norm']})"
    if "selection" in record:
        header += f", checkpoint {describe(record['selection'])}"
    flags = [f"FLAG {f['code']}: {f['message']}" for f in record["flags"]]
    if not flags and record.get("checks_run"):
        flags = ["checks: no sign of gradient masking in the automatic checks"]
    return "\n".join([header, *lines, *flags])


def _number(value: Any) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool)


def _share(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and 0 <= value <= 1


def accuracy_problem(record: Any) -> str | None:
    """An accuracy of a parsed record that is not a share in [0, 1] (NaN, infinity, 7.5 for 750%), or None: every
    reader refuses such a record (one NaN used to scramble a whole leaderboard's ranking)."""
    if not isinstance(record, dict):
        return "not a JSON object with a record's fields"
    shares = {key: record[key] for key in ("clean_acc", "robust_acc") if key in record}
    attacks = record.get("attacks")
    if isinstance(attacks, dict):
        shares.update({f"attacks.{k}.robust_acc": a["robust_acc"] for k, a in attacks.items()
                       if isinstance(a, dict) and "robust_acc" in a})
    bad = next((k for k, v in shares.items() if not _share(v)), None)
    return None if bad is None else f"{bad} is {shares[bad]!r}, not an accuracy in [0, 1]"


def per_sample_problem(record: Any) -> str | None:
    """What is wrong with a parsed record's per-sample verdicts (``report --compare`` reads only those), or None."""
    if not isinstance(record, dict) or not isinstance(record.get("per_sample"), dict):
        return "it has no per-sample verdicts"
    per_sample = record["per_sample"]
    if not isinstance(per_sample.get("broken_by"), dict):
        return "per_sample lacks broken_by"
    lists = {"clean": per_sample.get("clean"), **{f"broken_by.{k}": v for k, v in per_sample["broken_by"].items()}}
    n = record.get("n_examples", len(lists["clean"]) if isinstance(lists["clean"], list) else None)
    for name, values in lists.items():
        if not isinstance(values, list) or not all(type(v) is int for v in values):
            return f"per_sample {name} is not a list of integers"
        if len(values) != n:
            return f"per_sample {name} holds {len(values)} verdicts for n_examples={n} (cut short?)"
    return None


# Fields a consumer reads when present (export's name, data set and footnote; the leaderboard's columns), by type.
OPTIONAL_FIELDS = {"attack_params": dict, "model_source": dict, "model_info": dict, "split": str,
                   "robustlab_version": str, "run": str, "architecture": str, "dataset": str, "checkpoint": str}


def table_problem(record: Any) -> str | None:
    """What is wrong with a parsed record for the report's table (and its per-sample lists when present), or None."""
    if not isinstance(record, dict) or not record:
        return "not a JSON object with a record's fields"
    for key in ("clean_acc", "robust_acc"):
        if not _number(record.get(key)):
            return f"{key} is missing or not a number"
    attacks = record.get("attacks")
    if not isinstance(attacks, dict) or not all(
            isinstance(a, dict) and _number(a.get("robust_acc")) for a in attacks.values()):
        return "attacks is missing or lacks robust_acc numbers"
    if not isinstance(record.get("flags"), list):
        return "flags is missing or malformed"
    if (type(record.get("n_examples")) is not int or not isinstance(record.get("eps_label"), str)
            or not isinstance(record.get("norm"), str)):
        return "n_examples, eps_label or norm is missing"
    return field_problem(record) or (per_sample_problem(record) if "per_sample" in record else None)


def field_problem(record: Any) -> str | None:
    """A field of a parsed record with the wrong type or range, whichever consumer reads it: accuracies outside
    [0, 1] (:func:`accuracy_problem`), flags that are not ``{code, message}`` strings, the optional fields of
    :data:`OPTIONAL_FIELDS` of another type, an ``attack_params`` entry that is not an object; or None."""
    found = accuracy_problem(record)
    if found is not None:
        return found
    flags = record.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, dict) and isinstance(f.get("message"), str)
                                              and isinstance(f.get("code"), str) for f in flags):
        return "flags is malformed (a list of {code, message} strings)"
    odd = next((k for k, kind in OPTIONAL_FIELDS.items() if record.get(k) is not None
                and not isinstance(record[k], kind)), None)
    if odd is not None:
        return f"{odd} is {type(record[odd]).__name__}, not {OPTIONAL_FIELDS[odd].__name__}"
    if not all(isinstance(p, dict) for p in record.get("attack_params", {}).values()):
        return "attack_params holds an entry that is not an object"
    return None


def read_record(
    path: Path, problem: Callable[[Any], str | None] = table_problem,
) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a record file that parses and passes ``problem``, else ``(None, what is wrong)``."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"unreadable or not JSON ({type(exc).__name__})"
    found = problem(record)
    return (None, found) if found else (record, None)


SIDE_SUFFIXES = (".state.json", ".verify.json", ".robustbench.json")  # state, verification state, export


def record_paths(folder: Path) -> list[Path]:
    """The evaluation records in a run's ``eval/`` folder: its ``.json`` files, less the side files an evaluation,
    its verification and ``export`` write beside them (:data:`SIDE_SUFFIXES`); sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(SIDE_SUFFIXES) and p.is_file())


def looks_like_record(path: Path) -> bool:
    """A JSON object with an ``attacks`` mapping and a numeric ``clean_acc``, as records have (what robustlab may
    replace at a record's path; whether it is usable is :func:`read_record`'s question)."""
    data = json_object(path)
    return (data is not None and isinstance(data.get("attacks"), dict)
            and isinstance(data.get("clean_acc"), (int, float)))

