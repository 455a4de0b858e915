"""An evaluation record as a RobustBench model-info entry (``robustlab export RECORD.json --robustbench``).

RobustBench keeps one JSON file per model (``model_info/<dataset>/<threat_model>/<Name>.json`` in
RobustBench/robustbench, e.g. ``cifar10/Linf/Standard.json``, ``Xiao2020Enhancing.json``) with the keys
``link``, ``name``, ``authors``, ``additional_data`` (bool), ``number_forward_passes`` (int), ``dataset``,
``venue``, ``architecture``, ``eps`` (``"8/255"``), ``clean_acc``, ``reported``, ``autoattack_acc``, an
optional ``external`` and ``footnote``; accuracies are percent strings with two decimals (``"94.78"``),
and the leaderboard ranks by ``external`` where present, else ``autoattack_acc``.

Choices [ours]:

* ``autoattack_acc`` comes only from a reference-faithful group (``autoattack``, or ``autoattack-rand`` for
  a randomized model), as its member parameters show (:func:`robustlab.evaluate.suite.group_that_ran`);
  a record without one gets ``null`` and a footnote saying so (RobustBench would need an AutoAttack run).
* ``external`` is the record's per-sample worst case when other attacks ran beside that group and broke
  more (``autoattack+``, adaptive attacks, PGD...); it is left out when the worst case equals ``autoattack_acc``.
* The footnote names the attacks, the sample count, the checkpoint and how it was chosen (records that say so:
  :mod:`robustlab.runs.selection`) and robustlab's flags, so a subset evaluation, a checkpoint chosen on the test
  split or a flagged record is visible in the entry; ``unreliable`` is never set by us (RobustBench's own judgement).
* When the record names its adversarial file (``eval --save-adversarial``), the footnote points to it (by name,
  or by ``adversarial_url`` where it is published) with its sha256 and break count, so anyone can confirm each
  break with ``robustlab check``: the evidence RobustBench's "New external evaluation(s)" issue template asks
  for ("Link to adversarial images"). That template asks for a ``.pt`` tensor the size of the test set, which
  ``robustlab check … --robustbench-pt`` writes once it has confirmed every break
  (:mod:`robustlab.evaluate.confirm`). The file must lie beside the record and match the record's sha256, or the
  export is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustlab.atomic import atomic_write_text
from robustlab.errors import UserError
from robustlab.evaluate.external import sha256_file
from robustlab.evaluate.suite import group_that_ran
from robustlab.ownership import Kind, claim, json_with
from robustlab.report.compare import load_record, record_file
from robustlab.runs.selection import describe

FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
          "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote")
REFERENCE_GROUPS = ("autoattack", "autoattack-rand")


def percent(value: float) -> str:
    """A fraction as RobustBench writes accuracies: ``0.9478`` -> ``"94.78"``."""
    return f"{100 * value:.2f}"


def reference_autoattack(record: dict[str, Any]) -> tuple[str, float] | None:
    """``(group, robust accuracy)`` of the record's reference-faithful AutoAttack run, or None."""
    for name in REFERENCE_GROUPS:
        entry = record.get("attacks", {}).get(name)
        if entry is not None and group_that_ran(name, record.get("attack_params", {}).get(name, {})) == name:
            return name, float(entry["robust_acc"])
    return None


def attacks_that_ran(record: dict[str, Any]) -> list[str]:
    """The record's attacks, each group by the name of what it really ran (old ``autoattack`` -> ``autoattack+``)."""
    return [group_that_ran(a, record.get("attack_params", {}).get(a, {})) for a in record.get("attacks", {})]


def adversarial_note(record: dict[str, Any], source: Path, url: str = "") -> str:
    """The footnote's pointer to the record's adversarial file (module docs), or "" when the record names none."""
    named = record.get("adversarial")
    if not isinstance(named, dict):
        if url:
            raise UserError(f"record {source} names no adversarial file, so --adversarial-url has nothing to point to; "
                            "evaluate with robustlab eval --save-adversarial")
        return ""
    found = source.parent / Path(str(named.get("file"))).name
    if not found.is_file() or sha256_file(found) != named.get("sha256"):
        raise UserError(f"record {source} names the adversarial file {found}, which is missing or changed (sha256 "
                        "mismatch); move it back beside the record or rerun robustlab eval --save-adversarial")
    return (f"Adversarial images of the {named.get('breaks')} breaks: {url or found.name} (sha256 {named['sha256']}; "
            "robustlab check confirms each).")


