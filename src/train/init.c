/* init.c - parameter initialisers with torch.nn.init's definitions: the same
 * distributions and the same fan_in / fan_out, drawn from a qkv_rng (so the
 * numbers differ from PyTorch's, the statistics do not). */
#include "../qkv_internal.h"

#include <math.h>

typedef enum { DRAW_CONSTANT, DRAW_UNIFORM, DRAW_NORMAL, DRAW_TRUNC_NORMAL } draw_kind;

/* constant: a; uniform: [a, b); normal: mean a, std b; truncated: also
 * lo <= x <= hi */
typedef struct {
    draw_kind kind;
    double a, b;
    float lo, hi;
} sampler;

static float draw(qkv_rng *r, const sampler *s)
{
    switch (s->kind) {
    case DRAW_CONSTANT:
        return (float)s->a;
    case DRAW_UNIFORM: {
        float x = (float)(s->a + (s->b - s->a) * qkv_rng_uniform(r));
        /* rounding to float may land on the excluded upper end */
        return x >= (float)s->b && s->b > s->a ? nextafterf((float)s->b, (float)s->a) : x;
    }
    case DRAW_NORMAL:
        return (float)(s->a + s->b * qkv_rng_normal(r));
    case DRAW_TRUNC_NORMAL:
        for (;;) {
            float x = (float)(s->a + s->b * qkv_rng_normal(r));
            if (x >= s->lo && x <= s->hi)
                return x;
        }
    }
    return 0.0f;
}

/* Every element in row-major order, also through the strides of a view, so
 * that a slice of a fused weight can be initialised on its own. */
static void fill(qkv_tensor *t, qkv_rng *r, const sampler *s)
{
    int64_t n = qkv_numel(t);
    if (qkv_is_contiguous(t)) {
        for (int64_t i = 0; i < n; i++)
            t->data[i] = draw(r, s);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t off = 0, rest = i;
        for (int d = t->ndim - 1; d >= 0; d--) {
            off += rest % t->shape[d] * t->stride[d];
            rest /= t->shape[d];
        }
        t->data[off] = draw(r, s);
    }
}

static qkv_status run(const char *fn, qkv_rng *r, qkv_tensor *t, sampler s)
{
    if (!t || !t->data || (!r && s.kind != DRAW_CONSTANT))
        return qkv_set_error(QKV_ERR_ARG, "%s: %s", fn,
                             !t ? "the tensor is NULL"
                             : !t->data ? "the tensor has no data (qkv_params_alloc not called?)"
                                        : "the rng is NULL");
    fill(t, r, &s);
    return QKV_OK;
}

qkv_status qkv_init_constant(qkv_tensor *t, float v)
{
    return run("init_constant", NULL, t, (sampler){DRAW_CONSTANT, v, 0, 0, 0});
}

qkv_status qkv_init_uniform(qkv_rng *r, qkv_tensor *t, float lo, float hi)
{
    if (!(lo <= hi))
        return qkv_set_error(QKV_ERR_ARG, "init_uniform: lo %g > hi %g", lo, hi);
    return run("init_uniform", r, t, (sampler){DRAW_UNIFORM, lo, hi, 0, 0});
}

qkv_status qkv_init_normal(qkv_rng *r, qkv_tensor *t, float mean, float std)
{
    if (!(std >= 0))
        return qkv_set_error(QKV_ERR_ARG, "init_normal: std %g < 0", std);
    return run("init_normal", r, t, (sampler){DRAW_NORMAL, mean, std, 0, 0});
}

/* P(Z <= z) for a standard normal Z */
static double normal_cdf(double z) { return 0.5 * erfc(-z / sqrt(2.0)); }

