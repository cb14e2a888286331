/*
 * forward_detr.c - `qkv forward --arch detr`: DETR (facebookresearch/detr)
 * from its weights in the official names or in Hugging Face's
 * DetrForObjectDetection names (the hub checkpoints' or transformers 5's).
 * The configuration comes from the shapes (qkv_detr_config_from_file);
 * heads from --heads or __metadata__ num_heads. Inputs "pixel_values"
 * (N, C, H, W) and, optionally, "pixel_mask" (N, H, W), 1 on image pixels
 * and 0 on padding as Hugging Face's; outputs "pred_logits" (N, Q, K + 1)
 * and "pred_boxes" (N, Q, 4) of the last decoder layer, as both models
 * return them.
 */
#include "forward.h"

int forward_detr(forward_job *job)
{
    if (!job->weights)
        return forward_usage("--weights is required for --arch detr");
    if (job->batch_first || job->per_head_weights || !job->need_weights)
        return forward_usage("--batch-first, --per-head-weights and --no-weights do not apply "
                             "to --arch detr");
    qkv_detr_config cfg = {.num_heads = job->heads, .frozen_stages = 2};
    if (qkv_detr_config_from_file(&cfg, job->weights) != QKV_OK)
        return forward_fail("%s: %s", job->weights_path, qkv_error());
    qkv_params *ps = qkv_params_new();
    qkv_detr m;
    int rc = 0;
    if (!ps || qkv_detr_init(&m, ps, &cfg) != QKV_OK || qkv_params_alloc(ps) != QKV_OK ||
        qkv_detr_load_file(ps, job->weights, job->weights_path, 1) != QKV_OK)
        rc = forward_fail("%s", qkv_error());
    bool failed = false;
    qkv_tensor *x = rc ? NULL : forward_input(job, "pixel_values", &failed);
    qkv_tensor *mask = rc || failed ? NULL : forward_optional(job, "pixel_mask", &failed);
    if (!rc && !failed &&
        !forward_check_shape("input 'pixel_values'", x, 4,
                             (int64_t[]){-1, cfg.in_channels, -1, -1}, "N,C,H,W"))
        failed = true;
    if (!rc && !failed && mask &&
        !forward_check_shape("input 'pixel_mask'", mask, 3,
                             (int64_t[]){x->shape[0], x->shape[2], x->shape[3]}, "N,H,W"))
        failed = true;
    if (!rc && failed)
        rc = 1;
    qkv_detr_output o;
    if (!rc && qkv_detr_forward(job->ctx, &m, x, mask ? mask->data : NULL, 0, &o) != QKV_OK)
        rc = forward_fail("%s", qkv_error());
    if (!rc) {
        int64_t L = o.logits->shape[0];
        qkv_ctx *c = job->ctx;
        qkv_tensor *lg = qkv_slice(c, o.logits, 0, L - 1, L, 1);
        qkv_tensor *bx = qkv_slice(c, o.boxes, 0, L - 1, L, 1);
        int64_t N = x->shape[0], Q = cfg.num_queries;
        rc = forward_output(job, "pred_logits",
                            qkv_reshape(c, lg, 3, (int64_t[]){N, Q, cfg.num_classes + 1}));
        if (!rc)
            rc = forward_output(job, "pred_boxes", qkv_reshape(c, bx, 3, (int64_t[]){N, Q, 4}));
    }
    qkv_params_free(ps);
    return rc;
}
