#!/usr/bin/env bash
# Regenerates the bundled shapes shards bit-for-bit: bash data/make_shapes.sh
# Clean renders (noise 0) in gzip shards keep the bundle small; the builder's default adds
# pixel noise, and the oracle is validated with noise on (benchmarks/oracle_agreement.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/shapes
rm -rf "$out"
for spec in "train 8000 0" "val 200 1" "test-id 2000 2" "test-ood 2000 3"; do
    read -r split samples seed <<<"$spec"
    python -m rewarddance data shapes --out "$out/$split" --split "$split" --samples "$samples" --seed "$seed" \
        --noise 0 --compress true
done
du -sh "$out"
