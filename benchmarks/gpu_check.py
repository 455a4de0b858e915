"""The timing table of ``benchmarks/gpu_check.sh``: adversarial-training step speed and AutoAttack throughput.

Rows: a PGD-10 AT step (batch 128, bf16 autocast, channels_last) of PreAct-ResNet-18 and WRN-34-10 on
32×32 inputs, eager and ``torch.compile``d (median ms per step, images/s, the first call's seconds,
which include compilation, and peak GPU memory); then standard AutoAttack (L∞, ε = 8/255) on a
PreAct-ResNet-18 trained for a few PGD-AT steps on learnable synthetic data, ours
(:func:`robustlab.evaluate.evaluate_model`, checks off) and the reference ``pyautoattack`` on the same
images: seconds, images/s (all images, as both skip the clean-wrong ones) and robust accuracy.

``--tiny`` shrinks everything (narrow models, batch 8, 16×16 inputs, 4 AutoAttack images, compile with
the ``eager`` backend so dynamo traces without generating code) so that ``--cpu --tiny`` runs on a
CPU in seconds; its numbers mean nothing, it only keeps the script from rotting.

    python benchmarks/gpu_check.py            # CUDA; about 4-5 minutes on one H100 (estimate, never run)
    python benchmarks/gpu_check.py --cpu --tiny
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import make_step, median_seconds, sync  # noqa: E402

from robustlab.data import ImageDataset  # noqa: E402
from robustlab.evaluate import evaluate_model  # noqa: E402

EPS = 8 / 255
CLASSES = 10


@dataclass(frozen=True)
class Scale:
    """Sizes of one mode of the check."""

    batch: int
    size: int
    models: tuple[tuple[str, str, dict[str, Any]], ...]  # (label, registry name, options)
    backend: str
    warmup: int
    repeats: int
    train_steps: int
    aa_images: int
    aa_model: tuple[str, dict[str, Any]] = field(default=("preact_resnet18", {}))


FULL = Scale(
    batch=128, size=32, backend="inductor", warmup=3, repeats=10, train_steps=30, aa_images=256,
    models=(("preact_resnet18", "preact_resnet18", {}), ("wrn34_10", "wrn34_10", {})),
)
TINY = Scale(
    batch=8, size=16, backend="eager", warmup=1, repeats=2, train_steps=15, aa_images=8,
    models=(("preact_resnet18 w4", "preact_resnet18", {"width": 4}),
            ("wrn10-1", "wide_resnet", {"depth": 10, "widen_factor": 1})),
    aa_model=("preact_resnet18", {"width": 4}),
)


def synthetic(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: one random template per class plus noise, as uint8 (N, 3, size, size), and labels."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(CLASSES, 3, size, size, generator=gen)
    labels = torch.arange(n) % CLASSES
    images = 0.6 * templates[labels] + 0.4 * torch.rand(n, 3, size, size, generator=gen)
    return (images * 255).round().to(torch.uint8), labels


def peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "-"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def step_rows(scale: Scale, device: torch.device) -> list[str]:
    rows = []
    for label, name, options in scale.models:
        for backend in (None, scale.backend):
            reset_peak(device)
            step, _ = make_step(name, "pgd_at", batch_size=scale.batch, channels=3, size=scale.size,
                                num_classes=CLASSES, device=device, steps=10, model_options=options, amp="bf16",
                                channels_last=True, compile_backend=backend)
            start = time.perf_counter()
            step()
            sync(device)
            first = time.perf_counter() - start
            seconds, _ = median_seconds(step, warmup=scale.warmup - 1, repeats=scale.repeats, device=device)
            what = f"PGD-10 AT {label} bf16 cl " + (f"compile({backend})" if backend else "eager")
            rows.append(f"{what:<50} {1000 * seconds:>9.1f} {scale.batch / seconds:>9.0f} {first:>8.1f} "
                        f"{peak_gib(device):>8}")
    return rows


def trained_model(scale: Scale, device: torch.device, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """PreAct-ResNet-18 after a few PGD-10 AT steps (bf16, channels_last) on (x, y), in eval mode."""
    name, options = scale.aa_model
    step, model = make_step(name, "pgd_at", batch_size=len(y), channels=3, size=scale.size, num_classes=CLASSES,
                            device=device, steps=10, model_options=options, amp="bf16", channels_last=True,
                            batch=(x, y))
    for _ in range(scale.train_steps):
        step()
    return model.eval()


def autoattack_rows(scale: Scale, device: torch.device) -> list[str]:
    import pyautoattack

    images, labels = synthetic(scale.aa_images, scale.size)
    x, y = images.float() / 255, labels
    model = trained_model(scale, device, x, y)
    data = ImageDataset(images, labels, [str(k) for k in range(CLASSES)], "synthetic")
    rows = []
    reset_peak(device)
    start = time.perf_counter()
    record = evaluate_model(model, data, attacks=["autoattack"], eps=EPS, batch_size=len(y), device=device,
                            checks=False, log=lambda _: None)
    sync(device)
    ours = time.perf_counter() - start
    rows.append(_aa_row("ours", ours, len(y), record["clean_acc"], record["robust_acc"], device))
    reset_peak(device)
    xd, yd = x.to(device), y.to(device)
    adversary = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="standard", device=device, seed=0)
    start = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(xd, yd, batch_size=len(y))
    sync(device)
    ref = time.perf_counter() - start
    with torch.no_grad():
        clean = (model(xd).argmax(1) == yd).float().mean().item()
        robust = (model(x_adv).argmax(1) == yd).float().mean().item()
    rows.append(_aa_row("pyautoattack", ref, len(y), clean, robust, device))
    rows.append(f"{'AutoAttack time ours / reference':<50} {ours / ref:>9.2f}")
    return rows


def _aa_row(who: str, seconds: float, n: int, clean: float, robust: float, device: torch.device) -> str:
    what = f"AutoAttack standard {who} (n={n})"
    return (f"{what:<50} {1000 * seconds:>9.1f} {n / seconds:>9.1f} {'':>8} {peak_gib(device):>8}"
            f"  clean {100 * clean:.1f}% robust {100 * robust:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU needed)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches: a smoke test in seconds")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --cpu --tiny for the CPU smoke test")
    device = torch.device("cpu" if args.cpu else "cuda")
    scale = TINY if args.tiny else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, batch {scale.batch}, {scale.size}x{scale.size} inputs, "
          f"L-inf eps 8/255{' (tiny mode: numbers mean nothing)' if args.tiny else ''}")
    print(f"{'what':<50} {'ms':>9} {'images/s':>9} {'1st s':>8} {'peak GiB':>8}")
    for row in step_rows(scale, device) + autoattack_rows(scale, device):
        print(row, flush=True)


if __name__ == "__main__":
    main()
