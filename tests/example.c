/* example.c - the worked example at the top of qkv.h, compiled and run by
 * `make test` so that the header never teaches code that does not work.
 * Fits y = 2 x0 - x1 + 0.5 x2 + 1 with one linear layer and AdamW. */
#include "qkv.h"

#include <math.h>
#include <stdio.h>

int main(void)
{
    float xs[12], ys[4];
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 3; j++)
            xs[i * 3 + j] = (float)((i + 1) * (j + 2) % 5) - 2.0f;
        ys[i] = 2 * xs[i * 3] - xs[i * 3 + 1] + 0.5f * xs[i * 3 + 2] + 1;
    }

    qkv_ctx *ctx = qkv_ctx_new();
    qkv_params *ps = qkv_params_new();
    qkv_tensor *w = qkv_params_add(ps, "weight", 2, (int64_t[]){1, 3}, 0);
    qkv_tensor *b = qkv_params_add(ps, "bias", 1, (int64_t[]){1}, 0);
    qkv_params_alloc(ps); /* one allocation for all */
    qkv_rng rng;
    qkv_rng_seed(&rng, 42);
    qkv_init_normal(&rng, w, 0.0f, 0.1f);
    qkv_init_constant(b, 0.0f);
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){
        .kind = QKV_ADAMW, .lr = 1e-1f, .beta1 = 0.9f, .beta2 = 0.999f,
        .eps = 1e-8f, .weight_decay = 0.0f});
    float last = INFINITY;
    for (int step = 0; step < 300; step++) {
        qkv_tensor *x = qkv_from_data(ctx, 2, (int64_t[]){4, 3}, xs);
        qkv_tensor *y = qkv_from_data(ctx, 2, (int64_t[]){4, 1}, ys);
        qkv_tensor *p = qkv_add(ctx, qkv_matmul(ctx, x, w, 0, 1), b);
        qkv_tensor *loss = qkv_mse_loss(ctx, p, y, QKV_REDUCE_MEAN);
        if (!loss || qkv_backward(ctx, loss) != QKV_OK) {
            fprintf(stderr, "%s\n", qkv_error());
            return 1;
        }
        last = loss->data[0];
        qkv_optim_step(opt);
        qkv_params_zero_grad(ps);
        qkv_ctx_reset(ctx);
    }
    printf("example: final loss %.2e, weight [%.3f %.3f %.3f] bias %.3f\n", last,
           w->data[0], w->data[1], w->data[2], b->data[0]);
    qkv_optim_free(opt);
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
    /* the fit must have converged, or the example teaches nothing */
    return last < 1e-3f ? 0 : 1;
}
