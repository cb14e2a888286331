/*
 * forward_vit.c - `qkv forward --arch vit`: torchvision's VisionTransformer
 * from its state_dict. The configuration comes from the weights' shapes
 * (qkv_vit_config_from_file: image, patch, channels, width, depth, MLP,
 * classes); heads from --heads or __metadata__ num_heads. Input "x"
 * (N, C, H, W) with H = W = the image size; output "logits" (N, classes).
 */
#include "forward.h"

int forward_vit(forward_job *job)
{
    if (!job->weights)
        return forward_usage("--weights is required for --arch vit");
    if (job->batch_first || job->per_head_weights || !job->need_weights)
        return forward_usage("--batch-first, --per-head-weights and --no-weights do not apply "
                             "to --arch vit");
    qkv_vit_config cfg = {.num_heads = job->heads};
    if (qkv_vit_config_from_file(&cfg, job->weights) != QKV_OK)
        return forward_fail("%s", qkv_error());
    qkv_params *ps = qkv_params_new();
    qkv_vit m;
    if (!ps || qkv_vit_init(&m, ps, &cfg) != QKV_OK) {
        qkv_params_free(ps);
        return forward_fail("%s", qkv_error());
    }
    int rc = forward_load_weights(job, ps); /* allocates the store too */
    bool failed = false;
    qkv_tensor *x = rc ? NULL : forward_input(job, "x", &failed);
    if (!rc && !failed &&
        !forward_check_shape("input 'x'", x, 4,
                             (int64_t[]){-1, cfg.in_channels, cfg.image_size, cfg.image_size},
                             "N,C,H,W"))
        failed = true;
    if (!rc && failed)
        rc = 1;
    if (!rc)
        rc = forward_output(job, "logits", qkv_vit_forward(job->ctx, &m, x, NULL));
    qkv_params_free(ps);
    return rc;
}
