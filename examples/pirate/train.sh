#!/usr/bin/env bash
# Reproduce examples/adapters/pirate_style on the embedded SmolLM2-135M-Instruct (CPU, a few minutes).
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
cd "$(dirname "$0")/../.."
python examples/pirate/generate_data.py --seed 0
adaptrix train \
  --data examples/pirate/train.jsonl \
  --output examples/adapters/pirate_style \
  --rank 4 --lr 2e-3 --batch-size 8 --max-steps 40 --save-every 10 --seed 0 --threads 2 \
  --task-type chat --description "Answers in a pirate's voice: 'Arr, matey! ... Yo ho ho!'" \
  --resume "$@"
