/* fuzz_coco_dets.c - libFuzzer harness: arbitrary bytes as a COCO results
 * list. The streaming reader must refuse or accept without reading out of
 * bounds or leaking, on one thread and cut into parts alike (the same set,
 * or both refusing); a set the cJSON reference also accepts must be the
 * same; an accepted list scored against a small ground truth (images and
 * categories 0..3) gives numbers that are -1 or within [0, 1]. */
#include "coco_check.h"

static qkv_coco_gt *small_gt(void)
{
    qkv_coco_gt *gt = qkv_coco_gt_new("fuzz-gt");
    for (int i = 0; gt && i < 4; i++) {
        qkv_coco_gt_add_image(gt, i);
        qkv_coco_gt_add_category(gt, i, "c");
        qkv_coco_ann a = {i + 1, i, i, {10.0 * i, 5, 20, 30}, 100.0 * i * i, i == 3};
        qkv_coco_gt_add_ann(gt, &a);
        qkv_coco_ann b = {i + 10, i, (i + 1) % 4, {0, 0, 50, 50}, 2000, 0};
        qkv_coco_gt_add_ann(gt, &b);
    }
    return gt;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    if (!text)
        return 0;
    qkv_coco_dets *dt = qkv__coco_dets_parse_parts(text, size, "fuzz", 1);
    qkv_coco_dets *parts = qkv__coco_dets_parse_parts(text, size, "fuzz", 3);
    qkv_coco_dets *ref = qkv__coco_dets_parse_cjson(text, size, "fuzz");
    if (!dt != !parts)
        abort();
    if (dt && parts)
        fuzz_same_dets(dt, parts);
    if (dt && ref)
        fuzz_same_dets(dt, ref);
    if (dt) {
        qkv_coco_gt *gt = small_gt();
        if (gt)
            fuzz_evaluate(gt, dt);
        qkv_coco_gt_free(gt);
    }
    qkv_coco_dets_free(dt);
    qkv_coco_dets_free(parts);
    qkv_coco_dets_free(ref);
    free(text);
    return 0;
}
