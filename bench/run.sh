#!/usr/bin/env bash
# run.sh - `make bench`: qkv against its strongest peers on this machine, the
# same thread count on every side, on equal work, one report.
#
#   bash bench/run.sh [BUILD] [--threads LIST] [--rounds N] [--only ops|models|coco]
#                     [--cases LIST] [--debian] [--no-compile]
#
#   --threads 2,1   thread counts, each a table of its own (default: 2,1, or
#                   $QKV_THREADS alone when it is set)
#   --rounds N      rounds per model case (default 5)
#   --cases LIST    model cases to run (default all): mha_small, mha_large,
#                   tf_book, tf_large, vit_train, vitb16_b1, vitb16_b8, moco_v2,
#                   moco_vit, detr_r50, detr_train
#   --debian        Debian's PyTorch 1.13 as one more model peer (the ops
#                   table always has it)
#   --no-compile    leave torch.compile out (it compiles in every round)
#
# Peers: eager PyTorch from PyPI (.venv, scripts/bench-setup.sh makes it),
# the same under torch.compile (default mode, Inductor on CPU), ONNX Runtime
# (PyPI, fp32) for ViT-B/16 inference, and for the ops table also Debian's
# PyTorch (/usr/bin/python3).
#
# Three parts: the ops table (bench_ops.c, peer_ops.py), the models
# (multi-head attention, the Transformer, the ViT, MoCo v2: bench_{mha,
# transformer,vit,moco}.c, peer_{mha,transformer,vit,moco}.py, peer_ort.py). Every model case runs
# in N interleaved rounds: in each, every side once, in a fresh process (so
# that its peak RSS is its own), the order rotating from round to round;
# the table gives each side's median and range over the rounds, and calls a
# ratio whose ranges overlap a tie. qkv runs each case on equal work (the
# *_full cases: what the peers compute) and, where it has one, with its
# trick (packed rows, the class token alone in the last block) beside it.
# The 1-minute load average is recorded before every round. Then `qkv
# coco-eval` against pycocotools and faster-coco-eval (coco_bench.py, its
# own rounds), at the first thread count. The report is printed and
# written to BUILD/bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$1; shift; fi
threads_list=${QKV_THREADS:-2,1}
rounds=5
only=
cases_arg=
debian=0
compile=1
while [ $# -gt 0 ]; do
    case $1 in
    --threads) threads_list=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --cases) cases_arg=$2; shift 2 ;;
    --debian) debian=1; shift ;;
    --no-compile) compile=0; shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a threads_all <<<"$threads_list"

# the library's own compiler and flags, from the Makefile
mapfile -t f < <(make -s --no-print-directory -f Makefile -f bench/flags.mk bench-flags BUILD="$build")
cc=${f[0]} cflags=${f[1]} ldflags=${f[2]} ldlibs=${f[3]}
for b in ops mha transformer vit moco detr; do
    # shellcheck disable=SC2086
    $cc $cflags -o "$build/bench_$b" "bench/bench_$b.c" "$build/libqkv.a" $ldflags $ldlibs
done

out=$build/bench-results
rm -rf "$out"
mkdir -p "$out"
# libgomp's spin before an idle worker sleeps, as the qkv CLI sets it for
# itself (tools/qkv/main.c); every runtime here but ONNX Runtime uses libgomp
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-300000}
# Inductor's cache starts empty: the first round of each case compiles from
# scratch (the compile time the report quotes), later ones hit the cache
export TORCHINDUCTOR_CACHE_DIR=$PWD/$out/inductor-cache

if ! .venv/bin/python -c 'import torch, torchvision, onnxruntime, onnx, pycocotools, faster_coco_eval, scipy' \
    2>/dev/null; then
    echo "the .venv lacks torch, torchvision, onnxruntime, onnx, pycocotools, faster-coco-eval or scipy:" \
         "running scripts/bench-setup.sh" >&2
    bash scripts/bench-setup.sh >&2 || echo "bench-setup failed: PyPI peers left out" >&2
fi
venv=0 ort=0
.venv/bin/python -c 'import torch' 2>/dev/null && venv=1
.venv/bin/python -c 'import onnxruntime, onnx' 2>/dev/null && ort=1
if [ $venv = 0 ]; then compile=0 ort=0; fi

# model case: program, qkv's equal-work case, qkv's trick case (- if none)
all_cases=(mha:mha_small:- mha:mha_large:- transformer:tf_book_full:tf_book
           transformer:tf_large_full:tf_large vit:vit_train_full:vit_train
           vit:vitb16_b1_full:vitb16_b1 vit:vitb16_b8_full:vitb16_b8
           moco:moco_v2_full:- moco:moco_vit_full:moco_vit
           detr:detr_r50_full:- detr:detr_train_full:-)
