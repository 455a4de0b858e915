"""What makes an evaluation record readable: the shape :func:`robustlab.evaluate.runner.make_record` writes.

:func:`table_problem` names the first thing wrong with a parsed record for the report's table and
:func:`per_sample_problem` with its per-sample verdicts (None when sound), so the report skips a damaged
record with one message instead of a traceback, and ``report --compare`` refuses one with a line naming
the file. :func:`read_record` reads and checks one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

NUMBER = (int, float)


def _number(value: Any) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool)


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


def table_problem(record: Any) -> str | None:
    """What is wrong with a parsed record for the report's table (and its per-sample lists when present), or None."""
    if not isinstance(record, dict) or not record:
        return "not a JSON object with a record's fields"
    for key in ("clean_acc", "robust_acc"):
        if not _number(record.get(key)):
            return f"{key} is missing or not a number"
    attacks = record.get("attacks")
    if not isinstance(attacks, dict) or not all(isinstance(a, dict) and _number(a.get("robust_acc")) for a in attacks.values()):
        return "attacks is missing or lacks robust_acc numbers"
    flags = record.get("flags")
    if not isinstance(flags, list) or not all(isinstance(f, dict) and isinstance(f.get("message"), str) for f in flags):
        return "flags is missing or malformed"
    if type(record.get("n_examples")) is not int or not isinstance(record.get("eps_label"), str) or not isinstance(record.get("norm"), str):
        return "n_examples, eps_label or norm is missing"
    return per_sample_problem(record) if "per_sample" in record else None


def read_record(path: Path, problem: Callable[[Any], str | None] = table_problem) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a record file that parses and passes ``problem``, else ``(None, what is wrong)``."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"unreadable or not JSON ({type(exc).__name__})"
    found = problem(record)
    return (None, found) if found else (record, None)
