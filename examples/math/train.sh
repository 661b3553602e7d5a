#!/usr/bin/env bash
# Reproduce examples/adapters/math_specialist on the embedded SmolLM2-135M-Instruct (CPU).
# Data is regenerated from the seed first (identical train.jsonl, same data_sha256).
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE  # no busy-waiting threads when the CPU is shared
cd "$(dirname "$0")/../.."
python examples/math/generate_data.py --seed 0
adaptrix train \
  --data examples/math/train.jsonl \
  --output examples/adapters/math_specialist \
  --rank 8 --lr 2e-3 --batch-size 16 --max-steps 100 --save-every 10 --seed 0 --threads 2 \
  --task-type math --description "Answers arithmetic questions (two-digit times one-digit, +, -) showing tens-and-units working, ending with 'The answer is N.'" \
  --resume "$@"
