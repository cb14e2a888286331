/* fuzz_safetensors.c - libFuzzer harness: arbitrary bytes as a safetensors
 * file. The validator must reject or accept without reading out of bounds;
 * an accepted file must be readable in full. */
#include "io/io_internal.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qkv_st_file *f = qkv__st_open_memory(data, size, "fuzz");
    if (!f)
        return 0;
    for (int64_t i = 0; i < qkv_st_count(f); i++) {
        int64_t shape[QKV_MAX_DIMS], n = qkv_st_numel(f, i);
        int nd = qkv_st_shape(f, i, shape);
        if (nd < 0 || n < 0 || (uint64_t)n > size) /* validated: numel <= bytes */
            abort();
        float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
        int64_t *y = malloc((size_t)(n ? n : 1) * sizeof *y);
        qkv_st_read_f32(f, i, x);
        qkv_st_read_i64(f, i, y);
        free(x);
        free(y);
        if (qkv_st_find(f, qkv_st_name(f, i)) < 0)
            abort();
    }
    qkv_st_meta(f, "format");
    qkv_st_close(f);
    return 0;
}
