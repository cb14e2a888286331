/* linear.c - nn.Linear: the module convention every nn/ file follows.
 *
 * A module is a plain struct of parameter pointers. Its life has three steps:
 *   qkv_nn_X_init(m, ps, prefix, sizes...)  declares its parameters in the
 *                                          store under PyTorch's names;
 *   qkv_params_alloc(ps)                   gives every parameter memory;
 *   qkv_nn_X_reset(m, rng)                 PyTorch's default initialisation;
 * then qkv_nn_X_forward(ctx, m, inputs...) any number of times. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

char *qkv_nn_name(char *buf, size_t n, const char *prefix, const char *leaf)
{
    if (prefix && *prefix)
        snprintf(buf, n, "%s.%s", prefix, leaf);
    else
        snprintf(buf, n, "%s", leaf);
    return buf;
}

qkv_status qkv_nn_linear_init(qkv_nn_linear *m, qkv_params *ps, const char *prefix,
                              int64_t in_features, int64_t out_features, int bias)
{
    char name[512];
    memset(m, 0, sizeof *m);
    m->in_features = in_features;
    m->out_features = out_features;
    m->weight = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "weight"), 2,
                               (int64_t[]){out_features, in_features}, 0);
    if (!m->weight)
        return qkv_error_status();
    if (bias) {
        m->bias = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "bias"), 1,
                                 (int64_t[]){out_features}, 0);
        if (!m->bias)
            return qkv_error_status();
    }
    return QKV_OK;
}

void qkv_nn_linear_reset(qkv_nn_linear *m, qkv_rng *r)
{
    /* PyTorch: kaiming_uniform(a = sqrt(5)) on the weight, which is
     * U(-1/sqrt(in), 1/sqrt(in)); the bias is drawn from the same range */
    float bound = m->in_features > 0 ? 1.0f / sqrtf((float)m->in_features) : 0.0f;
    qkv_init_uniform(r, m->weight, -bound, bound);
    if (m->bias)
        qkv_init_uniform(r, m->bias, -bound, bound);
}

qkv_tensor *qkv_nn_linear_forward(qkv_ctx *ctx, const qkv_nn_linear *m, qkv_tensor *x)
{
    return qkv_linear(ctx, x, m->weight, m->bias);
}
