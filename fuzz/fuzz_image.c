/* fuzz_image.c - libFuzzer harness: arbitrary bytes as a PNG or JPEG. The
 * pixel limit is lowered so that a forged header cannot ask for gigabytes. */
#include "io/io_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qkv_image img;
    if (qkv__image_decode(&img, data, size, (int64_t)1 << 20) == QKV_OK) {
        double sum = 0; /* every pixel was written */
        for (int64_t i = 0; i < img.c * img.h * img.w; i++)
            sum += img.data[i];
        (void)sum;
        qkv_image_free(&img);
    }
    return 0;
}
