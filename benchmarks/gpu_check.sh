#!/usr/bin/env bash
# One command for the first GPU: install, run the tests that touch the CUDA/bf16/fp16/compile paths,
# then print one timing table (benchmarks/gpu_check.py: PGD-10 AT steps of PreAct-ResNet-18 and
# WRN-34-10, standard AutoAttack ours vs pyautoattack), then (CUDA only) benchmarks/fast_batching.py's
# refilled/stacked batching of `fast` at working batches 32 and 256. Stops at the first error (set -euo pipefail).
#
#   bash benchmarks/gpu_check.sh              # CUDA machine; estimate 6-8 minutes on one H100 (never run yet)
#   bash benchmarks/gpu_check.sh --cpu --tiny # CPU smoke test in seconds (tests/test_gpu_check.py)
#
# Options: --cpu (no GPU needed), --tiny (tiny models and batches), --no-install (skip `make install`).
# The interpreter is $PYTHON when set, else .venv/bin/python; `make install` runs only when neither
# exists (CI and a second run have installed already).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cpu=0 tiny=0 install=1
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    --tiny) tiny=1 ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $arg (use --cpu, --tiny, --no-install)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-.venv/bin/python}"
if [[ $install == 1 && -z "${PYTHON:-}" && ! -x $python ]]; then
  echo "== make install"
  make install
fi
if [[ $cpu == 0 ]]; then
  "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device; use --cpu --tiny on a machine without one')"
fi

echo "== tests that touch the CUDA, bf16, fp16 and compile paths"
# tests/test_gpu_paths.py skips without CUDA (running it here still checks that it imports and collects);
# on CUDA, the CPU-side tests of the same options run too: with train.device=auto they train on the GPU.
"$python" -m pytest -q -x -p no:cacheprovider tests/test_gpu_paths.py
if [[ $cpu == 0 ]]; then
  "$python" -m pytest -q -x -p no:cacheprovider tests/train/test_train.py tests/test_configs.py \
    -k "bf16 or fp16 or compile or channels_last or paper_config"
fi

echo "== timing table"
flags=()
[[ $cpu == 1 ]] && flags+=(--cpu)
[[ $tiny == 1 ]] && flags+=(--tiny)
"$python" benchmarks/gpu_check.py ${flags[@]+"${flags[@]}"}  # (safe with set -u on old bash)

if [[ $cpu == 0 ]]; then
  echo "== fast batching on the GPU (issue 18: refilled vs shrinking batches, stacked vs sequential targets)"
  # the digits PGD-AT model of benchmarks/fast_eval.py's zoo: trained here in seconds, or found finished
  "$python" -m robustlab train digits_pgd_at out_dir=runs/fast_eval name=digits_pgd_at --quiet
  for batch in 32 256; do
    "$python" benchmarks/fast_batching.py --model runs/fast_eval/digits_pgd_at --device cuda --batch "$batch"
  done
fi