qkv_status qkv_init_trunc_normal(qkv_rng *r, qkv_tensor *t, float mean, float std, float lo,
                                 float hi)
{
    if (!(std >= 0) || !(lo <= hi))
        return qkv_set_error(QKV_ERR_ARG, "init_trunc_normal: std %g, interval [%g, %g]", std,
                             lo, hi);
    double mass = std > 0 ? normal_cdf((hi - mean) / (double)std) -
                                normal_cdf((lo - mean) / (double)std)
                          : (lo <= mean && mean <= hi);
    if (mass < 1e-4)
        return qkv_set_error(QKV_ERR_ARG,
                             "init_trunc_normal: [%g, %g] holds %.3g of normal(%g, %g): "
                             "too little to redraw into",
                             lo, hi, mass, mean, std);
    return run("init_trunc_normal", r, t, (sampler){DRAW_TRUNC_NORMAL, mean, std, lo, hi});
}

/* torch.nn.init._calculate_fan_in_and_fan_out */
static qkv_status fans(const char *fn, const qkv_tensor *t, double *fan_in, double *fan_out)
{
    if (!t)
        return qkv_set_error(QKV_ERR_ARG, "%s: the tensor is NULL", fn);
    if (t->ndim < 2) {
        char s[128];
        return qkv_set_error(QKV_ERR_SHAPE,
                             "%s: fan in and fan out need at least 2 dimensions, shape %s", fn,
                             qkv_shape_str(t, s, sizeof s));
    }
    double receptive = 1;
    for (int d = 2; d < t->ndim; d++)
        receptive *= (double)t->shape[d];
    *fan_in = (double)t->shape[1] * receptive;
    *fan_out = (double)t->shape[0] * receptive;
    return QKV_OK;
}

static qkv_status xavier(const char *fn, qkv_rng *r, qkv_tensor *t, float gain, draw_kind kind)
{
    double fan_in = 0, fan_out = 0;
    qkv_status st = fans(fn, t, &fan_in, &fan_out);
    if (st != QKV_OK || qkv_numel(t) == 0)
        return st;
    double std = gain * sqrt(2.0 / (fan_in + fan_out));
    if (kind == DRAW_UNIFORM)
        return run(fn, r, t, (sampler){DRAW_UNIFORM, -sqrt(3.0) * std, sqrt(3.0) * std, 0, 0});
    return run(fn, r, t, (sampler){DRAW_NORMAL, 0, std, 0, 0});
}

qkv_status qkv_init_xavier_uniform(qkv_rng *r, qkv_tensor *t, float gain)
{
    return xavier("init_xavier_uniform", r, t, gain, DRAW_UNIFORM);
}

qkv_status qkv_init_xavier_normal(qkv_rng *r, qkv_tensor *t, float gain)
{
    return xavier("init_xavier_normal", r, t, gain, DRAW_NORMAL);
}

static qkv_status kaiming(const char *fn, qkv_rng *r, qkv_tensor *t, float a, qkv_fan_mode mode,
                          draw_kind kind)
{
    double fan_in = 0, fan_out = 0;
    qkv_status st = fans(fn, t, &fan_in, &fan_out);
    if (st != QKV_OK || qkv_numel(t) == 0)
        return st; /* PyTorch: initialising a zero-element tensor is a no-op */
    double gain = sqrt(2.0 / (1.0 + (double)a * a));
    double std = gain / sqrt(mode == QKV_FAN_OUT ? fan_out : fan_in);
    if (kind == DRAW_UNIFORM)
        return run(fn, r, t, (sampler){DRAW_UNIFORM, -sqrt(3.0) * std, sqrt(3.0) * std, 0, 0});
    return run(fn, r, t, (sampler){DRAW_NORMAL, 0, std, 0, 0});
}

qkv_status qkv_init_kaiming_uniform(qkv_rng *r, qkv_tensor *t, float a, qkv_fan_mode mode)
{
    return kaiming("init_kaiming_uniform", r, t, a, mode, DRAW_UNIFORM);
}

qkv_status qkv_init_kaiming_normal(qkv_rng *r, qkv_tensor *t, float a, qkv_fan_mode mode)
{
    return kaiming("init_kaiming_normal", r, t, a, mode, DRAW_NORMAL);
}