def _footnote(record: dict[str, Any], reference: tuple[str, float] | None, external: bool, extra: str) -> str:
    names = attacks_that_ran(record)
    parts = [f"robustlab {record.get('robustlab_version', '?')} on {record['n_examples']} "
             f"{record.get('split', 'test')} images: "
             + ", ".join(names) + "."]
    if reference is None:
        parts.append("No reference AutoAttack ran (autoattack_acc is null); evaluate with --attacks autoattack.")
    elif reference[0] == "autoattack-rand":
        parts.append("Randomized model: AutoAttack's rand version (APGD-CE, APGD-DLR with 20-pass EOT).")
    if external:
        parts.append("external: the per-sample worst case over all of these attacks.")
    if "selection" in record:
        parts.append(f"Checkpoint: {describe(record['selection'])}.")
    flags = sorted({f["code"] for f in record.get("flags", [])})
    if flags:
        parts.append("robustlab flags: " + ", ".join(flags) + ".")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def robustbench_entry(
    record: dict[str, Any], *, name: str | None = None, paper: str = "", authors: str = "", venue: str = "N/A",
    reported: str = "", additional_data: bool = False, forward_passes: int = 1, dataset: str | None = None,
    architecture: str | None = None, footnote: str = "",
) -> dict[str, Any]:
    """The RobustBench model-info entry of an evaluation record (see the module docstring for each field);
    ``footnote`` is added to robustlab's footnote."""
    for key in ("clean_acc", "robust_acc", "eps_label", "n_examples", "attacks"):
        if key not in record:
            raise UserError(f"the record has no {key!r}; pass an evaluation record written by robustlab eval")
    if forward_passes < 1:
        raise UserError(f"--forward-passes must be >= 1, got {forward_passes}")
    reference = reference_autoattack(record)
    worst = float(record["robust_acc"])
    external = reference is None or worst < reference[1]
    zoo = record.get("model_source") if isinstance(record.get("model_source"), dict) else {}
    zoo = zoo if isinstance(zoo.get("robustbench"), str) else {}  # a RobustBench-zoo model keeps its zoo name, data
    entry: dict[str, Any] = {
        "link": paper,
        "name": name or zoo.get("robustbench") or record.get("run") or record.get("architecture") or "unnamed model",
        "authors": authors,
        "additional_data": additional_data,
        "number_forward_passes": forward_passes,
        "dataset": dataset or zoo.get("dataset") or record.get("dataset", ""),
        "venue": venue,
        "architecture": architecture or record.get("architecture", ""),
        "eps": record["eps_label"],
        "clean_acc": percent(record["clean_acc"]),
        "reported": reported,
        "autoattack_acc": None if reference is None else percent(reference[1]),
    }
    if external:
        entry["external"] = percent(worst)
    entry["footnote"] = _footnote(record, reference, external, footnote)
    return entry


def leaderboard_value(entry: dict[str, Any]) -> float | None:
    """What RobustBench ranks by: ``external`` where present, else ``autoattack_acc`` (percent), or None."""
    value = entry.get("external") or entry.get("autoattack_acc")
    return None if value is None else float(value)


ENTRY = Kind("a RobustBench entry robustlab exported", json_with("eps", "clean_acc", "autoattack_acc", "footnote"))
EXPORT_SUFFIX = ".robustbench.json"


def export_robustbench(record_path: str | Path, out: str | Path | None = None, adversarial_url: str = "",
                       **fields: Any) -> Path:
    """Write the entry of the record at ``record_path`` to ``out`` (default: beside it, ``NAME.robustbench.json``,
    a name record listings skip: :data:`robustlab.runs.record.SIDE_SUFFIXES`); ``out`` is claimed before the record is
    read (:func:`robustlab.ownership.claim`), so the record itself or a user's file is never overwritten. The
    footnote points to the record's adversarial file, at ``adversarial_url`` when given (:func:`adversarial_note`).
    """
    source = record_file(record_path)
    target = Path(out) if out is not None else source.with_suffix(EXPORT_SUFFIX)
    claim(target, ENTRY, "pass --out NEW.json or move that file away")
    record = load_record(source)
    note = adversarial_note(record, source, adversarial_url)
    fields["footnote"] = " ".join(part for part in (note, fields.get("footnote", "")) if part)
    entry = robustbench_entry(record, **fields)
    atomic_write_text(target, json.dumps(entry, indent=2) + "\n")
    return target
