/* posenc_sine2d.c - DETR's 2-D sine positional encoding
 * (facebookresearch/detr models/position_encoding.py, PositionEmbeddingSine)
 * of an image batch's padding mask. Each step is done in float32 as
 * PyTorch does it, so the encoding matches to float rounding. */
#include "../qkv_internal.h"

#include <math.h>

qkv_tensor *qkv_nn_posenc_sine2d(qkv_ctx *ctx, qkv_tensor *mask, int64_t num_pos_feats,
                                 float temperature, int normalize, float scale)
{
    const char *op = "posenc_sine2d";
    QKV_INPUTS(op, mask);
    char s[128];
    if (mask->ndim != 3) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: mask must be (B, H, W), has shape %s", op,
                      qkv_shape_str(mask, s, sizeof s));
        return NULL;
    }
    if (num_pos_feats < 2 || num_pos_feats % 2 || !(temperature > 0.0f) || !(scale >= 0.0f)) {
        qkv_set_error(QKV_ERR_ARG,
                      "%s: num_pos_feats %lld must be even and >= 2, temperature %g > 0 and "
                      "scale %g >= 0",
                      op, (long long)num_pos_feats, (double)temperature, (double)scale);
        return NULL;
    }
    if (scale == 0.0f)
        scale = (float)(2 * M_PI);
    int64_t B = mask->shape[0], H = mask->shape[1], W = mask->shape[2], F = num_pos_feats;
    qkv_tensor *m = qkv_contiguous(ctx, qkv_detach(ctx, mask));
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){B, 2 * F, H, W});
    float *ye = qkv__floats(ctx, H * W), *xe = qkv__floats(ctx, H * W);
    float *dim_t = qkv__floats(ctx, F);
    if (!m || !out || !ye || !xe || !dim_t)
        return NULL;
    /* dim_t[i] = temperature^(2 floor(i / 2) / F) */
    for (int64_t i = 0; i < F; i++)
        dim_t[i] = powf(temperature, (float)(2 * (i / 2)) / (float)F);
    int64_t HW = H * W;
    if (HW == 0)
        return out;
    for (int64_t b = 0; b < B; b++) {
        const float *mb = m->data + b * HW;
        /* y, x = cumulative counts of the non-padding pixels down each
         * column and along each row */
        for (int64_t w = 0; w < W; w++) {
            float c = 0;
            for (int64_t h = 0; h < H; h++) {
                c += mb[h * W + w] == 0.0f;
                ye[h * W + w] = c;
            }
        }
        for (int64_t h = 0; h < H; h++) {
            float c = 0;
            for (int64_t w = 0; w < W; w++) {
                c += mb[h * W + w] == 0.0f;
                xe[h * W + w] = c;
            }
        }
        if (normalize) { /* divided by the last count + 1e-6, times scale */
            const float eps = 1e-6f;
            for (int64_t w = 0; w < W; w++) {
                float d = ye[(H - 1) * W + w] + eps;
                for (int64_t h = 0; h < H; h++)
                    ye[h * W + w] = ye[h * W + w] / d * scale;
            }
            for (int64_t h = 0; h < H; h++) {
                float d = xe[h * W + W - 1] + eps;
                for (int64_t w = 0; w < W; w++)
                    xe[h * W + w] = xe[h * W + w] / d * scale;
            }
        }
        /* channels: pos_y then pos_x, each sin(p / dim_t[2k]), cos(p / dim_t[2k+1]) */
        float *ob = out->data + b * 2 * F * HW;
        for (int64_t i = 0; i < F; i++) {
            float *oy = ob + i * HW, *ox = ob + (F + i) * HW;
            for (int64_t p = 0; p < HW; p++) {
                float vy = ye[p] / dim_t[i], vx = xe[p] / dim_t[i];
                oy[p] = i % 2 ? cosf(vy) : sinf(vy);
                ox[p] = i % 2 ? cosf(vx) : sinf(vx);
            }
        }
    }
    return out;
}