cases=()
for c in "${all_cases[@]}"; do
    rest=${c#*:} trick=${c##*:}
    short=${rest%%:*}
    short=${short%_full}
    if [ -z "$cases_arg" ] || [[ ",$cases_arg," == *",$short,"* ]]; then cases+=("$c"); fi
done
# a name that matches no case is an error, not an empty table
known=" "
for c in "${all_cases[@]}"; do rest=${c#*:}; short=${rest%%:*}; known+="${short%_full} "; done
IFS=, read -r -a asked <<<"$cases_arg"
for a in "${asked[@]}"; do
    if [[ "$known" != *" $a "* ]]; then
        echo "bench/run.sh: unknown case '$a' (cases:$known)" >&2
        exit 2
    fi
done

want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
if [ $ort = 1 ] && want models && [[ " ${cases[*]} " == *vitb16* ]]; then
    echo "exporting ViT-B/16 to ONNX (torch.onnx) ..." >&2
    QKV_THREADS=${threads_all[0]} OMP_NUM_THREADS=${threads_all[0]} \
        .venv/bin/python -W ignore bench/peer_ort.py --export "$out/onnx" \
        >"$out/export.txt" 2>"$out/export.log" || {
        echo "ONNX export failed (see $out/export.log): ONNX Runtime left out" >&2
        ort=0
    }
fi

# runs one side of one case: run_side FILE COMMAND...; a failure reads n/a
run_side() {
    local file=$1 key=$2
    shift 2
    "$@" >>"$file" || echo "${key}_ms n/a" >>"$file"
}

loads=()
for threads in "${threads_all[@]}"; do
    # the same thread count for every runtime: qkv's OpenMP, torch's OpenMP
    # and intra-op pool, OpenBLAS, MKL, ONNX Runtime's intra-op pool
    export QKV_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
           MKL_NUM_THREADS=$threads
    dir=$out/t$threads
    mkdir -p "$dir/ops"
    loads+=("$threads threads, before: $(cut -d' ' -f1 /proc/loadavg)")
    if want ops; then
        echo "ops, $threads threads: qkv ..." >&2
        "$build/bench_ops" --threads "$threads" >"$dir/ops/1-qkv.txt"
        echo "ops: PyTorch (Debian, /usr/bin/python3) ..." >&2
        /usr/bin/python3 bench/peer_ops.py --threads "$threads" >"$dir/ops/2-torch-debian.txt"
        if [ $venv = 1 ]; then
            echo "ops: PyTorch (PyPI, .venv) ..." >&2
            .venv/bin/python bench/peer_ops.py --threads "$threads" >"$dir/ops/3-torch-pypi.txt"
        fi
    fi
    want models || continue
    for c in "${cases[@]}"; do
        prog=${c%%:*} rest=${c#*:}
        full=${rest%%:*} trick=${rest#*:}
        # the sides of one round, each a command line (the first word is
        # the results file)
        sides=("qkv $build/bench_$prog $full --threads $threads")
        [ "$trick" != - ] && sides+=("qkv $build/bench_$prog $trick --threads $threads")
        if [ $venv = 1 ]; then
            sides+=("eager .venv/bin/python -W ignore bench/peer_$prog.py $full --threads $threads")
            [ $compile = 1 ] &&
                sides+=("compile .venv/bin/python -W ignore bench/peer_$prog.py $full --threads $threads --compile")
        fi
        [ $ort = 1 ] && [[ $full == vitb16* ]] &&
            sides+=("ort .venv/bin/python bench/peer_ort.py $full --model-dir $out/onnx --threads $threads")
        [ $debian = 1 ] &&
            sides+=("debian /usr/bin/python3 -W ignore bench/peer_$prog.py $full --threads $threads")
        n=${#sides[@]}
        for ((round = 0; round < rounds; round++)); do
            echo "$full $(cut -d' ' -f1 /proc/loadavg)" >>"$dir/load.txt"
            for ((i = 0; i < n; i++)); do
                # shellcheck disable=SC2206
                cmd=(${sides[$(((i + round) % n))]})
                key=$full
                [[ ${cmd[*]} == *" $trick "* ]] && key=$trick
                echo "$threads threads, $key, round $((round + 1)) of $rounds: ${cmd[0]} ..." >&2
                run_side "$dir/${cmd[0]}.txt" "$key" "${cmd[@]:1}"
            done
        done
    done
    loads+=("$threads threads, after: $(cut -d' ' -f1 /proc/loadavg)")
done

# COCO evaluation: the whole command against the PyPI peers, in rounds
if want coco; then
    export QKV_THREADS=${threads_all[0]} OMP_NUM_THREADS=${threads_all[0]} \
           OPENBLAS_NUM_THREADS=${threads_all[0]} MKL_NUM_THREADS=${threads_all[0]}
    .venv/bin/python bench/coco_bench.py --build "$build" --threads "${threads_all[0]}" \
        >"$out/coco.md" || { echo "coco bench failed" >&2; rm -f "$out/coco.md"; }
fi

{
    model=$(lscpu | sed -n 's/^Model name: *//p')
    cores=$(nproc --all) # (plain nproc obeys OMP_NUM_THREADS)
    isa=$(grep -o -w -m1 -E 'avx512f' /proc/cpuinfo >/dev/null && echo "AVX-512" || echo "no AVX-512")
    echo "Machine: $model, $cores cores ($isa); $(date -u +%Y-%m-%d); $rounds rounds a model case."
    echo "Debian's libblas.so.3: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu)"
    # other work on the machine distorts every number: say how much there was
    echo "Load average (1 min): $(IFS=';'; echo "${loads[*]}")."
    for threads in "${threads_all[@]}"; do
        dir=$out/t$threads
        if want ops; then
            echo
            echo "### Ops, $threads threads"
            echo
            /usr/bin/python3 bench/table.py "$dir"/ops/*.txt
        fi
    done
    if want models; then
        echo
        /usr/bin/python3 bench/table_models.py --export "$out/export.txt" \
            $(for t in "${threads_all[@]}"; do echo "$out/t$t"; done)
    fi
    if [ -s "$out/coco.md" ]; then
        echo
        echo "### COCO evaluation, ${threads_all[0]} threads"
        echo
        cat "$out/coco.md"
    fi
} | tee "$build/bench.md"
