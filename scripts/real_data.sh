#!/usr/bin/env bash
# The real-data results, side by side on one GPU: each run trains for at most MINUTES (the learning-rate schedule
# follows the clock, so a run cut short has still annealed), then tests its best checkpoint.
#
# Usage, from the repository root:  bash scripts/real_data.sh RUNS_DIR [DATA_DIR] [MINUTES]
#   RUNS_DIR  where the run directories go (one per result); DATA_DIR defaults to ../shared/data; MINUTES to 7.
# Each run writes RUNS_DIR/NAME/{config.json,metrics.csv,curves.png,results.json,model/} and RUNS_DIR/NAME.log;
# RUNS_DIR/summary.txt collects every results.json. Measured on one H200 (2026-11-28, six runs side by side, 6 minutes,
# earlier defaults: the small DNA model without dropout, no speed perturbation): E. coli 1.844 bits/base (order-6
# Markov 1.934), MNIST pixels 97.75%, patches 99.3%, spoken digits 92.8%, promoters 87.5%, splice 86.3% (all three
# overfitting: train loss near 0 from mid-run); the settings below answer that and are not yet measured.
# Targets: spoken digits >= 97% test accuracy from the raw waveform, splice >= 96%, promoters >= 90%, MNIST as
# 784-pixel sequences >= 97% (and 4x4 patches), E. coli <= 1.92 bits per base next to the order-k Markov baseline
# that the same run reports.
set -uo pipefail
RUNS=${1:?usage: bash scripts/real_data.sh RUNS_DIR [DATA_DIR] [MINUTES]}
DATA=${2:-../shared/data}
MINUTES=${3:-7}
SB=${SEQBACKBONE:-python3 -m seqbackbone}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1

run() {  # name, task, data, extra flags...
    local name=$1 task=$2 data=$3; shift 3
    # the wall-clock cap: training stops at MINUTES, testing needs well under 2 more
    timeout $(( ${MINUTES%.*} * 60 + 150 )) $SB train "$task" --data "$data" --device cuda --time-limit "$MINUTES" \
        --out "$RUNS/$name" --no-progress "$@" > "$RUNS/$name.log" 2>&1
    echo "exit status $?" >> "$RUNS/$name.log"
}

# Splice junctions are strand-specific (every sequence is read on its gene's strand): no reverse complements there.
run spoken-digits      spoken-digits  "$DATA/fsdd"          --model mamba_audio_cls_small --epochs 40 --batch-size 32 --lr 1e-3 &
run spoken-digits-mel  spoken-digits  "$DATA/fsdd"          --model mamba_audio_mel_cls_small --epochs 40 --batch-size 32 --lr 1e-3 &
run splice             dna-classify   "$DATA/dna/splice"    --model mamba_dna_cls_tiny --epochs 40 --batch-size 32 --lr 1e-3 \
    --set rc_augment=false --set rc_conjoin=false &
run promoters          dna-classify   "$DATA/dna/promoters" --model mamba_dna_cls_tiny --epochs 30 --batch-size 64 --lr 1e-3 &
run mnist-pixels       image-classify "$DATA/images/mnist"  --model mamba_pixel_tiny --epochs 30 --batch-size 64 --lr 2e-3 &
run mnist-patches      image-classify "$DATA/images/mnist"  --model vimamba_tiny_patch4_28 --epochs 60 --batch-size 64 --lr 2e-3 &
run ecoli              genome-lm      "$DATA/dna/ecoli/ecoli_train.fa.gz" --model mamba_dna_lm_small --epochs 40 \
    --batch-size 32 --lr 2e-3 --set seq_len=2048 &
wait

for f in "$RUNS"/*/results.json; do echo "$f"; cat "$f"; echo; done > "$RUNS/summary.txt"
cat "$RUNS/summary.txt"
