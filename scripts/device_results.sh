#!/usr/bin/env bash
# One call on a GPU machine (two GPUs if present): the decoding benchmark, the real-data training runs side by side on
# the first GPU, GPU tests and kernel / model benchmarks on the last, a two-process DDP check when there are two GPUs,
# all packed into $OUT/results.tar.gz. PARTS picks what runs: decode (the decoding benchmark), scanvariants (the
# sequential scan's code variants, scripts/scan_bwd_variants.py), decodecheck (the one-kernel decoding step against the
# layer-by-layer one, its variants in DECODE_VARIANTS, and its cost breakdown), decodetrace (each phase of the
# step timed from inside the kernel: decode_gpu_check.py --trace), runs (scripts/real_data.sh), promoters
# (scripts/promoters_sweep.sh), ddp, tests, kernels, models. Timed parts run first, alone on the GPU. Time limits and
# options: SCANVAR_S / SCANVAR_ARGS, DECODE_CHECK_S / DECODE_VARIANTS, TRACE_S / TRACE_TUNE (KEY=VALUE ... for the
# traced kernel, e.g. FLAGGED=1), BREAKDOWN_S / BREAKDOWN_TUNE
# (KEY=VALUE ... for the breakdown's kernel), KERNELS_S / KERNELS_ARGS, TESTS_S / TEST_TIMEOUT_S / TEST_ARGS,
# PROMOTERS_MINUTES, DEADLINE (seconds before the archive is packed whatever still runs).
# Usage (repo root, data copied to DATA, soundfile wheels in .whl): bash scripts/device_results.sh DATA MINUTES
set -uo pipefail
DATA=${1:-../shared/data}
MINUTES=${2:-6}
PARTS=${PARTS:-"decode runs ddp tests kernels models"}  # what to do (see above)
has() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=${OUT:-out}
R=/tmp/results  # only the archive goes to $OUT (the call returns few files and two folder levels)
mkdir -p "$R"/runs "$R"/bench "$R"/logs
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
start=$(date +%s)
pack() { tar -czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='*.ckpt' -C /tmp results; cp "$R/summary.txt" "$OUT/" 2>/dev/null; }
trap pack EXIT
# the call is cut at 600 s: pack what exists shortly before, whatever is still running
# (its own output closed, and its sleep killed at the end: an orphaned sleep holding stdout kept the call open)
(sleep ${DEADLINE:-560} & echo $! > /tmp/watchdog_sleep; wait; pack) > /dev/null 2>&1 &
WATCHDOG=$!

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
pip install --no-deps --no-build-isolation -e . -q --root-user-action=ignore 2>&1 | tail -2
python3 -c "import seqbackbone.kernels" 2>/dev/null || { ln -sfn ../kernels seqbackbone/kernels; ln -sfn ../tasks seqbackbone/tasks; }
# scripts run by path do not have the repository root on sys.path
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
} | tee "$R/logs/env.txt"
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
LAST=$((NGPU - 1))
SB="python3 -m seqbackbone"

# 1. Decoding benchmark first, alone on the GPU (timings).
has decode && timeout ${DECODE_S:-90} python3 -m seqbackbone.bench.decode --out "$R/bench/decode.md" --no-compile ${DECODE_ARGS:-} \
    > "$R/bench/decode.txt" 2>&1

# 1b. Code variants of the scan and of the one-kernel decoding step, and the step's cost breakdown (timings, alone).
has scanvariants && timeout ${SCANVAR_S:-240} python3 scripts/scan_bwd_variants.py --out "$R/bench/scan_bwd_variants.json" ${SCANVAR_ARGS:-} \
    > "$R/bench/scan_bwd_variants.txt" 2>&1
if has decodecheck; then
    timeout ${DECODE_CHECK_S:-300} python3 scripts/decode_gpu_check.py --timeout $(( ${DECODE_CHECK_S:-300} - 10 )) \
        --steps 20 --replays 200 ${DECODE_VARIANTS:+--variants $DECODE_VARIANTS} \
        > "$R/bench/decode_check.txt" 2>&1
    timeout ${BREAKDOWN_S:-160} python3 scripts/decode_gpu_check.py --breakdown --replays 100 \
        --timeout $(( ${BREAKDOWN_S:-160} - 10 )) ${BREAKDOWN_TUNE:+--tune $BREAKDOWN_TUNE} > "$R/bench/decode_breakdown.txt" 2>&1
fi

has decodetrace && timeout ${TRACE_S:-120} python3 scripts/decode_gpu_check.py --trace --batch-sizes 1 8 \
    --timeout $(( ${TRACE_S:-120} - 10 )) ${TRACE_TUNE:+--tune $TRACE_TUNE} > "$R/bench/decode_trace.txt" 2>&1

# 2. Real-data runs (scripts/real_data.sh, the waveform language model and its samples included), side by side on GPU 0.
RUNS=()
if has runs; then
    CUDA_VISIBLE_DEVICES=0 bash scripts/real_data.sh "$R/runs" "$DATA" "$MINUTES" > "$R/logs/real_data.txt" 2>&1 &
    RUNS+=($!)
fi

if has promoters; then
    CUDA_VISIBLE_DEVICES=0 bash scripts/promoters_sweep.sh "$R/runs/promoters" "$DATA" "${PROMOTERS_MINUTES:-7}" \
        > "$R/logs/promoters.txt" 2>&1 &
    RUNS+=($!)
fi

# 3. DDP on two GPUs (a short dna-motifs run), when there are two.
if has ddp && [ "$NGPU" -ge 2 ]; then
    timeout 90 torchrun --standalone --nproc_per_node 2 -m seqbackbone train dna-motifs --device cuda \
        --max-steps 40 --out "$R/runs/ddp-dna-motifs" --no-progress > "$R/logs/ddp.txt" 2>&1
    echo "ddp exit $?" >> "$R/logs/ddp.txt"
fi

# 4. On the last GPU: the kernel benchmark, GPU tests (beside the runs when there is one GPU: correctness only), the
# model benchmark.
export CUDA_VISIBLE_DEVICES=$LAST
has kernels && timeout ${KERNELS_S:-300} python3 -m seqbackbone.bench kernels ${KERNELS_ARGS:-} > "$R/bench/kernels.txt" 2>&1
# -v and a per-test limit: a cut run still names every test it finished and prints its summary; TEST_ARGS, e.g.
# "-n 6" (pytest-xdist, where installed), runs them in several processes, so their kernels compile side by side
has tests && timeout ${TESTS_S:-240} python3 -m pytest -v -rfE --timeout ${TEST_TIMEOUT_S:-150} -m gpu -p no:cacheprovider \
    ${TEST_ARGS:-} tests > "$R/logs/gpu_tests.txt" 2>&1
has models && python3 -m seqbackbone.bench models --out "$R/bench/models" --budget-s ${MODELS_BUDGET:-120} > "$R/bench/models.txt" 2>&1
unset CUDA_VISIBLE_DEVICES
[ ${#RUNS[@]} -gt 0 ] && wait "${RUNS[@]}"
for f in "$R"/runs/*/results.json "$R"/runs/promoters/*/results.json; do echo "$f"; cat "$f"; echo; done > "$R/summary.txt"
echo "elapsed $(( $(date +%s) - start )) s" >> "$R/summary.txt"
cat "$R/summary.txt"
kill $WATCHDOG $(cat /tmp/watchdog_sleep 2>/dev/null) 2>/dev/null
