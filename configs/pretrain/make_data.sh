#!/usr/bin/env bash
# Builds the caption-pretraining data of the shapes world into runs/pretrain-data (not bundled):
#   bash configs/pretrain/make_data.sh [TRAIN_SAMPLES]
# Caption samples carry a caption and up to 12 dense visual questions each (Sample.qa); the
# pretraining task turns every visit of a sample into ONE sequence (caption or one question), so
# 40k samples give ~500k distinct training sequences. A quarter of the training scenes are drawn
# in the alt rendering style (train-alt): a pretrained VLM has seen many styles, as web-pretrained
# ones have; the held-out colour-shape and relation combinations stay out of both train sets, and
# the reward-model shards (data/shapes/train) stay default-style only, so test-ood is still
# out of distribution for the reward model. Val is in-distribution (test-id-like); test-ood has
# the held-out combinations in the alt style. ~220 samples/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/pretrain-data
train=${1:-40000}
alt=$((train / 4))
for spec in "train $((train - alt)) 10 auto" "train-alt $alt 14 alt" "val 1000 11 auto" "test-id 1000 12 auto" \
    "test-ood 1000 13 auto"; do
    read -r name samples seed style <<<"$spec"
    split=${name%-alt}
    python -m rewarddance data shapes --out "$out/$name" --split "$split" --samples "$samples" --seed "$seed" \
        --kinds '[caption]' --style "$style"
done
du -sh "$out"
