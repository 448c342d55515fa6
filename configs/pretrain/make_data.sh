#!/usr/bin/env bash
# Builds the caption-pretraining data of the shapes world into runs/pretrain-data (not bundled):
#   bash configs/pretrain/make_data.sh [TRAIN_SAMPLES]
# Caption samples carry a caption and up to 12 dense visual questions each (Sample.qa); the
# pretraining task turns every visit of a sample into ONE sequence (caption or one question), so
# 40k samples give ~500k distinct training sequences. Val is in-distribution (test-id-like);
# test-ood has held-out colour-shape pairs and the alternative rendering style. ~220 samples/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/pretrain-data
train=${1:-40000}
for spec in "train $train 10" "val 1000 11" "test-id 1000 12" "test-ood 1000 13"; do
    read -r split samples seed <<<"$spec"
    python -m rewarddance data shapes --out "$out/$split" --split "$split" --samples "$samples" --seed "$seed" \
        --kinds '[caption]'
done
du -sh "$out"
