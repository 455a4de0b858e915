"""A flag: a plain-words warning about an evaluation, stored in the record and printed under the table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    """``code`` is a stable identifier (``randomness``, ``zero_gradients``, ...); ``message`` plain words."""

    code: str
    message: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
