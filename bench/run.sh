#!/usr/bin/env bash
# run.sh - `make bench`: qkv against PyTorch on this machine, same thread
# count, one table. Peers: Debian's PyTorch (/usr/bin/python3) and the
# newest PyTorch from PyPI in .venv (scripts/bench-setup.sh makes it).
#
#   bash bench/run.sh [BUILD] [--threads N]     (default N: $QKV_THREADS, else 2)
#
# The table is printed and also written to BUILD/bench.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$1; shift; fi
threads=${QKV_THREADS:-2}
while [ $# -gt 0 ]; do
    case $1 in
    --threads) threads=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# the library's own compiler and flags, from the Makefile
mapfile -t f < <(make -s --no-print-directory -f Makefile -f bench/flags.mk bench-flags BUILD="$build")
cc=${f[0]} cflags=${f[1]} ldflags=${f[2]} ldlibs=${f[3]}
# shellcheck disable=SC2086
$cc $cflags -o "$build/bench_ops" bench/bench_ops.c "$build/libqkv.a" $ldflags $ldlibs

out=$build/bench-results
mkdir -p "$out"
rm -f "$out"/*.txt
# the same thread count for every runtime: qkv's OpenMP, torch's OpenMP and
# intra-op pool, OpenBLAS and MKL
export QKV_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
       MKL_NUM_THREADS=$threads

load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "qkv ..." >&2
"$build/bench_ops" --threads "$threads" >"$out/1-qkv.txt"
echo "PyTorch (Debian, /usr/bin/python3) ..." >&2
/usr/bin/python3 bench/peer_ops.py --threads "$threads" >"$out/2-torch-debian.txt"
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "no PyTorch in .venv: running scripts/bench-setup.sh" >&2
    bash scripts/bench-setup.sh >&2 || echo "bench-setup failed: PyPI peer left out" >&2
fi
if .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "PyTorch (PyPI, .venv) ..." >&2
    .venv/bin/python bench/peer_ops.py --threads "$threads" >"$out/3-torch-pypi.txt"
fi

{
    model=$(lscpu | sed -n 's/^Model name: *//p')
    cores=$(nproc)
    isa=$(grep -o -w -m1 -E 'avx512f' /proc/cpuinfo >/dev/null && echo "AVX-512" || echo "no AVX-512")
    echo "Machine: $model, $cores cores ($isa); $threads threads everywhere; $(date -u +%Y-%m-%d)."
    echo "Debian's libblas.so.3: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu)"
    # other work on the machine distorts every number: say how much there was
    echo "Load average (1 min) before and after: $load_before, $(cut -d' ' -f1 /proc/loadavg)."
    echo
    /usr/bin/python3 bench/table.py "$out"/*.txt
} | tee "$build/bench.md"
