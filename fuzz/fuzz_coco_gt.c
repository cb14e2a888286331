/* fuzz_coco_gt.c - libFuzzer harness: arbitrary bytes as a COCO ground
 * truth. The streaming reader must refuse or accept without reading out of
 * bounds or leaking; a set that both it and the cJSON reference accept must
 * be the same set; an accepted set, scored against detections made from its
 * own boxes, gives numbers that are -1 or within [0, 1]. */
#include "coco_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    if (!text)
        return 0;
    qkv_coco_gt *gt = qkv__coco_gt_parse(text, size, "fuzz");
    qkv_coco_gt *ref = qkv__coco_gt_parse_cjson(text, size, "fuzz");
    if (gt && ref)
        fuzz_same_gt(gt, ref);
    if (gt) {
        /* each box found once, shifted by a pixel, scores from its index */
        qkv_coco_dets *dt = qkv_coco_dets_new("fuzz-dt");
        for (int64_t i = 0; dt && i < gt->n_anns && i < 1000; i++) {
            const qkv_coco_ann *a = &gt->anns[i];
            qkv_coco_det d = {a->image_id, a->category_id,
                              {a->bbox[0] + 1, a->bbox[1], a->bbox[2], a->bbox[3]},
                              (double)(i % 7) / 7};
            qkv_coco_dets_add(dt, &d); /* may refuse a box near overflow */
        }
        if (dt)
            fuzz_evaluate(gt, dt);
        qkv_coco_dets_free(dt);
    }
    qkv_coco_gt_free(gt);
    qkv_coco_gt_free(ref);
    free(text);
    return 0;
}
