"""A run folder is claimed before training writes into it: absent, empty, or holding a robustlab run.

``train`` and ``finetune`` write ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` and ``eval/`` into
``out_dir/name``. A folder there that holds other files (a user's project, a data folder given as ``out_dir``
with a ``name`` that already exists) is refused in one line before the lock file or anything else is created
(:func:`claim_run_folder`). A run killed before its ``config.yaml`` was written left at most its lock, its empty
checkpoint folder and temp files, which are robustlab's.
"""

from __future__ import annotations

from pathlib import Path

from robustlab.errors import UserError
from robustlab.ownership import check_parents
from robustlab.runs.checkpoint import CHECKPOINT_DIR

CONFIG_NAME = "config.yaml"
STARTUP_NAMES = (".lock", CHECKPOINT_DIR)  # what a run creates before its config.yaml


def _ours_before_config(entry: Path) -> bool:
    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
        return True
    if entry.name == CHECKPOINT_DIR:
        return entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir())
    return entry.name in STARTUP_NAMES and entry.is_file() and not entry.is_symlink()


def claim_run_folder(run_dir: Path) -> None:
    """Refuse ``run_dir`` unless it is absent, a folder holding a run (its ``config.yaml``), or only what a run
    creates before that config."""
    check_parents(run_dir)
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a folder, so it cannot hold a run; choose another name=... or "
                        "out_dir=...")
    if (run_dir / CONFIG_NAME).is_file():
        return
    foreign = sorted(e.name for e in run_dir.iterdir() if not _ours_before_config(e))
    if foreign:
        raise UserError(f"{run_dir} holds files that are not a robustlab run ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}), so robustlab never writes into it; choose another "
                        "name=... or out_dir=...")
