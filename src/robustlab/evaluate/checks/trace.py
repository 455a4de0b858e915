"""What the suite's attacks evaluated at the probe samples' points, read from the forwards they already make.

The indicators of attack failure (Pintor et al., "Indicators of Attack Failure: Debugging and Improving
Optimization of Adversarial Examples", NeurIPS 2022) read an attack's path: the points it evaluated, their
losses, its best and its returned point. robustlab's attacks do not hand their paths out, and the suite runs
on every sample; :class:`SuiteTrace` watches the forwards the attacks make anyway (a forward hook on the model,
and on the transfer source when there is one) and keeps, for each probe sample, what was evaluated inside its
threat model: no attack is changed and no pass is added.

A row of a forward belongs to probe sample ``i`` when it lies in ``i``'s ε-ball and in [0, 1] with the runner's
tolerance (:data:`robustlab.evaluate.runner.TOLERANCE`), the test the runner applies to a break: such a row,
misclassified, *is* an adversarial example of ``i``, whichever sample the attack meant it for. Kept per probe
sample: the margin ``max_{k != y} z_k - z_y`` of every such row, in the order the forwards came (its path through
the whole suite, the clean forward first), the row of the largest margin (the suite's best point) and the first
misclassified row. On the transfer source: whether some such row fooled the source.

The hook computes with every ``__torch_function__`` mode disabled, so the straight-through surrogate's mode
(check 8), active during its forwards, neither replaces nor logs the tracer's own calls. Matching costs a
distance from every row of a forward to the probe samples (rows x probe x pixels elementwise operations), small
beside a forward of any real network.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from robustlab.attacks.losses import margin
from robustlab.data import ImageDataset, subset_indices
from robustlab.evaluate.runner import TOLERANCE

SCREEN = 32  # pixels of the first, screening distance (:meth:`SuiteTrace._owners`)


class SuiteTrace:
    """The probe samples ``(x, y)`` (``x`` in [0, 1]) at positions ``index`` of the evaluated data, watched under
    the threat model ``(eps, norm)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, *, eps: float, norm: str) -> None:
        self.x, self.y, self.index = x.detach(), y, index
        self.eps, self.norm = eps, norm
        n = x.shape[0]
        self.best_margin = torch.full((n,), -math.inf, device=x.device)
        self.best_point = self.x.clone()
        self.adversarial = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.adversarial_point = self.x.clone()
        self.source_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        self._pieces: list[tuple[torch.Tensor, torch.Tensor]] = []  # (probe sample, margin) per forward, in order

    @classmethod
    def of_probe(cls, data: ImageDataset, size: int, *, seed: int, eps: float, norm: str,
                 device: torch.device) -> "SuiteTrace":
        """The trace of the checks' probe: the ``fixed_subset(data, size, seed)`` that ``eval`` gives the checks."""
        index = subset_indices(len(data.labels), min(size, len(data.labels)), seed)
        probe = data.select(index)
        return cls(probe.images.to(device).float() / 255, probe.labels.to(device), index, eps=eps, norm=norm)

    def _owners(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, probe sample) pairs with the row inside the sample's threat model, ordered by row.

        A distance over :data:`SCREEN` evenly spaced pixels is at most the full one (L∞ and L2 alike), so it
        screens out the pairs that cannot match at a fraction of the cost; the rest are measured in full."""
        flat, probe = rows.detach().flatten(1).float(), self.x.flatten(1).float()
        radius = self.eps + TOLERANCE
        p = math.inf if self.norm == "linf" else 2.0
        few = torch.linspace(0, flat.shape[1] - 1, min(SCREEN, flat.shape[1]), device=flat.device).long()
        near = (torch.cdist(flat[:, few], probe[:, few], p=p, compute_mode="donot_use_mm_for_euclid_dist")
                <= radius).nonzero()
        r, i = near[:, 0], near[:, 1]
        full = torch.linalg.vector_norm(flat[r] - probe[i], ord=p, dim=1)
        inside = (full <= radius) & ((flat[r] >= -TOLERANCE) & (flat[r] <= 1 + TOLERANCE)).all(1)
        return r[inside], i[inside]

    def _watched(self, args: tuple[Any, ...], output: Any) -> bool:
        """A forward of a batch of images like the probe's, returning one row of logits per image."""
        return bool(args and torch.is_tensor(args[0]) and args[0].ndim >= 2 and torch.is_tensor(output)
                    and output.ndim == 2 and output.shape[0] == args[0].shape[0]
                    and args[0].shape[1:].numel() == self.x.shape[1:].numel())

    def _on_model(self, _module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._watched(args, output):
            return
        with torch._C.DisableTorchFunction(), torch.no_grad():  # no mode sees the tracer (module docstring)
            rows, owners = self._owners(args[0])
            if rows.numel() == 0:
                return
            logits, points = output.detach()[rows], args[0].detach()[rows]
            m = margin(logits, self.y[owners]).float()
            self._pieces.append((owners, m))
            better = m > self.best_margin[owners]
            top = torch.full_like(self.best_margin, -math.inf).scatter_reduce(0, owners[better], m[better], "amax")
            self._keep(self.best_point, better & (m == top[owners]), owners, points, self.best_margin, m)
            wrong = (logits.argmax(1) != self.y[owners]) & ~self.adversarial[owners]
            self._keep(self.adversarial_point, wrong, owners, points, self.adversarial, wrong)

    def _keep(self, store: torch.Tensor, candidate: torch.Tensor, owners: torch.Tensor, points: torch.Tensor,
              mark: torch.Tensor, value: torch.Tensor) -> None:
        """For each probe sample with a ``candidate`` row, its first such row: the point into ``store``, ``value``
        into ``mark`` (deterministic where several rows of one forward qualify)."""
        rows = torch.arange(owners.numel(), device=owners.device)
        first = torch.full((store.shape[0],), owners.numel(), device=owners.device).scatter_reduce(
            0, owners[candidate], rows[candidate], "amin")
        won = (first < owners.numel()).nonzero().squeeze(1)
        store[won], mark[won] = points[first[won]].to(store.dtype), value[first[won]]

    def _on_source(self, _module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._watched(args, output):
            return
        with torch._C.DisableTorchFunction(), torch.no_grad():
            rows, owners = self._owners(args[0])
            fooled = output.detach()[rows].argmax(1) != self.y[owners]
            self.source_fooled[owners[fooled]] = True

    @contextlib.contextmanager
    def watching(self, model: nn.Module, source: nn.Module | None = None) -> Iterator["SuiteTrace"]:
        """Record the forwards of ``model`` (and of the transfer ``source``, unless it is the model itself, whose
        forwards cannot be told apart from the attacks') inside the block."""
        handles = [model.register_forward_hook(self._on_model)]
        if source is not None and source is not model:
            handles.append(source.register_forward_hook(self._on_source))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def paths(self) -> list[torch.Tensor]:
        """Each probe sample's path: the finite margins of the rows evaluated in its threat model, in order."""
        n = self.x.shape[0]
        if not self._pieces:
            return [torch.zeros(0) for _ in range(n)]
        owners = torch.cat([o for o, _ in self._pieces]).cpu()
        margins = torch.cat([m for _, m in self._pieces]).cpu()
        order = torch.argsort(owners, stable=True)
        split = torch.split(margins[order], torch.bincount(owners, minlength=n).tolist())
        return [path[torch.isfinite(path)] for path in split]


def watching(trace: SuiteTrace | None, model: nn.Module, source: nn.Module | None) -> contextlib.AbstractContextManager:
    """``trace.watching(model, source)``, or nothing to do without a trace."""
    return contextlib.nullcontext() if trace is None else trace.watching(model, source)
