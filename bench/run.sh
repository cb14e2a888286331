#!/usr/bin/env bash
# run.sh - `make bench`: qkv against PyTorch on this machine, same thread
# count, one report. Peers: Debian's PyTorch (/usr/bin/python3) and the
# newest PyTorch from PyPI in .venv (scripts/bench-setup.sh makes it).
#
#   bash bench/run.sh [BUILD] [--threads N] [--only ops|models|coco]
#                                               (default N: $QKV_THREADS, else 2)
#
# Three parts: the ops table (bench_ops.c, peer_ops.py), then the models
# (multi-head attention, the Transformer, the ViT: bench_{mha,transformer,vit}.c
# and peer_{mha,transformer,vit}.py), each case in a fresh process so that
# its peak RSS is its own; then `qkv coco-eval` against pycocotools and
# faster-coco-eval (coco_bench.py). The report is printed and also written to
# BUILD/bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$1; shift; fi
threads=${QKV_THREADS:-2}
only=
while [ $# -gt 0 ]; do
    case $1 in
    --threads) threads=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# the library's own compiler and flags, from the Makefile
mapfile -t f < <(make -s --no-print-directory -f Makefile -f bench/flags.mk bench-flags BUILD="$build")
cc=${f[0]} cflags=${f[1]} ldflags=${f[2]} ldlibs=${f[3]}
for b in ops mha transformer vit; do
    # shellcheck disable=SC2086
    $cc $cflags -o "$build/bench_$b" "bench/bench_$b.c" "$build/libqkv.a" $ldflags $ldlibs
done

out=$build/bench-results
mkdir -p "$out" "$out/models"
rm -f "$out"/*.txt "$out"/models/*.txt
# the same thread count for every runtime: qkv's OpenMP, torch's OpenMP and
# intra-op pool, OpenBLAS and MKL
export QKV_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
       MKL_NUM_THREADS=$threads
# libgomp's spin before an idle worker sleeps, as the qkv CLI sets it for
# itself (tools/qkv/main.c); every runtime here uses libgomp and gets it
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-300000}

if ! .venv/bin/python -c 'import torch, torchvision, pycocotools, faster_coco_eval' 2>/dev/null; then
    echo "no PyTorch, torchvision, pycocotools or faster-coco-eval in .venv: running scripts/bench-setup.sh" >&2
    bash scripts/bench-setup.sh >&2 || echo "bench-setup failed: PyPI peer left out" >&2
fi
peers=(/usr/bin/python3)
.venv/bin/python -c 'import torch' 2>/dev/null && peers+=(.venv/bin/python)

load_before=$(cut -d' ' -f1 /proc/loadavg)
if [ -z "$only" ] || [ "$only" = ops ]; then
    echo "qkv ..." >&2
    "$build/bench_ops" --threads "$threads" >"$out/1-qkv.txt"
    echo "PyTorch (Debian, /usr/bin/python3) ..." >&2
    /usr/bin/python3 bench/peer_ops.py --threads "$threads" >"$out/2-torch-debian.txt"
    if [ ${#peers[@]} -gt 1 ]; then
        echo "PyTorch (PyPI, .venv) ..." >&2
        .venv/bin/python bench/peer_ops.py --threads "$threads" >"$out/3-torch-pypi.txt"
    fi
fi
load_ops=$(cut -d' ' -f1 /proc/loadavg)

# the models: per case qkv, then each peer, one after the other, so that
# all three see the same load. The book Transformer's step (a few ms; this
# 2-core machine has slow spells of tens of seconds) runs in five such
# rounds and the table takes each one's median.
if [ -z "$only" ] || [ "$only" = models ]; then
    for c in mha:mha_small:1 mha:mha_large:1 transformer:tf_book:5 transformer:tf_book_full:5 transformer:tf_large:1 \
             vit:vit_train:1 vit:vitb16_b1:1 vit:vitb16_b8:1; do
        prog=${c%%:*} rest=${c#*:}
        case=${rest%%:*} rounds=${rest#*:}
        for ((round = 1; round <= rounds; round++)); do
            echo "$case: qkv ... (round $round of $rounds)" >&2
            "$build/bench_$prog" "$case" --threads "$threads" >>"$out/models/1-qkv.txt" ||
                echo "${case}_ms n/a" >>"$out/models/1-qkv.txt"
            for i in "${!peers[@]}"; do
                echo "$case: PyTorch (${peers[$i]}) ..." >&2
                # PyTorch's warnings (nested tensors, masks) are not results
                "${peers[$i]}" -W ignore "bench/peer_$prog.py" "$case" --threads "$threads" \
                    >>"$out/models/$((i + 2))-torch.txt" ||
                    echo "${case}_ms n/a" >>"$out/models/$((i + 2))-torch.txt"
            done
        done
    done
fi
load_after=$(cut -d' ' -f1 /proc/loadavg)

# COCO evaluation: the whole command against the PyPI peers, in rounds
rm -f "$out/coco.md"
if [ -z "$only" ] || [ "$only" = coco ]; then
    .venv/bin/python bench/coco_bench.py --build "$build" --threads "$threads" >"$out/coco.md" ||
        { echo "coco bench failed" >&2; rm -f "$out/coco.md"; }
fi

{
    model=$(lscpu | sed -n 's/^Model name: *//p')
    cores=$(nproc)
    isa=$(grep -o -w -m1 -E 'avx512f' /proc/cpuinfo >/dev/null && echo "AVX-512" || echo "no AVX-512")
    echo "Machine: $model, $cores cores ($isa); $threads threads everywhere; $(date -u +%Y-%m-%d)."
    echo "Debian's libblas.so.3: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu)"
    # other work on the machine distorts every number: say how much there was
    echo "Load average (1 min) before, after the ops and after the models:" \
         "$load_before, $load_ops, $load_after."
    if [ -z "$only" ] || [ "$only" = ops ]; then
        echo
        echo "### Ops"
        echo
        /usr/bin/python3 bench/table.py "$out"/*.txt
    fi
    if [ -z "$only" ] || [ "$only" = models ]; then
        echo
        echo "### Models"
        echo
        /usr/bin/python3 bench/table_models.py "$out"/models/*.txt
    fi
    if [ -s "$out/coco.md" ]; then
        echo
        echo "### COCO evaluation"
        echo
        cat "$out/coco.md"
    fi
} | tee "$build/bench.md"
