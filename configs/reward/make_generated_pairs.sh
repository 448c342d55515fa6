#!/usr/bin/env bash
# Builds preference pairs of the bundled shapes generator's own samples, judged by the pixel oracle (the
# annotator), into runs/generated-pairs (not bundled), for configs/reward/shapes_pairwise_generated.yaml:
#   bash configs/reward/make_generated_pairs.sh
# Each prompt gets 4 samples per round (the generator's sampling defaults: 20 steps, guidance 2); up to 3
# (correct, incorrect) pairs per prompt and round. Position and colour attribution have hundreds of distinct
# prompts; counting, two objects, colours and single objects have few (9, 6, 24, 3), so they get more rounds.
# Two processes, one per core, about 17 minutes on the 2-core CPU machine (~0.2 s per sample per core), then
# a held-out set from the val prompts (~4 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/generated-pairs
gen=data/generators/shapes-t2i
export OMP_NUM_THREADS=1
python -m rewarddance data generated --generator $gen --out $out/train-a --per_tag 100 \
    --tags '[position, color_attr]' --rounds 5 --max_pairs 3 --seed 1 &
python -m rewarddance data generated --generator $gen --out $out/train-b --per_tag 100 \
    --tags '[counting, two_object, colors, single_object]' --rounds 24 --max_pairs 3 --seed 2 &
wait
python -m rewarddance data generated --generator $gen --out $out/val --split val --per_tag 30 --rounds 2 \
    --max_pairs 3 --seed 3
du -sh $out
