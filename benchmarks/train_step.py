"""Step time of natural training vs PGD-K adversarial training, as a ratio measured in one run.

Target (DESIGN.md): PGD-10 step ≤ 1.10 × 11 natural steps (an attack step costs a forward and a
backward, as does the update). Example:

    python benchmarks/train_step.py --model small_cnn --batch-size 128 --size 8 --channels 1
    python benchmarks/train_step.py --model preact_resnet18 --batch-size 128 --repeats 3
    python benchmarks/train_step.py --model preact_resnet_small --model-options '{width: 16, depths: [1, 1, 1, 1]}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds, step_fn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=None, help="image side (default 8 for small_cnn, else 32)")
    parser.add_argument("--channels", type=int, default=None, help="default 1 for small_cnn, else 3")
    parser.add_argument("--steps", type=int, default=10, help="attack steps K")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model-options", type=yaml.safe_load, default={}, help="YAML mapping, e.g. '{width: 16}'")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    small = args.model == "small_cnn"
    size = args.size or (8 if small else 32)
    channels = args.channels or (1 if small else 3)
    device = torch.device(args.device)
    common = dict(batch_size=args.batch_size, channels=channels, size=size, num_classes=10, device=device,
                  steps=args.steps, amp=args.amp, model_options=args.model_options)
    natural, natural_spread = median_seconds(step_fn(args.model, "natural", **common), warmup=args.warmup,
                                             repeats=args.repeats, device=device)
    adv, adv_spread = median_seconds(step_fn(args.model, "pgd_at", **common), warmup=args.warmup,
                                     repeats=max(args.repeats // 4, 3), device=device)
    ratio = adv / ((args.steps + 1) * natural)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model} "
          f"{args.model_options}, batch {args.batch_size}, input {channels}x{size}x{size}, amp {args.amp}")
    print(f"natural step    median {1000 * natural:9.2f} ms (spread {1000 * natural_spread:.2f})")
    print(f"PGD-{args.steps} AT step  median {1000 * adv:9.2f} ms (spread {1000 * adv_spread:.2f})")
    print(f"ratio PGD-{args.steps} step / ({args.steps + 1} x natural step) = {ratio:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
