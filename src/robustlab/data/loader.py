"""On-device batching and augmentation: the whole split lives on the device as uint8.

Design after airbench's ``CifarLoader`` (``airbench/utils.py``; Keller Jordan): a device-side
permutation per epoch, batches as index slices, batched flip and crop. Deviations [ours]: images stay
uint8 on the device and each batch is converted to float32 in [0, 1] (never normalised here, so ε
stays in pixel units); augmentation is drawn per batch, not for a full copy of the set per epoch;
randomness comes from the loader's own ``torch.Generator`` whose state is saved for exact resume,
including in the middle of an epoch; the crop is a gather (no host sync on GPUs) instead of a loop
over shifts with boolean masks; the device is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from robustlab.data.record import ImageDataset
from robustlab.errors import UserError


def batch_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples of ``x`` (N, C, H, W) where the bool ``mask`` (N,) is true."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(x: torch.Tensor, shifts: torch.Tensor, padding: int) -> torch.Tensor:
    """Random-crop with zero padding: pad the batch once, then cut each sample's window.

    ``shifts`` is (2, N) of row and column offsets in ``0..2*padding`` into the padded image, so
    sample ``i`` moves by ``padding - shifts[:, i]`` pixels and the uncovered border is zero.
    Rows then columns are gathered with per-sample index tensors (two ``gather`` calls).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (shifts[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    x = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    cols = (shifts[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    return x.gather(3, cols.expand(n, c, h, w))


class DeviceLoader:
    """Batches ``(x float32 in [0, 1], y int64)`` from a dataset held on ``device`` as uint8.

    Each epoch (one ``iter``) draws a permutation from the loader's generator (``shuffle=True``),
    then per batch one flip bit per sample (``flip=True``) and a row and a column shift per sample
    (``crop_padding > 0``). ``state_dict()`` captures the generator and, mid-epoch, the number of
    batches already handed out; after ``load_state_dict`` the next ``iter`` yields exactly the
    batches the interrupted run would have yielded next (only the rest of an interrupted epoch).

    ``shard=(rank, world)`` (distributed training): every rank draws the same global batches of
    ``batch_size × world`` samples with the same augmentation draws, and yields its own slice.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        _check_int("batch_size", batch_size, 1)
        self.rank, self.world = shard
        _check_int("crop_padding", crop_padding, 0)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.classes = list(dataset.classes)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._epoch_start: torch.Tensor | None = None  # generator state when the live epoch began
        self._cursor = 0  # batches handed out in the live epoch
        self._skip = 0  # batches to replay silently on the next iter (after load_state_dict)
        if self.num_samples == 0:
            raise UserError(f"dataset {dataset.name!r} is empty; check the data root and split")
        if len(self) == 0:
            raise UserError(
                f"batch_size {batch_size} with drop_last=True leaves no batch for {len(self.labels)} samples; "
                f"lower batch_size or set drop_last=false"
            )

    @property
    def num_samples(self) -> int:
        """Number of samples in the dataset."""
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.global_batch
        return math.ceil(self.num_samples / self.global_batch)

    @property
    def global_batch(self) -> int:
        """Samples per step over all ranks."""
        return self.batch_size * self.world

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self._skip = self._skip, 0
        self._epoch_start, self._cursor = self.generator.get_state(), 0
        order = self._order()
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for k in range(len(self)):
            index = order[k * self.global_batch : (k + 1) * self.global_batch]
            flips, shifts = self._draw(len(index))
            self._cursor = k + 1
            if k < skip:
                continue
            if self.world > 1:
                index = index[mine]
                flips = None if flips is None else flips[mine]
                shifts = None if shifts is None else shifts[:, mine]
            yield self._augment(self.images[index], flips, shifts).float().div_(255.0), self.labels[index]
        self._epoch_start = None

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=self.generator, device=self.device)
        return torch.arange(self.num_samples, device=self.device)

    def _draw(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This batch's random draws: flip bits (N,) and crop shifts (2, N), in a fixed order."""
        flips = shifts = None
        if self.flip:
            flips = torch.rand(n, generator=self.generator, device=self.device) < 0.5
        if self.crop_padding:
            high = 2 * self.crop_padding + 1
            shifts = torch.randint(0, high, (2, n), generator=self.generator, device=self.device)
        return flips, shifts

    def _augment(self, x: torch.Tensor, flips: torch.Tensor | None, shifts: torch.Tensor | None) -> torch.Tensor:
        if flips is not None:
            x = batch_flip(x, flips)
        if shifts is not None:
            x = batch_crop(x, shifts, self.crop_padding)
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"generator": uint8 state, "batch": int64 scalar}``; mid-epoch, the epoch's start state."""
        if self._epoch_start is not None and self._cursor < len(self):
            return {"generator": self._epoch_start.clone(), "batch": torch.tensor(self._cursor)}
        # between epochs; after load_state_dict the generator sits at the epoch start and _skip is pending
        return {"generator": self.generator.get_state(), "batch": torch.tensor(self._skip)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`; the next ``iter`` resumes where that state was taken."""
        gen = state.get("generator") if isinstance(state, dict) else None
        if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8:
            raise UserError("loader state has no uint8 'generator' tensor; pass DeviceLoader.state_dict() output")
        batch = int(state.get("batch", 0))
        if not 0 <= batch < len(self):
            raise UserError(f"loader state is at batch {batch} of {len(self)}; resume with the same data, batch_size")
        try:
            self.generator.set_state(gen.cpu())
        except RuntimeError as err:
            raise UserError(f"loader state does not fit this generator ({err}); resume on the same device") from None
        self._skip, self._epoch_start, self._cursor = batch, None, 0


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"DeviceLoader {name}={value!r} is invalid; use an integer >= {minimum}")
