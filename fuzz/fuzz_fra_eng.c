/* fuzz_fra_eng.c - libFuzzer harness: arbitrary bytes as fra.txt. The first
 * byte picks num_steps and the line limit; every id must lie inside its
 * vocabulary and every valid length inside [0, num_steps]. */
#include "io/io_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int64_t num_steps = 1 + (data[0] & 15), num_examples = data[0] >> 4;
    char *text = malloc(size); /* NUL-terminated copy, as the loader reads files */
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    qkv_nmt_data d;
    if (qkv__nmt_parse(&d, text, size - 1, "fuzz", num_examples, num_steps) == QKV_OK) {
        for (int64_t i = 0; i < d.n * num_steps; i++)
            if (d.src[i] < 0 || d.src[i] >= qkv_vocab_size(d.src_vocab) || d.tgt[i] < 0 ||
                d.tgt[i] >= qkv_vocab_size(d.tgt_vocab))
                abort();
        for (int64_t i = 0; i < d.n; i++)
            if (d.src_valid[i] < 0 || d.src_valid[i] > num_steps)
                abort();
        int64_t ids[16];
        qkv_nmt_encode(d.src_vocab, text, num_steps, ids);
        qkv_nmt_free(&d);
    }
    free(text);
    return 0;
}
