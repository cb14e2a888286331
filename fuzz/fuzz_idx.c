/* fuzz_idx.c - libFuzzer harness: arbitrary bytes as an IDX file, raw or
 * gzip. The first byte picks the expected rank (1: labels, 3: images). */
#include "io/io_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int ndim = data[0] & 1 ? 3 : 1;
    int64_t dims[3];
    uint8_t *out = NULL;
    if (qkv__idx_decode(data + 1, size - 1, "fuzz", ndim, dims, &out) == QKV_OK) {
        uint64_t n = 1, sum = 0;
        for (int i = 0; i < ndim; i++)
            n *= (uint64_t)dims[i];
        for (uint64_t i = 0; i < n; i++) /* every announced byte is there */
            sum += out[i];
        (void)sum;
    }
    qkv__free(out);
    return 0;
}
