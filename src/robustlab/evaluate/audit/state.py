"""The audit's resumable state: one finished result per image, saved atomically after every image.

Like the evaluation's state (:mod:`robustlab.evaluate.state`), its identity is a fingerprint of everything that
determines the results (model weights, data, attacks, budget, the task's sizes, seed, batch size, the feature layer,
version) and it carries a digest of its content. A rerun with the same fingerprint continues after the last saved
image, so a stop loses at most one image's work; a changed fingerprint starts fresh with a message naming what
changed; a damaged or inconsistent file starts fresh with a message. The image count is not in the fingerprint: the
images come in a fixed seeded order, so a larger ``--n-images`` extends a finished audit and a smaller one reads its
first images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from robustlab.evaluate.state import read_digested, write_digested

IMAGE_KEYS = {"index": int, "setup": str, "found": dict, "random": dict, "seconds": (int, float),
              "attack_seconds": dict, "flags": dict}


@dataclass
class AuditState:
    """``images``: per audited image, in order, its result (:data:`IMAGE_KEYS`)."""

    fingerprint: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def resume_or_new(cls, path: Path | None, fingerprint: dict[str, Any],
                      log: Callable[[str], None] = print) -> "AuditState":
        """The saved state at ``path`` when it is sound and its fingerprint matches, else a fresh one (with a
        message)."""
        if path is not None and path.exists():
            saved = _parse(path)
            if saved is None:
                log(f"audit state {path} is unreadable or inconsistent; starting fresh")
            elif saved.fingerprint != fingerprint:
                changed = sorted(k for k in fingerprint if fingerprint.get(k) != saved.fingerprint.get(k))
                log(f"settings changed since {path} ({', '.join(changed)}); starting fresh")
            else:
                if saved.images:
                    log(f"resuming audit from {path} after {len(saved.images)} images")
                return saved
        return cls(fingerprint)

    def save(self, path: Path | None) -> None:
        """Write the state atomically, with a digest of its content."""
        if path is not None:
            write_digested(path, asdict(self))


def _sound(image: Any) -> bool:
    return (isinstance(image, dict) and set(image) == set(IMAGE_KEYS)
            and all(isinstance(image[k], t) and not isinstance(image[k], bool) for k, t in IMAGE_KEYS.items())
            and all(type(v) is bool for v in image["found"].values())
            and all(type(v) is int and v >= 0 for v in image["random"].values()))


def _parse(path: Path) -> AuditState | None:
    """The state at ``path`` when its digest matches and every image result is well formed, else None."""
    raw = read_digested(path)
    if raw is None:
        return None
    try:
        saved = AuditState(**raw)
    except TypeError:
        return None
    if not isinstance(saved.fingerprint, dict) or not isinstance(saved.images, list):
        return None
    return saved if all(_sound(image) for image in saved.images) else None
