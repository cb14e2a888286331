#!/usr/bin/env bash
# The scaling and overlap runs of docs/distributed.md: `qkv train vit` (the
# default model, batch 128, no augmentation) for STEPS steps as
#   one process at 1 thread, one process at 2 threads (2 shards),
#   2 ranks of 1 thread (mpirun), with and without the overlap,
#   2 ranks over injected links (QKV_COMM_LINK), with and without it.
# Prints each run's epoch line (examples/s) and the trainer's all-reduce
# line. Usage: scripts/ddp_scaling.sh [BUILD_DIR] [STEPS] [LINKS...]
# (LINKS as LATENCY_US:GBIT_S; default 50:0.1 50:0.03). Timings on a shared
# machine vary with its load: run it when it is quiet, or read the ratios.
set -euo pipefail
build=${1:-build}
steps=${2:-40}
shift $(( $# > 2 ? 2 : $# )) || true
links=("$@")
[ ${#links[@]} -gt 0 ] || links=(50:0.1 50:0.03)
qkv=$build/qkv
mpirun=(mpirun --oversubscribe --allow-run-as-root -np 2)
out=$(mktemp -d /tmp/qkv-scaling-XXXXXX)
trap 'rm -rf "$out"' EXIT
args=(train vit --preset default --epochs 1 --limit $((128 * steps)) --eval-limit 500
      --no-augment)
export QKV_PROGRESS=0

run() { # name, command...
    local name=$1
    shift
    echo "== $name"
    rm -rf "$out/run"
    "$@" "${args[@]}" --out-dir "$out/run" | grep -E "^epoch|^all-reduce" || true
}

run "1 process, 1 thread" "$qkv" --threads 1
run "1 process, 2 threads" "$qkv" --threads 2
run "2 ranks x 1 thread, overlap" "${mpirun[@]}" "$qkv"
QKV_DDP_OVERLAP=0 run "2 ranks x 1 thread, no overlap" "${mpirun[@]}" "$qkv"
for link in "${links[@]}"; do
    QKV_COMM_LINK=$link run "2 ranks, link $link, overlap" "${mpirun[@]}" "$qkv"
    QKV_COMM_LINK=$link QKV_DDP_OVERLAP=0 run "2 ranks, link $link, no overlap" \
        "${mpirun[@]}" "$qkv"
done
