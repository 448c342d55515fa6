#!/usr/bin/env bash
# Rebuilds the on-policy data of data/reward_models/shapes-rm-onpolicy into runs/onpolicy (not bundled), for
# configs/reward/shapes_pairwise_onpolicy.yaml:
#   bash configs/reward/make_onpolicy_data.sh            # about 3.5 hours on the 2-core CPU machine
#   SMOKE=1 bash configs/reward/make_onpolicy_data.sh    # every command at a hundredth of its size (a few minutes)
# 1. The policies: DiffusionNFT from the early generator with the pixel oracle as the reward (the RL recipe of
#    docs/rl_recipe.md), seed 0 with 4 and with 8 updates per batch, and seed 1 (whose policy only the held-out set
#    val-s1 samples). Checkpoints along the runs are exported as diffusers folders.
# 2. Round 1: groups of 8 samples per prompt, up to 6 (correct, incorrect) pairs each, from the early generator and
#    three policies along the seed-0 run. Round 2: groups of 16, up to 20 pairs, and every judged sample also as a
#    pointwise sample (--points true), from those four and the 8-update run's end. The oracle judges every sample.
#    Position and colour attribution have hundreds of prompts; the four other tags few, so they get more rounds.
# 3. Held-out pairs of val prompts: the early generator's (val-base) and the seed-1 policy's (val-s1).
# Two lanes, one per core. Same commands, seeds and order as the bundled model's data (docs/generated_pairs.md);
# the RL runs then were resumed once from a checkpoint, which issue 11's exact resume makes the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/onpolicy}
early=data/generators/shapes-t2i-early
export OMP_NUM_THREADS=1
scale() { if [[ -n "${SMOKE:-}" ]]; then echo $(( ($1 + 99) / 100 )); else echo "$1"; fi; }
many=$(scale 100) held=$(scale 30)
rounds() { if [[ -n "${SMOKE:-}" ]]; then echo 1; else echo "$1"; fi; }

policy() {  # policy NAME SEED UPDATES_PER_BATCH STEP... : an oracle-reward NFT run, its checkpoints at STEPs exported
    local name=$1 seed=$2 reuse=$3 dir=$out/policies/$1 every
    shift 3
    local steps=() s
    for s in "$@"; do steps+=("$(scale "$s")"); done
    every=${steps[0]}
    for s in "${steps[@]}"; do every=$(python -c "import math; print(math.gcd($every, $s))"); done
    python -m rewarddance fit --config configs/rl/shapes_nft.yaml --trainer.default_root_dir "$dir" \
        --trainer.logger.init_args.save_dir "$dir" --trainer.max_steps "${steps[-1]}" \
        --trainer.enable_progress_bar false --seed_everything="$seed" --model.init_args.seed="$seed" \
        --data.init_args.seed="$seed" --model.init_args.generator=$early --model.init_args.reward=shapes-oracle \
        --model.init_args.eval_every=0 --model.init_args.nft.rollout_reuse="$reuse" \
        --model.init_args.optimizer.init_args.lr=5e-4 \
        "--trainer.callbacks+={\"class_path\": \"lightning.pytorch.callbacks.ModelCheckpoint\", \"init_args\": {\"every_n_train_steps\": $every, \"save_top_k\": -1, \"dirpath\": \"$dir/at\", \"filename\": \"{step}\", \"mode\": \"max\"}}" \
        > "$dir.log" 2>&1
    for s in "${steps[@]}"; do
        python -m rewarddance export --checkpoint "$dir/at/step=$s.ckpt" --out "$dir/step=$s" >> "$dir.log" 2>&1
    done
}

generated() {  # generated GENERATOR OUT SEED [more args] : oracle-judged samples of the generator's own
    local gen=$1 dest=$2 seed=$3
    shift 3
    python -m rewarddance data generated --generator "$gen" --out "$dest" --seed "$seed" --steps 10 \
        --guidance_scale 2.0 "$@" > "$dest.log" 2>&1
}

r1_opts=(--samples_per_prompt 8 --max_pairs 6)  # round 1 and the held-out sets
r2_opts=(--samples_per_prompt 16 --max_pairs 20 --points true)

lane() {  # lane ROUND TAGS ROUNDS SEEDBASE NAME GENERATOR... : one tag group's data from each generator in turn
    local round=$1 tags=$2 n=$3 base=$4 name=$5 g=0 gen
    local -n opts=${round}_opts
    shift 5
    for gen in "$@"; do
        generated "$gen" "$out/$round/train-$name-g$g" $((base + g)) --tags "$tags" --per_tag "$many" \
            --rounds "$(rounds "$n")" "${opts[@]}"
        g=$((g + 1))
    done
}

mkdir -p "$out/policies" "$out/r1" "$out/r2"
policy s0-r4 0 4 400 1200 2000 &
{ policy s0-r8 0 8 1900; policy s1-r4 1 4 800; } &
wait
p=$out/policies
r1=("$early" "$p/s0-r4/step=$(scale 400)" "$p/s0-r4/step=$(scale 1200)" "$p/s0-r4/step=$(scale 2000)")
r2=("${r1[@]}" "$p/s0-r8/step=$(scale 1900)")
rare='[position, color_attr]' few='[counting, two_object, colors, single_object]'
{ lane r1 "$rare" 1 100 a "${r1[@]}"; lane r2 "$rare" 1 500 a "${r2[@]}"; } &
{ lane r1 "$few" 4 200 b "${r1[@]}"; lane r2 "$few" 4 600 b "${r2[@]}"; } &
wait
generated "$early" "$out/val-base" 300 --split val --per_tag "$held" --rounds "$(rounds 2)" "${r1_opts[@]}" &
generated "$p/s1-r4/step=$(scale 800)" "$out/val-s1" 301 --split val --per_tag "$held" --rounds "$(rounds 2)" \
    "${r1_opts[@]}" &
wait
du -sh "$out"
