"""Step time of each plug-in relative to its base method, same model and batch, measured in one run.

Targets (DESIGN.md): FSR ≤ 1.15, AFD ≤ 1.25, ANCRA ≤ 2.2 (a second 10-step attack for negatives),
UAD as low as its design allows; issue 9: AWP ≤ 1.2 × the method it wraps, FGSM-RS and N-FGSM ≤ 0.25 ×
a PGD-AT step with a 10-step attack (``--steps 10``). Example:

    python benchmarks/method_overhead.py --model resnet18 --batch-size 32 --size 32 --repeats 3
    python benchmarks/method_overhead.py --model small_cnn --batch-size 128
    python benchmarks/method_overhead.py --methods pgd_at+awp trades+awp fgsm_rs n_fgsm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds, step_fn  # noqa: E402

from robustlab.methods import PLUGINS, method_names  # noqa: E402

# methods that are not plug-ins, compared with the base they replace (fast AT: with PGD-AT's K-step attack)
EXTRA = {"afd": "pgd_at", "fgsm_rs": "pgd_at", "n_fgsm": "pgd_at"}


def pairs(selected: list[str] | None) -> list[tuple[str, str]]:
    """(candidate, baseline) pairs: every ...+plugin against the method it wraps, and EXTRA."""
    found = [(n, n.rsplit("+", 1)[0]) for n in method_names() if "+" in n and n.rsplit("+", 1)[1] in PLUGINS]
    found += [(m, b) for m, b in EXTRA.items() if m in method_names()]
    return [p for p in found if selected is None or p[0] in selected]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="e.g. pgd_at+fsr trades+ancra afd")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    small = args.model == "small_cnn"
    size, channels = args.size or (8 if small else 32), args.channels or (1 if small else 3)
    device = torch.device(args.device)
    common = dict(batch_size=args.batch_size, channels=channels, size=size, num_classes=10, device=device,
                  steps=args.steps)
    cache: dict[str, float] = {}

    def timed(name: str) -> float:
        if name not in cache:
            cache[name] = median_seconds(step_fn(args.model, name, **common), warmup=args.warmup,
                                         repeats=args.repeats, device=device)[0]
        return cache[name]

    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
          f"batch {args.batch_size}, input {channels}x{size}x{size}, attack steps {args.steps}")
    print(f"{'method':<18} {'base':<12} {'step ms':>9} {'base ms':>9} {'ratio':>6}")
    for method, base in pairs(args.methods):
        t, b = timed(method), timed(base)
        print(f"{method:<18} {base:<12} {1000 * t:>9.2f} {1000 * b:>9.2f} {t / b:>6.2f}")


if __name__ == "__main__":
    main()
