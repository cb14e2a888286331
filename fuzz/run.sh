#!/usr/bin/env bash
# fuzz/run.sh SECONDS - builds every fuzz/fuzz_<loader>.c with libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer (clang from Debian) and runs
# each for SECONDS (default 20) from its seeds in fuzz/corpus/<loader>/.
# Exits non-zero if any harness crashes, leaks or fails to build; the input
# that broke it is left in build/fuzz/artifacts/.
#
# Self-contained: compiles what it needs of src/ into build/fuzz/ (no make), and
# only recompiles what changed. New inputs found while fuzzing go to
# build/fuzz/corpus/<loader>/, never into the committed seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
# -Wno-pass-failed: clang reports `omp simd` loops it chose not to vectorise
# as warnings (as in the Makefile)
CFLAGS="-std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -fopenmp -Iinclude -Isrc -Wno-pass-failed"
CFLAGS+=" $(pkg-config --cflags libcjson 2>/dev/null || true)"
LIBS="$(pkg-config --libs libcjson 2>/dev/null || echo -lcjson) -lpng -ljpeg -lz -lm"
mkdir -p "$OUT/obj" "$OUT/artifacts"

# The layers the loaders stand on (io over tensor, autograd's context and
# base), instrumented for coverage but without libFuzzer's main. The numeric
# layers stay out: the loaders never call them. The COCO evaluator comes in:
# its harnesses score what the readers accept.
objs=()
stale=()
headers=$(ls include/*.h src/*.h src/*/*.h fuzz/*.h)
for src in src/base/*.c src/tensor/*.c src/autograd/ctx.c src/io/*.c src/train/coco_eval.c; do
    obj="$OUT/obj/$(echo "${src%.c}" | tr / _).o"
    objs+=("$obj")
    if [ ! -e "$obj" ] || [ -n "$(find "$src" $headers -newer "$obj" 2>/dev/null | head -1)" ]; then
        stale+=("$src:$obj")
    fi
done
if [ ${#stale[@]} -gt 0 ]; then
    echo "fuzz: compiling ${#stale[@]} library files"
    jobs_max=$(nproc)
    for pair in "${stale[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || exit 1; done
        $CC $CFLAGS $SAN -fsanitize=fuzzer-no-link -c "${pair%%:*}" -o "${pair#*:}" &
    done
    while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || exit 1; done
fi
rm -f "$OUT/libqkv_fuzz.a"
ar rcs "$OUT/libqkv_fuzz.a" "${objs[@]}"

status=0
for harness in fuzz/fuzz_*.c; do
    name=$(basename "${harness%.c}")
    loader=${name#fuzz_}
    bin="$OUT/$name"
    if ! $CC $CFLAGS $SAN -fsanitize=fuzzer "$harness" "$OUT/libqkv_fuzz.a" $LIBS -o "$bin"; then
        echo "fuzz: $name: build failed"
        status=1
        continue
    fi
    mkdir -p "$OUT/corpus/$loader"
    seeds=()
    [ -d "fuzz/corpus/$loader" ] && seeds=("fuzz/corpus/$loader")
    echo "fuzz: $name for ${secs}s"
    # -max_len keeps inputs small enough to mutate quickly; the seeds show the
    # formats' structure. Leak detection is on (a loader must free on error).
    if ! "$bin" -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -timeout=10 \
         -artifact_prefix="$OUT/artifacts/$name-" -print_final_stats=0 \
         "$OUT/corpus/$loader" "${seeds[@]}" 2>"$OUT/$name.log"; then
        echo "fuzz: $name FAILED (log: $OUT/$name.log)"
        tail -n 40 "$OUT/$name.log"
        status=1
    else
        echo "fuzz: $name ok ($(grep -c '^#' "$OUT/$name.log" || true) progress lines)"
    fi
done
exit $status
